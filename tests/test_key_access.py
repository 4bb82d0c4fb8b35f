"""What a key may do, through the real proxy and the openai SDK: the models it may name (and its team's),
RLM mode allowed or not, its RLM caps, expiry; GET /v1/models filtered per key."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import openai
import pytest

from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Server, StartProxy, rlm_config

MOCK_ONLY, NO_RLM, TEAMED, CAPPED, EXPIRED, LATER = (
    "sk-mock-only", "sk-no-rlm", "sk-teamed", "sk-capped", "sk-expired", "sk-later")
KEYS: list[dict[str, Any]] = [
    {"key": MOCK_ONLY, "alias": "mock-only", "models": ["mo*"]},
    {"key": NO_RLM, "alias": "no-rlm", "rlm": {"allowed": False}},
    # No list of its own: the team's list applies, and both lists must allow a model.
    {"key_hash": hashlib.sha256(TEAMED.encode()).hexdigest(), "team": "blue"},
    {"key": CAPPED, "rlm": {"max_iterations": 3}},
    {"key": EXPIRED, "expires": "2020-01-01T00:00:00Z"},
    {"key": LATER, "expires": "2999-01-01T00:00:00"},
]
TEAMS = [{"team": "blue", "models": ["other*"]}]


@pytest.fixture(scope="module")
def keyed_proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    config = rlm_config(mock_upstream, server={"keys": KEYS, "teams": TEAMS})
    mock_model = config["model_list"][0]
    config["model_list"].append({**mock_model, "model_name": "other"})
    return start_proxy(config)


def client(proxy: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=120)


def chat(proxy: Server, key: str, model: str, text: str = "Say hi.", **kwargs: Any) -> Any:
    return client(proxy, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kwargs)


def model_ids(proxy: Server, key: str) -> list[str]:
    return [model.id for model in client(proxy, key).models.list()]


def test_models_outside_a_keys_list_are_refused_on_every_route(keyed_proxy: Server) -> None:
    assert chat(keyed_proxy, MOCK_ONLY, "mock").parse().choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(keyed_proxy, MOCK_ONLY, "other")
    assert refused.value.body["code"] == "model_not_allowed"
    assert refused.value.body["type"] == "permission_error"
    with pytest.raises(openai.PermissionDeniedError):
        chat(keyed_proxy, MOCK_ONLY, "rlm/other")
    sdk = client(keyed_proxy, MOCK_ONLY)
    with pytest.raises(openai.PermissionDeniedError):
        sdk.embeddings.create(model="other", input="x")
    with pytest.raises(openai.PermissionDeniedError):
        sdk.completions.create(model="other", prompt="x")
    with pytest.raises(openai.PermissionDeniedError):
        sdk.responses.create(model="other", input="x")
    body = {"model": "other", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    messages = httpx.post(keyed_proxy.url + "/v1/messages", headers={"x-api-key": MOCK_ONLY}, json=body)
    assert messages.status_code == 403
    assert messages.json()["error"] == {"type": "permission_error",
                                        "message": "This key may not use the model 'other'."}
    counted = httpx.post(keyed_proxy.url + "/v1/messages/count_tokens", headers={"x-api-key": MOCK_ONLY},
                         json={"model": "other", "messages": body["messages"]})
    assert counted.status_code == 403


def test_a_teams_list_narrows_its_keys(keyed_proxy: Server) -> None:
    assert chat(keyed_proxy, TEAMED, "other").parse().choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        chat(keyed_proxy, TEAMED, "mock")
    assert model_ids(keyed_proxy, TEAMED) == ["other", "rlm/other"]


def test_the_model_list_shows_what_each_key_may_use(keyed_proxy: Server) -> None:
    assert model_ids(keyed_proxy, MASTER_KEY) == ["mock", "other", "rlm/mock", "rlm/other"]
    assert model_ids(keyed_proxy, MOCK_ONLY) == ["mock", "rlm/mock"]
    assert model_ids(keyed_proxy, NO_RLM) == ["mock", "other"]


def test_a_key_without_rlm_cannot_ask_for_it_and_goes_direct_past_the_threshold(keyed_proxy: Server) -> None:
    with pytest.raises(openai.PermissionDeniedError) as prefixed:
        chat(keyed_proxy, NO_RLM, "rlm/mock")
    assert prefixed.value.body["code"] == "rlm_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        chat(keyed_proxy, NO_RLM, "mock", extra_headers={"x-rlm-mode": "on"})
    # Over the threshold (80% of the mock's 32k window) but within the window: the model answers it.
    long_prompt = needle_prompt(110_000, "quiet-lake", "5521")
    direct = chat(keyed_proxy, NO_RLM, "mock", long_prompt)
    assert direct.headers["x-rlm-mode"] == "direct"
    # The same prompt from a key with RLM mode is taken over by it.
    assert chat(keyed_proxy, MOCK_ONLY, "mock", long_prompt).headers["x-rlm-mode"] == "rlm"


def test_a_keys_rlm_caps_lower_the_servers(keyed_proxy: Server) -> None:
    prompt = needle_prompt(200_000, "vivid-harbor", "4817302") + " [[policy:never_final]]"
    raw = chat(keyed_proxy, CAPPED, "rlm/mock", prompt, extra_body={"rlm": {"max_iterations": 10}})
    assert raw.headers["x-rlm-stopped"] == "max_iterations"
    assert raw.headers["x-rlm-iterations"] == "3"


def test_expired_keys_are_refused(keyed_proxy: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(keyed_proxy, EXPIRED, "mock")
    assert refused.value.body["code"] == "expired_api_key"
    assert chat(keyed_proxy, LATER, "mock").parse().choices[0].message.content
