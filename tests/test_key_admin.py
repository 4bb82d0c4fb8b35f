"""The admin API for keys through the real proxy: two processes sharing one real Redis (a key made through
one is known to the other at once, and so are its changes and deletion), the in-process store, the master
key check, malformed payloads, expiry, and an audit log that never shows a key or its hash."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
import openai
import pytest

from tests.harness import EXTRA_KEY, MASTER_KEY, Mock, Redis, Server, StartProxy, proxy_config

CONFIG_KEY = "sk-from-config"
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}


def keyed_config(mock: Mock, **cache: Any) -> dict[str, Any]:
    config = proxy_config(mock, server={"keys": [{"key": CONFIG_KEY, "alias": "configured"}]}, cache=cache)
    config["model_list"].append({**config["model_list"][0], "model_name": "other"})
    return config


@pytest.fixture(scope="module")
def replicas(mock_upstream: Mock, start_proxy: StartProxy, redis_server: Redis) -> tuple[Server, Server]:
    config = keyed_config(mock_upstream, redis_url=redis_server.url)
    return start_proxy(config), start_proxy(config)


@pytest.fixture(scope="module")
def alone(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy(keyed_config(mock_upstream))


def admin(proxy: Server, path: str, body: Any = None, headers: dict[str, str] | None = None,
          **params: Any) -> httpx.Response:
    headers = ADMIN if headers is None else headers
    if body is None:
        return httpx.get(proxy.url + path, headers=headers, params=params)
    return httpx.post(proxy.url + path, headers=headers, json=body)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def chat(proxy: Server, key: str, model: str = "mock") -> str:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
    completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi."}])
    return completion.choices[0].message.content or ""


def refused(proxy: Server, key: str, model: str = "mock") -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        chat(proxy, key, model)
    return info.value


def test_a_key_made_on_one_replica_works_on_the_other_until_deleted(replicas: tuple[Server, Server]) -> None:
    one, two = replicas
    made = ok(admin(one, "/key/generate", {"key_alias": "shared", "team_id": "blue", "models": ["mock"],
                                           "rpm_limit": 100, "metadata": {"owner": "ops"}}))
    key, token = made["key"], made["token"]
    assert key.startswith("sk-") and token == hashlib.sha256(key.encode()).hexdigest()
    assert (made["key_alias"], made["team_id"], made["models"], made["rpm_limit"]) == ("shared", "blue",
                                                                                         ["mock"], 100)
    assert chat(two, key)
    assert refused(two, key, "other").status_code == 403
    # A change made on the other replica holds at once here.
    ok(admin(two, "/key/update", {"key": token, "models": ["mock", "other"]}))
    assert chat(one, key, "other")
    info = ok(admin(two, "/key/info", key=key))
    assert info["key"] == token and info["info"]["models"] == ["mock", "other"]
    assert info["info"]["metadata"] == {"owner": "ops"} and info["info"]["source"] == "api"
    assert token in ok(admin(one, "/key/list"))["keys"]
    assert ok(admin(one, "/key/delete", {"keys": [key]}))["deleted_keys"] == [token]
    error = refused(two, key)
    assert (error.status_code, error.body["code"]) == (401, "invalid_api_key")
    assert admin(two, "/key/info", key=token).status_code == 404


def test_the_in_process_store_without_redis(alone: Server) -> None:
    made = ok(admin(alone, "/key/generate", {"key": "sk-my-own-key", "key_alias": "mine"}))
    assert made["key"] == "sk-my-own-key"
    assert chat(alone, "sk-my-own-key")
    listed = ok(admin(alone, "/key/list", return_full_object="true"))
    assert [(view["key_alias"], view["source"]) for view in listed["keys"]] == [("configured", "config"),
                                                                               ("mine", "api")]
    assert ok(admin(alone, "/key/delete", {"key_aliases": ["mine"]}))["deleted_keys"] == [made["token"]]
    assert refused(alone, "sk-my-own-key").status_code == 401


def test_keys_expire(replicas: tuple[Server, Server]) -> None:
    one, two = replicas
    key = ok(admin(one, "/key/generate", {"duration": "1s"}))["key"]
    assert chat(two, key)
    time.sleep(1.1)
    error = refused(two, key)
    assert (error.status_code, error.body["code"]) == (401, "expired_api_key")
    later = ok(admin(one, "/key/generate", {"expires": "2999-01-01T00:00:00Z"}))
    assert later["expires"] == "2999-01-01T00:00:00+00:00"


def test_only_the_master_key_may_use_the_admin_api(replicas: tuple[Server, Server]) -> None:
    one, _ = replicas
    made = ok(admin(one, "/key/generate", {}))
    for headers in ({}, {"authorization": "Bearer sk-wrong"}, {"authorization": f"Bearer {EXTRA_KEY}"},
                    {"authorization": f"Bearer {CONFIG_KEY}"}, {"authorization": f"Bearer {made['key']}"},
                    {"authorization": f"Bearer {hashlib.sha256(MASTER_KEY.encode()).hexdigest()}"}):
        for response in (admin(one, "/key/generate", {}, headers), admin(one, "/key/list", headers=headers)):
            assert response.status_code == 401, headers
            assert response.json()["error"]["type"] == "authentication_error"
    assert "admin POST /key/generate refused: master_key_required" in one.log()
    assert "admin GET /key/list refused: missing_api_key" in one.log()


def test_without_a_master_key_the_admin_api_is_off(mock_upstream: Mock, start_proxy: StartProxy) -> None:
    config = proxy_config(mock_upstream)
    del config["server"]["master_key"]
    proxy = start_proxy(config)
    response = admin(proxy, "/key/generate", {}, {"authorization": f"Bearer {EXTRA_KEY}"})
    assert (response.status_code, response.json()["error"]["code"]) == (403, "admin_disabled")


@pytest.mark.parametrize(("path", "body", "status", "says"), [
    ("/key/generate", "not json", 400, "not valid JSON"),
    ("/key/generate", [], 400, "must be a JSON object"),
    ("/key/generate", {"user_id": "u"}, 400, "user_id: Extra inputs are not permitted"),
    ("/key/generate", {"budget_duration": "1 month"}, 400, "budget_duration"),
    ("/key/generate", {"rpm_limit": -1}, 400, "rpm_limit"),
    ("/key/generate", {"models": "mock"}, 400, "models"),
    ("/key/generate", {"duration": "1d", "expires": "2999-01-01T00:00:00Z"}, 400, "at most one of duration"),
    ("/key/generate", {"key": "short"}, 400, "key"),
    ("/key/generate", {"key": CONFIG_KEY}, 400, "exists already"),
    ("/key/generate", {"key": "a" * 64}, 400, "must not look like a token"),
    ("/key/generate", {"rlm": {"allowed": "maybe"}}, 400, "rlm.allowed"),
    ("/key/update", {"models": ["mock"]}, 400, "key: Field required"),
    ("/key/update", {"key": "sk-nobody"}, 404, "No such key"),
    ("/key/update", {"key": CONFIG_KEY, "rpm_limit": 1}, 400, "defined in the config file"),
    ("/key/delete", {}, 400, "give keys"),
    ("/key/delete", {"keys": ["sk-nobody"]}, 404, "No such key"),
    ("/key/delete", {"key_aliases": ["nobody"]}, 404, "'nobody'"),
])
def test_malformed_admin_payloads_get_a_clear_error(replicas: tuple[Server, Server], path: str, body: Any,
                                                    status: int, says: str) -> None:
    one, _ = replicas
    if isinstance(body, str):
        response = httpx.post(one.url + path, headers=ADMIN, content=body)
    else:
        response = admin(one, path, body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]


def test_admin_actions_are_audited_without_keys_or_hashes(replicas: tuple[Server, Server]) -> None:
    one, _ = replicas
    made = ok(admin(one, "/key/generate", {"key_alias": "audited"}))
    ok(admin(one, "/key/update", {"key": made["key"], "rpm_limit": 5}))
    ok(admin(one, "/key/delete", {"keys": [made["token"]]}))
    log = one.log()
    for action in ("generate", "update", "delete"):
        assert f"admin {action} by master key: key {made['token'][:8]}... alias audited" in log
    assert made["key"] not in log and made["token"] not in log and MASTER_KEY not in log


def test_redis_down_refuses_run_time_keys_with_503_and_config_keys_still_work(
        replicas: tuple[Server, Server], redis_server: Redis) -> None:
    one, _ = replicas
    key = ok(admin(one, "/key/generate", {}))["key"]
    redis_server.kill()
    try:
        assert chat(one, CONFIG_KEY)
        error = refused(one, key)
        assert (error.status_code, error.body["code"]) == (503, "key_store_unavailable")
        assert admin(one, "/key/generate", {}).status_code == 503
    finally:
        redis_server.start()
    # Redis comes back empty (no persistence here): the key is gone, and new ones work again.
    assert refused(one, key).status_code == 401
    assert chat(one, ok(admin(one, "/key/generate", {}))["key"])
