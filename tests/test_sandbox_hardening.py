"""What a hostile block must not be able to do to the parent (the proxy): make it allocate at will, write
into its output, crash its worker into a half-dead state, or read host paths in error text; and what
sessions share: the byte budget, the worker cap. Real worker processes; the pure pieces (the byte budget,
the waves) are tested directly."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from sandbox import PoolLimits, Prompt, SandboxLimits, SandboxPool, SandboxSession, SandboxUnavailableError
from sandbox.protocol import MAX_ANSWER_CHARS
from sandbox.transfer import ByteBudget, Transfers
from tests.test_sandbox_limits import Handler, gone, run

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = SandboxLimits(memory_mb=512, cpu_s_per_block=5, wall_s_per_block=20, max_output_chars=4000,
                       max_batch_bytes=1_000_000, max_run_bytes=5_000_000)
LOST_VARIABLES = "every variable, function and import defined so far was lost"
# Code whose generators raise while Python closes them: the interpreter can only ignore (and report) that.
RAISING_GENERATORS = """
def raising():
    try:
        yield 1
    finally:
        raise ValueError('x' * 1000 + '\\nINFO:     127.0.0.1:1 - "POST /admin HTTP/1.1" 200 OK\\n')
for _ in range(40):
    generator = raising()
    next(generator)
    del generator
print('done')
"""


class Recorder(Handler):
    """Records the prompts that reach it, and refuses prompts over `limit` characters."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.limit = limit

    def prompt_refusals(self, chars: list[int], model: str | None) -> list[str | None]:
        limit = self.limit
        return [f"Error: over {limit} characters" if limit is not None and count > limit else None
                for count in chars]

    async def llm_query(self, prompts: list[Prompt], model: str | None) -> list[str]:
        texts = [await prompt.text for prompt in prompts]
        self.batches.append(texts)
        return [f"answer {len(text)}" for text in texts]

    async def rlm_query(self, prompt: str, context: Any) -> str:
        self.batches.append([prompt, repr(context)])
        return "nested"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    pool = SandboxPool(LIMITS, PoolLimits(warm_workers=2))
    await pool.start()
    yield pool
    await pool.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def session(pool: SandboxPool) -> AsyncIterator[SandboxSession]:
    session = await pool.session("the context")
    yield session
    await session.close()


# Texts crossing from the worker


async def test_prompts_the_handler_refuses_are_never_read(session: SandboxSession) -> None:
    handler = Recorder(limit=1000)
    result = await run(session, "answers = llm_query_batched(['a' * 5000, 'short', 'b' * 20_000_000])\n"
                                "print(answers)", handler)
    assert result.outcome == "ok", result.output
    assert handler.batches == [["short"]]  # the two long prompts never crossed
    assert "['Error: over 1000 characters', 'answer 5', 'Error: over 1000 characters']" in result.output


async def test_a_prompt_larger_than_a_wave_is_refused_unread(session: SandboxSession) -> None:
    handler = Recorder()
    result = await run(session, "print(llm_query('x' * 2_000_000))", handler)
    assert handler.batches == []
    assert "Error: this prompt is 2,000,000 bytes; the proxy takes at most 1,000,000 bytes for one" in (
        result.output)


async def test_a_batch_larger_than_a_wave_goes_out_in_waves_in_order(session: SandboxSession) -> None:
    handler = Recorder()
    result = await run(session, "answers = llm_query_batched(['é' * 200_000, 'b' * 400_000, 'c' * 400_000, "
                                "'d' * 10])\nprint(answers)", handler)
    # UTF-8 sizes: 400,000 + 400,000 bytes fill the first wave of at most 1,000,000; then the rest.
    assert [[len(prompt) for prompt in batch] for batch in handler.batches] == [[200_000, 400_000],
                                                                               [400_000, 10]]
    assert "['answer 200000', 'answer 400000', 'answer 400000', 'answer 10']" in result.output


async def test_a_run_sends_at_most_its_allowance(pool: SandboxPool) -> None:
    session = await pool.session("x")
    try:
        handler = Recorder()
        result = await run(session, "answers = [llm_query('x' * 900_000) for _ in range(7)]\n"
                                    "print([a[:60] for a in answers])", handler)
    finally:
        await session.close()
    assert len(handler.batches) == 5  # 5 x 900,000 bytes fit the 5,000,000 of the run; 6 do not
    assert result.output.count("Error: this run has sent 4,500,000 bytes to sub-calls") == 2


async def test_a_nested_run_is_refused_by_size_before_its_context_is_read(session: SandboxSession) -> None:
    handler = Recorder()
    result = await run(session, "print(rlm_query('q', ['B' * 400_000] * 3)[:120])", handler)
    assert handler.batches == []
    assert "Error: this nested run's prompt and context is 1,200,01" in result.output
    small = await run(session, "print(rlm_query('q', {'k': [1, 'two']}))", handler)
    assert small.output == "nested\n" and handler.batches == [["q", """'{"k":[1,"two"]}'"""]]


async def test_lone_surrogates_cross_as_replacement_characters(session: SandboxSession) -> None:
    handler = Recorder()
    result = await run(session, "print(chr(0xd800), 'x')\nllm_query('a' + chr(0xdfff))\n"
                                "rlm_query('q', chr(0xd800))\nFINAL(chr(0xdc00))", handler)
    assert result.outcome == "ok" and not result.worker_restarted
    assert result.output == "\ufffd x\n"
    assert result.final is not None and result.final.text == "\ufffd"
    assert handler.batches == [["a\ufffd"], ["q", "'\ufffd'"]]


async def test_answers_over_the_limit_are_errors_for_the_code(session: SandboxSession) -> None:
    result = await run(session, f"big = 'A' * {MAX_ANSWER_CHARS + 1}\nFINAL(big)")
    assert result.outcome == "error" and not result.worker_restarted and result.final is None
    assert f"FINAL: the answer has {MAX_ANSWER_CHARS + 1:,} characters" in result.output
    value, problem = await session.resolve_variable("big")
    assert value is None and problem is not None and "FINAL_VAR(big): the answer has" in problem


# The worker's output


async def test_nothing_a_block_does_reaches_the_parents_output(capfd: pytest.CaptureFixture[str]) -> None:
    pool = SandboxPool(LIMITS, PoolLimits(warm_workers=1))  # spawned now, while capfd holds fds 1 and 2
    await pool.start()
    try:
        session = await pool.session("the context")
        ignored = await session.execute(RAISING_GENERATORS, Handler())
        debug = await session.execute("import re\nre.compile('(a|b)*c' * 50, re.RegexFlag(128))", Handler())
        crash = await session.execute("t = ()\nfor _ in range(1_000_000):\n    t = (t,)\nhash(t)", Handler())
        await session.close()
    finally:
        await pool.aclose()
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert ignored.outcome == "ok" and ignored.output.endswith("done\n")
    assert ignored.output.count("[An exception was ignored during cleanup: ValueError: xxx") == 5
    assert len(ignored.output) < 2000
    assert debug.outcome == "error" and "re.DEBUG is not available in the sandbox" in debug.output
    assert crash.outcome == "killed"


async def test_a_crash_is_a_note_with_the_line_and_the_session_goes_on(session: SandboxSession) -> None:
    await run(session, "kept = 1")
    for code, line in [("t = ()\nfor _ in range(1_000_000):\n    t = (t,)\nprint(hash(t))", 4),
                       ("it = iter([1])\nfor _ in range(1_000_000):\n    it = map(abs, it)\nnext(it)", 4)]:
        crashed_pid = session.pid
        crashed = await run(session, code)
        assert crashed.outcome == "killed" and crashed.worker_restarted, crashed.output
        assert "the code crashed the Python interpreter (SIGSEGV) at <block" in crashed.output
        assert f", line {line}." in crashed.output and LOST_VARIABLES in crashed.output
        after = await run(session, "print(len(context))")
        assert (after.outcome, after.output) == ("ok", "11\n")
        assert crashed_pid is not None and await gone({crashed_pid})  # reaped: nothing half-dead is left


# Host details


async def test_codecs_that_were_not_loaded_are_unknown_encodings(session: SandboxSession) -> None:
    result = await run(session, "print('ж'.encode('cp1251'), 'ж'.encode('koi8-r'))\n'x'.encode('zlib_codec')")
    assert result.output.startswith("b'\\xe6' b'\\xd6'\n")
    assert "LookupError: unknown encoding: zlib_codec" in result.output
    assert "/" not in result.output.split("LookupError")[1]


async def test_host_paths_are_redacted_from_what_the_model_sees(session: SandboxSession) -> None:
    path = f"{sys.prefix}/lib/module.py"
    result = await run(session, f"print({path!r})\nraise OSError(2, 'No such file', {path!r})")
    assert sys.prefix not in result.output
    assert result.output.startswith("<python>/lib/module.py\n")
    assert "FileNotFoundError: [Errno 2] No such file: '<python>/lib/module.py'" in result.output


# What sessions share


async def test_the_byte_budget_grants_in_arrival_order_and_survives_cancellation() -> None:
    budget = ByteBudget(100)
    order: list[str] = []

    async def holder(name: str, size: int, release: asyncio.Event) -> None:
        async with budget.hold(size):
            order.append(name)
            await release.wait()

    first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(holder("a", 70, first))
    await asyncio.sleep(0)
    b = asyncio.create_task(holder("b", 50, second))  # must wait for a
    c = asyncio.create_task(holder("c", 20, third))  # would fit, but waits its turn behind b
    await asyncio.sleep(0.01)
    assert order == ["a"] and budget.used == 70
    b.cancel()
    await asyncio.sleep(0.01)
    assert order == ["a", "c"] and budget.used == 90
    first.set()
    third.set()
    await asyncio.gather(a, c)
    assert budget.used == 0
    with pytest.raises(ValueError):
        async with budget.hold(101):
            pass


async def test_waves_group_consecutive_texts_within_the_wave_size() -> None:
    transfers = Transfers(SandboxLimits(max_batch_bytes=10, max_run_bytes=100), ByteBudget(8))
    sizes = [3, 4, 2, 8, 1]
    assert list(transfers.waves([0, 1, 2, 3, 4], sizes)) == [[0, 1], [2], [3], [4]]
    assert transfers.take(9) is not None  # larger than a wave (the shared budget caps it at 8)
    assert transfers.take(8) is None


async def test_workers_are_capped_and_a_session_waits_then_gives_up() -> None:
    pool = SandboxPool(LIMITS, PoolLimits(warm_workers=1, max_workers=2, worker_wait_s=0.5))
    await pool.start()
    try:
        first, second = await pool.session("a"), await pool.session("b")
        assert pool.status()["workers"] == 2
        with pytest.raises(SandboxUnavailableError, match="all 2 sandbox workers are busy"):
            await pool.session("c")
        waiting = asyncio.create_task(pool.session("d"))
        await asyncio.sleep(0.1)
        await first.close()
        third = await waiting  # got the slot the closed session freed
        assert (await third.execute("print(context)", Handler())).output == "d\n"
        assert pool.status()["workers"] == 2
        await asyncio.gather(second.close(), third.close())
    finally:
        await pool.aclose()
    assert pool.status()["workers"] == 0
