"""Replaying recorded runs against the cache, end to end: RLM runs made with the official openai SDK through
the real proxy (uvicorn, sandbox workers) against the mock upstream, with the cache and the run records in a
real Redis; then POST /v1/rlm/runs/{id}/replay, with the mock's request counter as the witness that a
replay never calls a model."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import redis

from proxy.mock_policy import needle_prompt
from proxy.trajectories.store import KEY_PREFIX
from tests.harness import MASTER_KEY, Mock, Redis, Server, StartProxy
from tests.test_trajectories_e2e import (
    CANARY_KEY,
    KEY,
    OTHER_KEY,
    RLM_ON,
    VALUE,
    api,
    client,
    exec_prompt,
    finished,
    keyed,
)

PROMPT = needle_prompt(300_000, KEY, VALUE, depth=0.4)
MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def proxy(own_mock_upstream: Mock, start_proxy: StartProxy, redis_server: Redis) -> Server:
    return start_proxy(keyed(own_mock_upstream, cache={"redis_url": redis_server.url}, rlm={"max_depth": 2}))


@pytest.fixture(scope="module")
def store(redis_server: Redis) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


def run(proxy: Server, messages: list[dict[str, str]] = MESSAGES, key: str = OTHER_KEY,
        headers: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    raw = client(proxy, key).chat.completions.with_raw_response.create(
        model="mock", messages=messages, temperature=0.3, seed=7, extra_headers={**RLM_ON, **(headers or {})})
    run_id = raw.headers["x-rlm-run-id"]
    return run_id, finished(proxy, run_id, key)


def replay(proxy: Server, run_id: str, key: str = OTHER_KEY, body: Any = None) -> httpx.Response:
    return api(proxy, "POST", f"/v1/rlm/runs/{run_id}/replay", key,
               json={"messages": MESSAGES} if body is None else body)


def upstream_requests(mock: Mock) -> int:
    stats = mock.stats()
    assert stats["in_flight"] == 0
    return stats["requests"]


def calls(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [call for step in record["iterations"] for block in step["blocks"] for call in block["subcalls"]]


def test_a_cached_run_replays_exactly_without_calling_a_model(proxy: Server, own_mock_upstream: Mock) -> None:
    run_id, record = run(proxy)
    assert record["answer"] == VALUE and record["totals"]["subcalls"] >= 3
    assert record["request"]["root_params"] == {"temperature": 0.3, "seed": 7}
    before = upstream_requests(own_mock_upstream)
    response = replay(proxy, run_id)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["object"] == "rlm.replay" and result["run_id"] == run_id
    assert result["exact"] is True and result["divergence"] is None, result["divergence"]
    assert result["upstream_calls"] == 0
    assert result["answer"] == result["recorded_answer"] == VALUE and result["answer_matched"]
    totals = record["totals"]
    assert (result["iterations"], result["code_blocks"], result["subcalls"]) == (
        totals["iterations"], totals["code_blocks"], totals["subcalls"])
    assert upstream_requests(own_mock_upstream) == before  # not one call reached the model
    # The replay is a run of its own, recorded with the run it replays: the same code, outputs, calls.
    again = finished(proxy, result["replay_run_id"], OTHER_KEY)
    assert again["replay_of"] == run_id and again["status"] == "finished" and again["answer"] == VALUE
    assert again["request"]["cache"] == {**record["request"]["cache"], "write": False}
    assert [[(b["code"], b["output"]) for b in step["blocks"]] for step in again["iterations"]] == \
        [[(b["code"], b["output"]) for b in step["blocks"]] for step in record["iterations"]]
    assert [(c["prompt"], c["text"], c["cache_key"]) for c in calls(again)] == \
        [(c["prompt"], c["text"], c["cache_key"]) for c in calls(record)]
    assert again["totals"]["cached_subcalls"] == totals["cached_subcalls"]  # hits as they were recorded


def test_the_master_key_replays_a_run_in_its_own_cache_scope(proxy: Server, own_mock_upstream: Mock) -> None:
    run_id, _ = run(proxy, key=OTHER_KEY)
    before = upstream_requests(own_mock_upstream)
    result = replay(proxy, run_id, MASTER_KEY).json()
    # In the master key's scope not one call would be cached: the run's own scope was used.
    assert result["exact"] is True and result["answer"] == VALUE
    assert upstream_requests(own_mock_upstream) == before


def test_an_evicted_subcall_is_where_the_replay_diverges(proxy: Server, own_mock_upstream: Mock,
                                                        store: redis.Redis) -> None:
    run_id, record = run(proxy, [{"role": "user", "content": needle_prompt(300_000, KEY, VALUE, depth=0.6)}])
    subcalls = calls(record)
    gone = subcalls[1]
    assert store.delete(gone["cache_key"]) == 1
    before = upstream_requests(own_mock_upstream)
    response = replay(proxy, run_id, body={"messages": [
        {"role": "user", "content": needle_prompt(300_000, KEY, VALUE, depth=0.6)}]})
    result = response.json()
    assert response.status_code == 200 and result["exact"] is False and result["upstream_calls"] == 0
    divergence = result["divergence"]
    assert divergence["kind"] == "cache_miss" and divergence["call"] == "sub_call"
    assert divergence["reason"] == "evicted" and divergence["replayable"] is True
    assert divergence["cache_key"] == divergence["recorded_cache_key"] == gone["cache_key"]
    assert divergence["at"]["event"] == "subcalls_finished"
    assert (divergence["at"]["depth"], divergence["at"]["iteration"], divergence["at"]["block"]) == (1, 1, 1)
    assert divergence["model"] == "mock" and divergence["prompt_preview"][:100] == gone["prompt"][:100]
    assert result["answer"] is None and result["answer_matched"] is False
    assert result["recorded_answer"] == VALUE
    assert upstream_requests(own_mock_upstream) == before
    # Nothing was written back: the entry is still missing.
    assert store.exists(gone["cache_key"]) == 0


def test_a_flushed_cache_diverges_at_the_first_root_call(proxy: Server, own_mock_upstream: Mock,
                                                         store: redis.Redis) -> None:
    run_id, record = run(proxy)
    first = record["iterations"][0]["reply"]
    for name in store.scan_iter(match="rlm:v1:*"):
        store.delete(name)
    before = upstream_requests(own_mock_upstream)
    result = replay(proxy, run_id).json()
    divergence = result["divergence"]
    assert result["exact"] is False and divergence["kind"] == "cache_miss"
    assert divergence["call"] == "root" and divergence["reason"] == "evicted"
    assert divergence["at"]["event"] == "root_replied" and divergence["at"]["iteration"] == 1
    assert divergence["cache_key"] == first["cache_key"]
    assert result["iterations"] == 1 and result["subcalls"] == 0
    assert upstream_requests(own_mock_upstream) == before
    again = finished(proxy, result["replay_run_id"], OTHER_KEY)
    assert again["status"] == "failed" and again["error"]["code"] == "cache_miss"


def test_a_nested_run_replays_and_diverges_at_its_own_root_call(proxy: Server, own_mock_upstream: Mock,
                                                                store: redis.Redis) -> None:
    messages = [{"role": "user", "content": needle_prompt(200_000, KEY, VALUE, depth=0.8)
                 + " [[policy:rlm_query]]"}]
    run_id, record = run(proxy, messages)
    nested = [step for step in record["iterations"] if step["depth"] == 2]
    assert record["answer"] == VALUE and nested
    before = upstream_requests(own_mock_upstream)
    assert replay(proxy, run_id, body={"messages": messages}).json()["exact"] is True
    gone = nested[0]["reply"]["cache_key"]
    assert store.delete(gone) == 1
    result = replay(proxy, run_id, body={"messages": messages}).json()
    divergence = result["divergence"]
    assert divergence["kind"] == "cache_miss" and divergence["call"] == "root"
    assert divergence["cache_key"] == divergence["recorded_cache_key"] == gone
    assert divergence["at"]["event"] == "root_replied" and divergence["at"]["depth"] == 2
    assert divergence["at"]["iteration"] == 1
    assert upstream_requests(own_mock_upstream) == before


def test_a_key_replays_only_in_the_cache_scope_it_has_now(
        proxy: Server, own_mock_upstream: Mock, start_proxy: StartProxy, redis_server: Redis) -> None:
    run_id, _ = run(proxy)
    # Another replica sharing the records, where keys share the cache with everyone: the key's scope is
    # not the run's any more, and a key never replays in another scope.
    shared = start_proxy(keyed(own_mock_upstream, cache={"redis_url": redis_server.url, "scope": "global"}))
    response = replay(shared, run_id)
    assert response.status_code == 409 and response.json()["error"]["code"] == "run_not_replayable"
    assert "cache scope" in response.json()["error"]["message"]
    assert replay(shared, run_id, MASTER_KEY).json()["exact"] is True


def test_code_whose_output_changes_diverges_at_its_block(proxy: Server, own_mock_upstream: Mock) -> None:
    messages = [{"role": "user", "content": exec_prompt("import time\nprint(time.time_ns())\n")}]
    run_id, record = run(proxy, messages)
    before = upstream_requests(own_mock_upstream)
    result = replay(proxy, run_id, body={"messages": messages}).json()
    divergence = result["divergence"]
    assert divergence["kind"] == "mismatch" and divergence["field"] == "output"
    assert divergence["at"]["event"] == "block_executed" and divergence["at"]["block"] == 1
    assert divergence["expected"] == record["iterations"][0]["blocks"][0]["output"] != divergence["actual"]
    assert upstream_requests(own_mock_upstream) == before


def test_the_input_must_be_the_runs_own(proxy: Server, own_mock_upstream: Mock) -> None:
    run_id, _ = run(proxy)
    before = upstream_requests(own_mock_upstream)
    other = [{"role": "user", "content": PROMPT + "!"}]
    response = replay(proxy, run_id, body={"messages": other})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "input_mismatch" and error["param"] == "messages"
    assert "context" in error["message"] and error["type"] == "invalid_request_error"
    # The same context with another system message is another request too.
    response = replay(proxy, run_id, body={"messages": [{"role": "system", "content": "Be verbose."},
                                                         MESSAGES[1]]})
    assert response.status_code == 400 and "system messages" in response.json()["error"]["message"]
    response = replay(proxy, run_id, body={})
    assert response.status_code == 400 and response.json()["error"]["code"] == "input_required"
    response = replay(proxy, run_id, body={"messages": "hello"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    response = api(proxy, "POST", f"/v1/rlm/runs/{run_id}/replay", OTHER_KEY, content=b"{nope")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert upstream_requests(own_mock_upstream) == before


def test_a_key_cannot_replay_another_keys_run(proxy: Server) -> None:
    run_id, _ = run(proxy, key=OTHER_KEY)
    for key in (CANARY_KEY, "sk-wrong"):
        response = replay(proxy, run_id, key)
        assert response.status_code == (404 if key == CANARY_KEY else 401)
    assert replay(proxy, run_id, CANARY_KEY).json()["error"]["code"] == "run_not_found"
    assert replay(proxy, "nope").status_code == 404


def test_a_run_that_bypassed_the_cache_is_not_replayable(proxy: Server) -> None:
    run_id, record = run(proxy, headers={"cache-control": "no-cache, no-store"})
    assert record["request"]["cache"]["read"] is False and all(not c["cache_key"] for c in calls(record))
    response = replay(proxy, run_id)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "run_not_replayable" and "no-cache, no-store" in error["message"]


def test_calls_made_under_no_store_are_reported_as_never_stored(proxy: Server) -> None:
    messages = [{"role": "user", "content": needle_prompt(30_000, KEY, VALUE, depth=0.1)}]
    run_id, _ = run(proxy, messages, headers={"cache-control": "no-store"})
    result = replay(proxy, run_id, body={"messages": messages}).json()
    divergence = result["divergence"]
    assert result["exact"] is False and divergence["reason"] == "not_stored"
    assert divergence["replayable"] is False and divergence["call"] == "root"


def test_a_record_without_the_requests_parameters_is_not_replayable(proxy: Server,
                                                                   store: redis.Redis) -> None:
    run_id, _ = run(proxy)
    stored = orjson.loads(store.get(KEY_PREFIX + run_id))
    del stored["request"]  # as recorded before replays existed
    store.set(KEY_PREFIX + run_id, orjson.dumps(stored), keepttl=True)
    response = replay(proxy, run_id)
    assert response.status_code == 409 and response.json()["error"]["code"] == "run_not_replayable"
    assert "recorded before" in response.json()["error"]["message"]


def test_a_stored_input_replays_without_the_messages(own_mock_upstream: Mock, start_proxy: StartProxy,
                                                     redis_server: Redis) -> None:
    proxy = start_proxy(keyed(own_mock_upstream, cache={"redis_url": redis_server.url},
                              trajectories={"store_context": True}))
    run_id, record = run(proxy)
    assert record["input"]["system"] == "Answer briefly." and record["input"]["context"] == PROMPT
    before = upstream_requests(own_mock_upstream)
    result = replay(proxy, run_id, body={}).json()
    assert result["exact"] is True and result["answer"] == VALUE
    without_a_body = api(proxy, "POST", f"/v1/rlm/runs/{run_id}/replay", OTHER_KEY)
    assert without_a_body.status_code == 200 and without_a_body.json()["exact"] is True
    assert upstream_requests(own_mock_upstream) == before
