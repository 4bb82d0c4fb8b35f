"""The engine's sub-calls from code, through a real sandbox pool, with a scripted model caller."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from proxy.cache import CachePolicy
from proxy.config import RLMSettings
from proxy.rlm.budget import RunLimits
from proxy.rlm.engine import ModelReply, RLMEngine, RunRequest, TextSink
from proxy.rlm.events import BlockExecuted, Event, RunFinished, SubcallsFinished
from sandbox import SandboxPool
from tests.engine_fakes import UnlimitedModels

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the pool lives in the module's loop


class ScriptedCaller(UnlimitedModels):
    """The root model writes `code` once, then answers FINAL(done); a sub-call is answered with its
    prompt's size (after killing the sandbox workers, with `kill_workers`)."""

    def __init__(self, code: str, kill_workers: bool = False) -> None:
        self.code = code
        self.kill_workers = kill_workers
        self.subcall_prompts: list[str] = []

    async def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                       cache: CachePolicy, on_text: TextSink | None = None) -> ModelReply:
        if messages[0]["role"] != "system":
            if self.kill_workers:
                kill_sandbox_workers()
            self.subcall_prompts.append(messages[0]["content"])
            return ModelReply(f"sub-model saw {len(messages[0]['content'])} characters", 1, 1, 0.0)
        replies = sum(message["role"] == "assistant" for message in messages)
        return ModelReply(f"```repl\n{self.code}\n```" if replies == 0 else "FINAL(done)", 10, 5, 0.0)


def kill_sandbox_workers() -> None:
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"sandbox.worker" in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):  # not a process, or gone meanwhile
            continue


async def run_events(pool: SandboxPool, caller: ScriptedCaller) -> list[Event]:
    limits = RunLimits(max_iterations=3, max_depth=1, max_subcalls=10, max_cost_usd=None, timeout_s=60)
    request = RunRequest(messages=[{"role": "user", "content": "some context " * 100}], root_model="m",
                         sub_model="m", limits=limits, cache=CachePolicy(""))
    engine = RLMEngine(caller, pool, RLMSettings(min_coverage_to_answer=0))  # type: ignore[arg-type]
    events: list[Event] = [event async for event in engine.run(request)]
    assert isinstance(events[-1], RunFinished) and events[-1].answer == "done"
    return events


async def block_output(pool: SandboxPool, caller: ScriptedCaller) -> str:
    return next(event for event in await run_events(pool, caller) if isinstance(event, BlockExecuted)).output


async def test_a_batch_is_answered_in_order(engine_pool: SandboxPool) -> None:
    caller = ScriptedCaller("print(llm_query_batched(['a' * 10, 'b' * 2000, 'c']))")
    output = await block_output(engine_pool, caller)
    assert output.strip() == str([f"sub-model saw {n} characters" for n in (10, 2000, 1)])
    assert sorted(caller.subcall_prompts) == ["a" * 10, "b" * 2000, "c"]


async def test_rlm_query_at_the_depth_limit_is_a_plain_sub_call(engine_pool: SandboxPool) -> None:
    caller = ScriptedCaller("print(rlm_query('Summarise.', 'the text'))")
    assert await block_output(engine_pool, caller) == "sub-model saw 20 characters\n"
    assert caller.subcall_prompts == ["Summarise.\n\nthe text"]


async def test_a_worker_dying_mid_batch_leaves_its_calls_accounted_for(engine_pool: SandboxPool) -> None:
    """The first call starts as its prompt arrives and kills the worker: the prompts that never came are
    answered with errors and cost nothing, the call that went out ends as it would, and the run goes on."""
    caller = ScriptedCaller("print(llm_query_batched([c * 2_000_000 for c in 'abc']))", kill_workers=True)
    events = await run_events(engine_pool, caller)
    finished = next(event for event in events if isinstance(event, SubcallsFinished))
    assert [call.text for call in finished.calls] == ["sub-model saw 2000000 characters"] + [
        "Error: the code's worker stopped before it sent this prompt"] * 2
    assert finished.errors == 2 and caller.subcall_prompts == ["a" * 2_000_000]
    assert [call.prompt_chars for call in finished.calls] == [2_000_000] * 3  # as the worker announced them
    executed = next(event for event in events if isinstance(event, BlockExecuted))
    assert executed.outcome == "killed"
    done = events[-1]
    assert isinstance(done, RunFinished) and done.stats.subcall_errors == 2
