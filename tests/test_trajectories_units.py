"""The pieces of trajectory records on their own: the in-process store's bounds, the timeline built from
events, cutting texts, and finding and redacting secrets."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from proxy.auth import Identity
from proxy.cache import CachePolicy
from proxy.config import Settings
from proxy.rlm.budget import RunLimits
from proxy.rlm.engine import RunRequest
from proxy.rlm.events import Event
from proxy.rlm.prompts import build_input
from proxy.trajectories.record import context_text, cut, input_digests, input_shape, timeline
from proxy.trajectories.recorder import Trajectories
from proxy.trajectories.replay import input_mismatch, stored_messages
from proxy.trajectories.secrets import REDACTED, Redactor, known_secrets
from proxy.trajectories.store import MemoryRuns


def summary(run_id: str, started_at: float | None = None) -> dict[str, Any]:
    return {"id": run_id, "started_at": time.time() if started_at is None else started_at}


def stored(runs: MemoryRuns) -> list[str]:
    async def collect() -> list[str]:
        return [s["id"] async for s in runs.newest_first(None)]
    return asyncio.run(collect())


def test_memory_runs_drop_the_oldest_first_by_count() -> None:
    runs = MemoryRuns(max_bytes=10**9, max_runs=3, ttl_s=3600)
    for run_id in "abcd":
        asyncio.run(runs.save(summary(run_id), b"{}"))
    assert stored(runs) == ["d", "c", "b"]
    asyncio.run(runs.save(summary("b"), b'{"status":"finished"}'))  # saved again: keeps its place
    asyncio.run(runs.save(summary("e"), b"{}"))
    assert stored(runs) == ["e", "d", "c"]


def test_memory_runs_drop_the_oldest_first_by_bytes() -> None:
    runs = MemoryRuns(max_bytes=3 * 1500, max_runs=100, ttl_s=3600)
    for run_id in "abcd":
        asyncio.run(runs.save(summary(run_id), b"x" * 1000))
    assert stored(runs) == ["d", "c", "b"]
    assert runs.bytes_used <= 3 * 1500
    asyncio.run(runs.delete("c"))
    assert stored(runs) == ["d", "b"]


def test_memory_runs_expire_and_page() -> None:
    runs = MemoryRuns(max_bytes=10**9, max_runs=100, ttl_s=60)
    asyncio.run(runs.save(summary("old", time.time() - 120), b"{}"))
    for run_id in "abc":
        asyncio.run(runs.save(summary(run_id), b"{}"))
    assert asyncio.run(runs.load("old")) is None
    assert stored(runs) == ["c", "b", "a"]

    async def after(run_id: str) -> list[str]:
        return [s["id"] async for s in runs.newest_first(run_id)]
    assert asyncio.run(after("b")) == ["a"]


def test_cut_keeps_short_texts_and_says_what_it_left_out() -> None:
    assert cut("hello", 5) == "hello"
    assert cut("hello world", 5) == "hello… [6 more characters]"


def test_timeline_places_nested_iterations_and_subcalls_under_their_block() -> None:
    call = {"model": "m", "text": "a"}
    events = [
        {"type": "iteration_started", "depth": 1, "iteration": 1, "prompt_chars": 10},
        {"type": "root_replied", "depth": 1, "iteration": 1, "final": False, "call": call},
        {"type": "block_started", "depth": 1, "iteration": 1, "block": 1, "code": "x"},
        {"type": "subcalls_finished", "depth": 1, "count": 1, "errors": 0, "duration_s": 0.1,
         "calls": [call]},
        {"type": "iteration_started", "depth": 2, "iteration": 1, "prompt_chars": 5},
        {"type": "root_replied", "depth": 2, "iteration": 1, "final": False, "call": call},
        {"type": "block_executed", "depth": 1, "iteration": 1, "block": 1, "outcome": "ok", "output": "o",
         "duration_s": 0.2, "coverage": 0.5, "output_chars": 1, "cpu_s": 0.1, "peak_rss_bytes": 10},
        {"type": "root_replied", "depth": 1, "iteration": 1, "final": True, "call": call},
    ]
    for seq, event in enumerate(events):
        event |= {"seq": seq, "t": seq / 10}
    view = timeline(events)
    top, nested = view["iterations"]
    assert top["reply"] == call and top["final_reply"] == call
    assert top["blocks"][0]["subcalls"] == [call] and top["blocks"][0]["outcome"] == "ok"
    assert nested["depth"] == 2 and nested["parent"] == {"iteration": 1, "block": 1}
    assert view["coverage"] == [[0.6, 0.5]]


def test_known_secrets_are_every_key_and_provider_credential() -> None:
    settings = Settings(
        server={"master_key": "sk-master-123456", "api_keys": ["sk-client-123456"],
                "keys": [{"key": "sk-entry-123456", "alias": "a"}, {"key_hash": "0" * 64}]},
        model_list=[{"model_name": "m", "litellm_params": {
            "model": "openai/x", "api_key": "sk-provider-123456", "api_base": "http://h:1/v1",
            "aws_secret_access_key": "aws-secret-123456"}}])
    assert set(known_secrets(settings)) == {"sk-master-123456", "sk-client-123456", "sk-entry-123456",
                                            "sk-provider-123456", "aws-secret-123456"}


@pytest.mark.parametrize("secret", ["sk-master-123456", "sk-provider-123456"])
def test_redactor_removes_secrets_from_encoded_records(secret: str) -> None:
    redact = Redactor([secret, "short"])
    data = orjson.dumps({"output": f"the key is {secret}!", "x": "short"})
    assert secret.encode() not in redact(data)
    assert REDACTED in redact(data)
    assert orjson.loads(redact(data))["x"] == "[redacted]"


def test_the_records_directory_must_be_writable(tmp_path: Any) -> None:
    assert Settings(trajectories={"dir": str(tmp_path)}).trajectories.dir == tmp_path
    with pytest.raises(ValueError, match="not a writable directory"):
        Settings(trajectories={"dir": str(tmp_path / "missing")})


def run_of(messages: list[dict[str, Any]]) -> RunRequest:
    """A run on `messages`, as the recorder sees one (its limits do not matter here)."""
    return RunRequest(messages=messages, root_model="m", sub_model="m", cache=CachePolicy(""),
                      limits=RunLimits(max_iterations=1, max_depth=1, max_subcalls=0, max_cost_usd=None,
                                       timeout_s=1))


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Cite."},
     {"role": "user", "content": [{"type": "text", "text": "the whole input"}]}],
    [{"role": "user", "content": "find it"},
     {"role": "assistant", "content": "", "tool_calls": [
         {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}}]},
     {"role": "tool", "tool_call_id": "c1", "content": "found"}],
    [{"role": "user", "content": "only this"}],
])
def test_a_stored_input_gives_the_engine_the_recorded_input_again(messages: list[dict[str, Any]]) -> None:
    """A replay without the request's messages rebuilds them from the stored context and system text."""
    run = run_of(messages)
    run_input = build_input(messages)
    text = context_text(run_input.context)
    shape = input_shape(run, run_input, text, store_context=True)
    shape["sha256"], shape["request_sha256"] = input_digests(run_input, text)
    rebuilt = stored_messages(shape)
    assert build_input(rebuilt) == build_input(messages)
    assert input_mismatch(shape, rebuilt) is None
    assert input_mismatch(shape, [*messages, {"role": "user", "content": "more"}]) is not None


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_a_run_that_ends_before_its_input_is_hashed_gets_its_digests_all_the_same(ending: str) -> None:
    """The input is hashed in a thread while the run works: a run that ended first is saved again with
    its digests (a replay and the viewer read them from the record)."""
    context = "the whole input " * 200_000
    run = run_of([{"role": "user", "content": context}])
    identity = Identity(key_hash="k" * 64, alias="someone")

    async def events() -> AsyncIterator[Event]:
        if ending == "failed":
            raise RuntimeError("the engine broke")
        await asyncio.Event().wait()  # never ends: cancelled below
        yield  # type: ignore[misc]  # (an async generator)

    async def scenario() -> dict[str, Any]:
        settings = Settings()
        trajectories = Trajectories(settings.trajectories, settings.cache, ())
        recorded = trajectories.recorded(events(), run, identity)
        if ending == "failed":
            with pytest.raises(RuntimeError):
                await anext(recorded)
        else:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(recorded), 0.001)
        record = await trajectories.load(run.run_id, identity)
        assert record["status"] == ending
        for _ in range(500):
            if (record := await trajectories.load(run.run_id, identity))["input"]["sha256"] is not None:
                break
            await asyncio.sleep(0.01)
        return record

    record = asyncio.run(scenario())
    assert record["input"]["sha256"] == hashlib.sha256(context.encode()).hexdigest()
    assert record["input"]["request_sha256"] == input_digests(build_input(run.messages), context)[1]
