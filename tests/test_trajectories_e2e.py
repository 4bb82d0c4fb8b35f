"""Trajectory records and the runs API end to end: the official openai SDK runs RLM requests through the
real proxy (uvicorn, worker processes) against the mock upstream; the records are read back over HTTP."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.auth import ALIAS_HASH_CHARS
from proxy.config import key_hash
from proxy.mock_policy import needle_prompt
from tests.harness import EXTRA_KEY, MASTER_KEY, Mock, Redis, Server, StartProxy, rlm_config

KEY, VALUE = "amber-lantern", "6093417"
RLM_ON = {"x-rlm-mode": "on"}
CANARY_KEY = "sk-canary-client-7f3e9a1c5b"
CANARY_PROVIDER_KEY = "sk-canary-provider-2d8b4e6f0a"
OTHER_KEY = "sk-test-other-key"
EXTRA_ALIAS = key_hash(EXTRA_KEY)[:ALIAS_HASH_CHARS]  # a key without an alias is named by its hash's start


def keyed(mock: Mock, **overrides: Any) -> dict[str, Any]:
    config = rlm_config(mock, **overrides)
    config["server"]["keys"] = [{"key": CANARY_KEY, "alias": "canary"}, {"key": OTHER_KEY, "alias": "other"}]
    return config


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def proxy(mock_upstream: Mock, start_proxy: StartProxy, records_dir: Path) -> Server:
    return start_proxy(keyed(mock_upstream, rlm={"max_depth": 2, "heartbeat_s": 0.3},
                             trajectories={"dir": str(records_dir), "max_text_chars": 500}),
                       env={"MOCK_API_KEY": CANARY_PROVIDER_KEY})


def client(proxy: Server, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=120)


def api(proxy: Server, method: str, path: str, key: str = MASTER_KEY, headers: dict[str, str] | None = None,
        **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **(headers or {})}
    return httpx.request(method, proxy.url + path, headers=headers, timeout=30, **kwargs)


def create(proxy: Server, text: str, key: str = MASTER_KEY) -> tuple[Any, str]:
    raw = client(proxy, key).chat.completions.with_raw_response.create(
        model="mock", messages=[{"role": "user", "content": text}], extra_headers=RLM_ON)
    return raw.parse(), raw.headers["x-rlm-run-id"]


def exec_prompt(code: str, extra: str = "") -> str:
    return f"[[exec:{base64.b64encode(code.encode()).decode()}]] Run it.{extra}"


def finished(proxy: Server, run_id: str, key: str = MASTER_KEY) -> dict[str, Any]:
    """The record once the run is over (its last save happens just after the response)."""
    deadline = time.monotonic() + 10
    while True:
        response = api(proxy, "GET", f"/v1/rlm/runs/{run_id}", key)
        if response.status_code == 200 and response.json()["status"] != "running":
            return response.json()
        assert time.monotonic() < deadline, response.text
        time.sleep(0.05)


def sse_events(proxy: Server, run_id: str, key: str = MASTER_KEY,
               headers: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    with httpx.stream("GET", f"{proxy.url}/v1/rlm/runs/{run_id}/events", timeout=60,
                      headers={"authorization": f"Bearer {key}", **(headers or {})}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if fields:
                    event = json.loads(fields["data"])
                    assert int(fields["id"]) == event["seq"] and fields["event"] == event["type"]
                    yield event
                fields = {}
                continue
            name, _, value = line.partition(": ")
            fields[name] = value


def test_a_needle_run_is_recorded_iteration_by_iteration(proxy: Server, records_dir: Path) -> None:
    completion, run_id = create(proxy, needle_prompt(300_000, KEY, VALUE, depth=0.4))
    assert completion.choices[0].message.content == VALUE
    record = finished(proxy, run_id)
    assert record["object"] == "rlm.run" and record["version"] == 1 and record["id"] == run_id
    assert record["status"] == "finished" and record["answer"] == VALUE and record["finish_reason"] == "stop"
    assert record["key_alias"] == "master" and record["root_model"] == record["sub_model"] == "mock"
    assert record["limits"]["max_depth"] == 2
    shape = record["input"]
    assert shape["type"] == "str" and shape["messages"] == 1 and len(shape["sha256"]) == 64
    assert shape["chars"] >= 300_000 and len(shape["head"]) == len(shape["tail"]) == 200
    assert "context" not in shape  # only the shape unless trajectories.store_context
    totals = record["totals"]
    assert totals["iterations"] == len(record["iterations"]) == 2
    assert totals["subcalls"] == completion.model_extra["rlm"]["subcalls"] >= 3
    assert totals["coverage"] == 1.0
    first = record["iterations"][0]
    assert first["depth"] == 1 and first["parent"] is None and first["prompt_chars"] > 0
    reply = first["reply"]
    assert reply["model"] == "mock" and reply["completion_tokens"] > 0 and reply["duration_s"] >= 0
    assert reply["cache_key"].startswith("rlm:v1:")  # enough to find the call in the cache again
    assert "```repl" in reply["text"]
    block = first["blocks"][0]
    assert block["outcome"] == "ok" and "context" in block["code"] and block["output"] is not None
    # The worker's CPU time and peak memory, read from /proc by the proxy: the context alone is 300 kB.
    assert block["cpu_s"] >= 0 and block["peak_rss_bytes"] > 1_000_000
    assert len(block["subcalls"]) == totals["subcalls"]
    call = block["subcalls"][0]
    assert call["error"] is None and call["prompt_chars"] > 500 and call["cache_key"].startswith("rlm:v1:")
    assert len(call["prompt"]) < 600 and call["prompt"].endswith("more characters]")  # max_text_chars: 500
    assert any(VALUE in c["text"] for c in block["subcalls"])
    assert record["coverage"][-1][1] == 1.0
    assert block["read_map"] == [100] * 100  # every hundredth of the context read
    # The JSONL file: the header (with its version) on the first line, then the events, as SSE sends them.
    lines = (records_dir / f"{run_id}.jsonl").read_text().splitlines()
    head = json.loads(lines[0])
    assert head["version"] == 1 and head["id"] == run_id and head["status"] == "finished"
    events = [json.loads(line) for line in lines[1:]]
    assert events == list(sse_events(proxy, run_id))
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "run_finished"


def test_the_read_map_shows_which_part_of_the_context_a_block_read(proxy: Server) -> None:
    # The first block of this policy prints context[:1000] only; once questioned it reads all of it.
    _, run_id = create(proxy, needle_prompt(100_000, KEY, VALUE) + " [[policy:early_answer]]")
    blocks = [block for iteration in finished(proxy, run_id)["iterations"] for block in iteration["blocks"]]
    assert blocks[0]["read_map"][0] == 100 and blocks[0]["read_map"][2:] == [0] * 98
    assert blocks[-1]["read_map"] == [100] * 100


def test_nested_runs_are_recorded_under_their_parent_block(proxy: Server) -> None:
    prompt = needle_prompt(200_000, KEY, VALUE, depth=0.8) + " [[policy:rlm_query]]"
    completion, run_id = create(proxy, prompt)
    assert completion.choices[0].message.content == VALUE
    record = finished(proxy, run_id)
    nested = [i for i in record["iterations"] if i["depth"] == 2]
    assert nested and record["totals"]["max_depth"] == 2
    assert all(i["parent"] == {"iteration": 1, "block": 1} for i in nested)
    assert all(i["reply"]["model"] == "mock" for i in nested)


def test_a_failed_run_is_recorded_with_its_error(proxy: Server) -> None:
    prompt = needle_prompt(20_000, KEY, VALUE) + " [[mock:status=400]]"
    raw = httpx.post(proxy.url + "/v1/chat/completions", json={
        "model": "mock", "messages": [{"role": "user", "content": prompt}]}, timeout=30,
        headers={"authorization": f"Bearer {OTHER_KEY}", **RLM_ON})
    assert raw.status_code == 400
    runs = api(proxy, "GET", "/v1/rlm/runs?limit=1", OTHER_KEY).json()["data"]
    record = finished(proxy, runs[0]["id"], OTHER_KEY)
    assert record["status"] == "failed" and record["key_alias"] == "other"
    assert record["error"]["status"] == 400 and record["error"]["message"]
    assert record["iterations"][0]["reply"] is None  # the root call that failed


def test_a_run_whose_client_left_is_recorded_as_cancelled(proxy: Server) -> None:
    code = "for i in range(20):\n    print(llm_query(f'[[mock:latency_ms=200]] part {i}'))\n"
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", timeout=30, json={
            "model": "mock", "stream": True, "messages": [{"role": "user", "content": exec_prompt(code)}]},
            headers={"authorization": f"Bearer {MASTER_KEY}", **RLM_ON}) as response:
        run_id = response.headers["x-rlm-run-id"]
        for line in response.iter_lines():
            if "answered in" in line:  # the block is working: leave
                break
    record = finished(proxy, run_id)
    assert record["status"] == "cancelled"
    assert record["iterations"][0]["blocks"][0]["outcome"] is None  # cut short while it ran
    assert record["iterations"][0]["blocks"][0]["subcalls"]  # the batches that were answered


def test_events_stream_from_mid_run_delivers_each_event_once(proxy: Server) -> None:
    code = "for i in range(6):\n    print(llm_query(f'[[mock:latency_ms=150]] part {i}'))\n"
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", timeout=30, json={
            "model": "mock", "stream": True, "messages": [{"role": "user", "content": exec_prompt(code)}]},
            headers={"authorization": f"Bearer {MASTER_KEY}", **RLM_ON}) as response:
        run_id = response.headers["x-rlm-run-id"]
        lines = response.iter_lines()
        for line in lines:
            if "sub-call" in line:
                break
        during = api(proxy, "GET", f"/v1/rlm/runs/{run_id}").json()
        assert during["status"] == "running"
        seen: list[dict[str, Any]] = []
        follower = threading.Thread(target=lambda: seen.extend(sse_events(proxy, run_id)))
        follower.start()
        for _ in lines:  # the client reads its answer to the end
            pass
        follower.join(30)
    record_events = list(sse_events(proxy, run_id))  # the whole run, replayed
    assert [e["seq"] for e in seen] == list(range(len(seen)))
    assert seen == record_events and seen[-1]["type"] == "run_finished"
    assert len(seen) > len(during["iterations"])  # it saw live events after it connected
    # Reconnecting with Last-Event-ID resumes after that event.
    resumed = list(sse_events(proxy, run_id, headers={"last-event-id": "3"}))
    assert resumed == seen[4:]


def test_keys_see_only_their_own_runs(proxy: Server) -> None:
    _, theirs = create(proxy, needle_prompt(20_000, KEY, VALUE), key=EXTRA_KEY)
    finished(proxy, theirs)  # the master key sees every run
    for method, path in (("GET", f"/v1/rlm/runs/{theirs}"), ("GET", f"/v1/rlm/runs/{theirs}/events"),
                         ("DELETE", f"/v1/rlm/runs/{theirs}")):
        response = api(proxy, method, path, OTHER_KEY)
        assert response.status_code == 404 and response.json()["error"]["code"] == "run_not_found"
    mine = api(proxy, "GET", "/v1/rlm/runs?limit=100", OTHER_KEY).json()["data"]
    assert theirs not in [run["id"] for run in mine]
    assert all(run["key_alias"] == "other" for run in mine)
    forbidden = api(proxy, "GET", "/v1/rlm/runs?key_alias=canary", OTHER_KEY)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "master_key_required"
    everyone = api(proxy, "GET", "/v1/rlm/runs?limit=100").json()["data"]
    assert theirs in [run["id"] for run in everyone]
    by_alias = api(proxy, "GET", "/v1/rlm/runs", params={"key_alias": EXTRA_ALIAS, "limit": 100}).json()
    assert theirs in [run["id"] for run in by_alias["data"]]
    deleted = api(proxy, "DELETE", f"/v1/rlm/runs/{theirs}", EXTRA_KEY)
    assert deleted.json() == {"id": theirs, "object": "rlm.run.deleted", "deleted": True}
    assert api(proxy, "GET", f"/v1/rlm/runs/{theirs}", EXTRA_KEY).status_code == 404


def test_listing_pages_and_filters(proxy: Server) -> None:
    since = time.time()
    ids = [create(proxy, needle_prompt(20_000, KEY, VALUE), key=CANARY_KEY)[1] for _ in range(3)]
    for run_id in ids:
        finished(proxy, run_id, CANARY_KEY)
    first = api(proxy, "GET", "/v1/rlm/runs", CANARY_KEY, params={"limit": 2, "since": since}).json()
    assert [run["id"] for run in first["data"]] == ids[:0:-1] and first["has_more"]
    assert first["last_id"] == ids[1]
    rest = api(proxy, "GET", "/v1/rlm/runs", CANARY_KEY,
               params={"limit": 2, "since": since, "after": first["last_id"]}).json()
    assert [run["id"] for run in rest["data"]] == ids[:1] and not rest["has_more"]
    assert all(run["status"] == "finished" and "events" not in run and "owner" not in run
               for run in first["data"] + rest["data"])
    none = api(proxy, "GET", "/v1/rlm/runs", CANARY_KEY, params={"status": "failed", "since": since}).json()
    assert none["data"] == []
    assert api(proxy, "GET", "/v1/rlm/runs", CANARY_KEY, params={"model": "other", "since": since}
               ).json()["data"] == []
    assert api(proxy, "GET", "/v1/rlm/runs", CANARY_KEY, params={"until": since}).json()["data"] == []
    bad = api(proxy, "GET", "/v1/rlm/runs", CANARY_KEY, params={"limit": 0})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    bad = api(proxy, "GET", "/v1/rlm/runs", CANARY_KEY, params={"status": "sleeping"})
    assert bad.status_code == 400


def test_secrets_never_appear_in_records(proxy: Server, records_dir: Path) -> None:
    # The client's own prompt carries both secrets, and the code prints them: the record shows neither.
    code = f"print('{CANARY_KEY} {CANARY_PROVIDER_KEY}')\n"
    completion, run_id = create(proxy, exec_prompt(code, f" {CANARY_KEY} {CANARY_PROVIDER_KEY}"),
                                key=CANARY_KEY)
    assert completion.choices[0].message.content
    finished(proxy, run_id, CANARY_KEY)
    seen = [api(proxy, "GET", f"/v1/rlm/runs/{run_id}", CANARY_KEY).text,
            api(proxy, "GET", "/v1/rlm/runs", CANARY_KEY).text,
            json.dumps(list(sse_events(proxy, run_id, CANARY_KEY))),
            (records_dir / f"{run_id}.jsonl").read_text()]
    for text in seen:
        assert CANARY_KEY not in text and CANARY_PROVIDER_KEY not in text and MASTER_KEY not in text
    assert "[redacted]" in seen[0] and "[redacted]" in seen[3]


def test_a_key_made_through_the_admin_api_never_appears_in_its_records(proxy: Server) -> None:
    """Such a key is stored by hash only: the request that presents it is what tells the recorder."""
    made = api(proxy, "POST", "/key/generate", json={"key_alias": "made-at-run-time"}).json()["key"]
    code = f"print({made!r})\n"
    _, run_id = create(proxy, exec_prompt(code, f" {made}"), key=made)
    record = finished(proxy, run_id, made)
    seen = [json.dumps(record), json.dumps(list(sse_events(proxy, run_id, made))),
            api(proxy, "GET", "/v1/rlm/runs", made).text]
    assert all(made not in text for text in seen)
    assert "[redacted]" in seen[0]


def test_unknown_runs_get_openai_errors(proxy: Server) -> None:
    response = api(proxy, "GET", "/v1/rlm/runs/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "run_not_found"
    assert api(proxy, "GET", "/v1/rlm/runs/nope/events").status_code == 404
    assert api(proxy, "DELETE", "/v1/rlm/runs/nope").status_code == 404
    bad = api(proxy, "GET", "/v1/rlm/runs/nope/events", headers={"last-event-id": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "last-event-id"
    assert api(proxy, "GET", "/v1/rlm/runs", "sk-wrong").status_code == 401


def test_with_redis_any_replica_serves_any_run(mock_upstream: Mock, start_proxy: StartProxy,
                                               redis_server: Redis) -> None:
    config = keyed(mock_upstream, cache={"redis_url": redis_server.url})
    first, second = start_proxy(config), start_proxy(config)
    completion, run_id = create(first, needle_prompt(50_000, KEY, VALUE), key=OTHER_KEY)
    assert completion.choices[0].message.content == VALUE
    record = finished(second, run_id, OTHER_KEY)
    assert record["status"] == "finished" and record["answer"] == VALUE
    assert run_id in [run["id"] for run in api(second, "GET", "/v1/rlm/runs", OTHER_KEY).json()["data"]]
    assert api(second, "GET", f"/v1/rlm/runs/{run_id}", CANARY_KEY).status_code == 404
    events = list(sse_events(second, run_id, OTHER_KEY))
    assert events[-1]["type"] == "run_finished" and [e["seq"] for e in events] == list(range(len(events)))
    assert api(second, "DELETE", f"/v1/rlm/runs/{run_id}", OTHER_KEY).status_code == 200
    assert api(first, "GET", f"/v1/rlm/runs/{run_id}", OTHER_KEY).status_code == 404


def test_a_run_going_on_another_replica_is_followed_to_its_end(mock_upstream: Mock, start_proxy: StartProxy,
                                                                redis_server: Redis) -> None:
    config = keyed(mock_upstream, cache={"redis_url": redis_server.url})
    first, second = start_proxy(config), start_proxy(config)
    code = "for i in range(8):\n    print(llm_query(f'[[mock:latency_ms=300]] slow part {i}'))\n"
    with httpx.stream("POST", first.url + "/v1/chat/completions", timeout=30, json={
            "model": "mock", "stream": True, "messages": [{"role": "user", "content": exec_prompt(code)}]},
            headers={"authorization": f"Bearer {MASTER_KEY}", **RLM_ON}) as response:
        run_id = response.headers["x-rlm-run-id"]
        lines = response.iter_lines()
        for line in lines:
            if "answered in" in line:
                break
        assert api(second, "GET", f"/v1/rlm/runs/{run_id}").json()["status"] == "running"
        seen: list[dict[str, Any]] = []
        follower = threading.Thread(target=lambda: seen.extend(sse_events(second, run_id)))
        follower.start()
        for _ in lines:
            pass
        follower.join(30)
    assert [e["seq"] for e in seen] == list(range(len(seen))) and seen[-1]["type"] == "run_finished"
    assert seen == list(sse_events(first, run_id))


def test_a_dead_redis_fails_no_run_and_the_api_says_503(mock_upstream: Mock, start_proxy: StartProxy,
                                                         redis_server: Redis) -> None:
    replica = start_proxy(keyed(mock_upstream, cache={"redis_url": redis_server.url, "redis_timeout_s": 0.2}))
    redis_server.kill()
    try:
        completion, run_id = create(replica, needle_prompt(20_000, KEY, VALUE))
        assert completion.choices[0].message.content == VALUE  # recording never fails the run
        deadline = time.monotonic() + 10
        # Served from the process while its last save is tried; then the store has to answer.
        while (response := api(replica, "GET", f"/v1/rlm/runs/{run_id}")).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert response.status_code == 503 and response.json()["error"]["code"] == "store_unavailable"
        assert api(replica, "GET", "/v1/rlm/runs").status_code == 503
    finally:
        redis_server.start()


def test_recording_off_serves_no_runs(mock_upstream: Mock, start_proxy: StartProxy) -> None:
    off = start_proxy(rlm_config(mock_upstream, trajectories={"enabled": False}))
    completion, run_id = create(off, needle_prompt(20_000, KEY, VALUE))
    assert completion.choices[0].message.content == VALUE
    response = api(off, "GET", f"/v1/rlm/runs/{run_id}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "trajectories_disabled"
