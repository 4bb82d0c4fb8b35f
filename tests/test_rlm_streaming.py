"""Streaming execution: a root reply's ```repl block runs as soon as its closing fence arrives, while the
model is still writing; a reply that fails mid-stream fails the run and stops the block it started."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from proxy.cache import CachePolicy
from proxy.config import RLMSettings
from proxy.mock_policy import needle_prompt
from proxy.rlm.budget import RunLimits
from proxy.rlm.engine import ModelReply, RLMEngine, RunRequest, TextSink
from proxy.rlm.events import BlockExecuted, BlockStarted, Event, RootReplied, RunFinished
from proxy.upstream import connection_error
from sandbox import SandboxPool
from tests.engine_fakes import UnlimitedModels
from tests.harness import MASTER_KEY, Mock, StartProxy, rlm_config, start_server

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the pool lives in the module's loop

BLOCK = "Let me ask.\n```repl\nprint(llm_query('the number?'))\n```"
TRAILER = "\nI expect the sub-model to name it."


class StreamingCaller(UnlimitedModels):
    """Streams the first root reply in two pieces: the block, then (once the block's sub-call has come
    in, which only happens if the block already runs) the text after it; or fails instead."""

    def __init__(self, fail_after_block: bool = False) -> None:
        self.fail_after_block = fail_after_block
        self.subcall_seen = asyncio.Event()
        self.root_calls = 0

    async def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                       cache: CachePolicy, on_text: TextSink | None = None) -> ModelReply:
        if messages[0]["role"] != "system":
            self.subcall_seen.set()
            await asyncio.sleep(0.5 if self.fail_after_block else 0)  # still going when the reply fails
            return ModelReply("42", 1, 1, 0.0)
        self.root_calls += 1
        if self.root_calls > 1:
            return ModelReply("FINAL(42)", 10, 5, 0.0)
        assert on_text is not None
        on_text(BLOCK)
        await asyncio.wait_for(self.subcall_seen.wait(), 10)  # times out unless the block started
        if self.fail_after_block:
            raise connection_error("the stream broke")
        on_text(TRAILER)
        return ModelReply(BLOCK + TRAILER, 10, 5, 0.0)


def run(pool: SandboxPool | WaitingPool, caller: StreamingCaller) -> AsyncIterator[Event]:
    limits = RunLimits(max_iterations=3, max_depth=1, max_subcalls=10, max_cost_usd=None, timeout_s=60)
    request = RunRequest(messages=[{"role": "user", "content": "some context " * 100}], root_model="m",
                         sub_model="m", limits=limits, cache=CachePolicy(""))
    return RLMEngine(caller, pool, RLMSettings(min_coverage_to_answer=0)).run(request)  # type: ignore[arg-type]


@in_module_loop
async def test_a_block_runs_while_the_root_model_still_writes(engine_pool: SandboxPool) -> None:
    events = [event async for event in run(engine_pool, StreamingCaller())]
    kinds = [type(event).__name__ for event in events]
    # Told in the order of a reply read whole, though the block started (and sent its sub-call) before the
    # reply it came in was complete, as the engine's own times show.
    assert kinds[:5] == ["IterationStarted", "RootReplied", "BlockStarted", "SubcallsDispatched",
                         "SubcallsFinished"]
    started = next(event for event in events if isinstance(event, BlockStarted))
    executed = next(event for event in events if isinstance(event, BlockExecuted))
    assert executed.output.strip() == "42" and executed.outcome == "ok"
    replied = next(event for event in events if isinstance(event, RootReplied))
    assert replied.call.text.endswith(TRAILER)
    assert started.at < replied.at
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.answer == "42" and finished.stats.blocks == 1


@in_module_loop
async def test_a_reply_that_fails_mid_stream_fails_the_run_and_stops_its_block(
        engine_pool: SandboxPool) -> None:
    caller = StreamingCaller(fail_after_block=True)
    with pytest.raises(Exception, match="the stream broke"):
        async for _ in run(engine_pool, caller):
            pass
    # Nothing of the failed run is left running: the pool serves the next run at once.
    events = [event async for event in run(engine_pool, StreamingCaller())]
    assert isinstance(events[-1], RunFinished) and events[-1].answer == "42"


# ---------------------------------------------------------------------------------------------------------
# Through the real proxy, with a mock whose replies stream at a token rate


@pytest.fixture(scope="module")
def paced_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    server = start_server(["mock-upstream", "--context-window-tokens", "32000", "--tokens-per-second", "100"],
                          "/v1/models", tmp_path_factory.mktemp("mock") / "mock.log")
    yield Mock(server)
    server.stop()


@pytest.mark.parametrize("streamed", [True, False])
def test_through_the_proxy_the_block_starts_before_the_reply_ends(paced_mock: Mock, start_proxy: StartProxy,
                                                                   streamed: bool) -> None:
    proxy = start_proxy(rlm_config(paced_mock, rlm={"stream_root_replies": streamed}))
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="rlm/mock", messages=[{"role": "user", "content": needle_prompt(
            20_000, "paced", "8080", question=None) + " [[policy:explains]]"}])
    assert raw.parse().choices[0].message.content == "8080"
    # The run's events: its SSE stream gives those so far and ends with the run.
    with httpx.stream("GET", f"{proxy.url}/v1/rlm/runs/{raw.headers['x-rlm-run-id']}/events", timeout=30,
                      headers={"authorization": f"Bearer {MASTER_KEY}"}) as stream:
        events = [orjson.loads(line.removeprefix("data: ")) for line in stream.iter_lines()
                  if line.startswith("data: ")]
    first = {event["type"]: event for event in events if event.get("iteration", 1) == 1 and "depth" in event}
    # Told in the same order either way; the engine's times show the block ran while the mock still wrote
    # its 120 tokens (1.2 s) after it, when streamed.
    kinds = [event["type"] for event in events]
    assert kinds.index("root_replied") < kinds.index("block_started")
    ran_first = first["block_executed"]["at"] < first["root_replied"]["at"]
    assert ran_first == streamed, first


# ---------------------------------------------------------------------------------------------------------
# The context loads while the root model writes its first reply


class WaitingPool:
    """A pool whose sessions start loading only once the first root call has come in."""

    def __init__(self, pool: SandboxPool, root_called: asyncio.Event) -> None:
        self._pool = pool
        self._root_called = root_called

    async def session(self, context: str | list[dict[str, Any]]) -> Any:
        await asyncio.wait_for(self._root_called.wait(), 10)  # times out if the load comes first
        return await self._pool.session(context)


class FirstCallSignals(StreamingCaller):
    def __init__(self, root_called: asyncio.Event) -> None:
        super().__init__()
        self.root_called = root_called

    async def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                       cache: CachePolicy, on_text: TextSink | None = None) -> ModelReply:
        if messages[0]["role"] == "system":
            self.root_called.set()
        return await super().complete(model, messages, params, cache, on_text)


@in_module_loop
async def test_the_first_root_call_does_not_wait_for_the_context_to_load(engine_pool: SandboxPool) -> None:
    root_called = asyncio.Event()
    waiting = WaitingPool(engine_pool, root_called)
    events = [event async for event in run(waiting, FirstCallSignals(root_called))]
    assert isinstance(events[-1], RunFinished) and events[-1].answer == "42"
