"""Sandbox overheads: what running code in a separate, limited worker process costs the RLM loop.

    .venv/bin/python -m bench.sandbox [--blocks N] [--starts N] [--context-mb MB]
    .venv/bin/python -m bench.sandbox --seccomp-cost [--blocks N] [--starts N]

Measures, with real worker processes:
  - per-block overhead: `execute("x = 1")` round trips on a warm session (target: p50 under 5 ms);
  - session start with a large str context taken from a warm pool (target: 100 MB in under 0.5 s);
  - a block making 3 sequential llm_query calls against a handler that answers at once, next to the same
    block without the calls: the difference is what the bridge adds per sub-call.
With --seccomp-cost, what the workers' seccomp filter costs, with and without it side by side in one run
(interleaved, so both see the same machine): worker start-up (spawn to ready), a cold session (start, then
load a small context: the filter's second stage), and per-block times of a trivial block and of one making
hundreds of memory system calls. "Without" is a worker whose libseccomp binding cannot be imported, as on a
host without libseccomp.
Figures are printed, not asserted: these machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sandbox import PoolLimits, Prompt, SandboxLimits, SandboxPool
from sandbox.bridge import BOOT, PACKAGE_DIR, WORKER_COMMAND, WorkerProcess

WAIT_FOR_WARM_S = 30.0
WITHOUT_SECCOMP = (sys.executable, "-I", "-c", "import sys; sys.modules['pyseccomp'] = None; " + BOOT,
                   PACKAGE_DIR)
FILTER_VARIANTS = {"with the filter": (WORKER_COMMAND, "seccomp"), "without": (WITHOUT_SECCOMP, "namespaces")}
COST_BLOCKS = {'execute("x = 1")': "x = 1",
               "300 x 1 MB allocations": "for _ in range(300):\n    block = bytearray(2**20)\n    del block"}
ROUND = 25  # blocks per variant before switching to the other


class InstantHandler:
    def prompt_refusals(self, chars: list[int], model: str | None) -> list[str | None]:
        return [None] * len(chars)

    async def llm_query(self, prompts: list[Prompt], model: str | None) -> list[str]:
        return ["answer"] * len(prompts)

    async def rlm_query(self, prompt: str, context: Any) -> str:
        return "answer"


async def timed(action: Callable[[], Awaitable[Any]], times: int) -> list[float]:
    """Seconds per call of `action`, `times` times."""
    seconds = []
    for _ in range(times):
        began = time.perf_counter()
        await action()
        seconds.append(time.perf_counter() - began)
    return seconds


def summary(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (f"p50 {statistics.median(ordered) * 1000:8.2f} ms   p95 {p95 * 1000:8.2f} ms   "
            f"max {ordered[-1] * 1000:8.2f} ms   (n={len(ordered)})")


async def wait_until_warm(pool: SandboxPool, count: int) -> None:
    deadline = time.monotonic() + WAIT_FOR_WARM_S
    while pool.status()["warm"] < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not refill: {pool.status()}")
        await asyncio.sleep(0.05)


async def per_block(pool: SandboxPool, blocks: int) -> dict[str, list[float]]:
    handler = InstantHandler()
    session = await pool.session("a small context")
    try:
        await timed(lambda: session.execute("x = 1", handler), 20)  # warm-up
        results = {
            'execute("x = 1")': await timed(lambda: session.execute("x = 1", handler), blocks),
            "3 sequential llm_query": await timed(lambda: session.execute(
                "a = llm_query('a')\nb = llm_query('b')\nc = llm_query('c')", handler), blocks),
            "llm_query_batched of 3": await timed(lambda: session.execute(
                "answers = llm_query_batched(['a', 'b', 'c'])", handler), blocks),
        }
    finally:
        await session.close()
    return results


async def session_starts(pool: SandboxPool, context_mb: int, starts: int) -> list[float]:
    context = "x" * (context_mb * 2**20)
    seconds = []
    for _ in range(starts):
        await wait_until_warm(pool, 2)  # taken from a warm pool, with no refill competing for the CPU
        began = time.perf_counter()
        session = await pool.session(context)
        seconds.append(time.perf_counter() - began)
        result = await session.execute("n = len(context)\nprint(n)", InstantHandler())
        if result.output.strip() != str(len(context)):
            raise RuntimeError(f"the context did not arrive whole: {result.output!r}")
        await session.close()
    return seconds


async def measure(args: argparse.Namespace) -> None:
    pool = SandboxPool(SandboxLimits(memory_mb=1024), PoolLimits(warm_workers=2))
    began = time.perf_counter()
    await pool.start()
    print(f"Pool start (2 warm workers, in parallel): {(time.perf_counter() - began) * 1000:.0f} ms")
    try:
        blocks = await per_block(pool, args.blocks)
        print(f"\nPer block, warm session, handler answering at once ({args.blocks} blocks each):")
        for name, seconds in blocks.items():
            print(f"  {name:<26}{summary(seconds)}")
        baseline = statistics.median(blocks['execute("x = 1")'])
        added = (statistics.median(blocks["3 sequential llm_query"]) - baseline) / 3
        print(f"  => each sequential llm_query adds about {added * 1000:.2f} ms (p50)")
        starts = await session_starts(pool, args.context_mb, args.starts)
        print(f"\nSession start with a {args.context_mb} MB str context from a warm pool:")
        print(f"  {'pool.session(context)':<26}{summary(starts)}")
        print(f"  each, in order: {', '.join(f'{s * 1000:.0f} ms' for s in starts)}")
    finally:
        await pool.aclose()
    print(f"\nThis machine has {os.cpu_count()} cores; the parent, the worker and any refill share them.")


async def seccomp_cost(args: argparse.Namespace) -> None:
    starts: dict[str, list[float]] = {name: [] for name in FILTER_VARIANTS}
    cold: dict[str, list[float]] = {name: [] for name in FILTER_VARIANTS}
    pools = {name: SandboxPool(SandboxLimits(memory_mb=1024), PoolLimits(warm_workers=0), command=command)
             for name, (command, _) in FILTER_VARIANTS.items()}
    for pool in pools.values():
        await pool.start()
    try:
        for _ in range(args.starts):
            for name, (command, isolation) in FILTER_VARIANTS.items():
                began = time.perf_counter()
                worker = await WorkerProcess.spawn(command)
                starts[name].append(time.perf_counter() - began)
                await worker.close()
                if worker.isolation != isolation:
                    raise RuntimeError(f"{name}: the worker reported {worker.isolation!r}")
                began = time.perf_counter()
                session = await pools[name].session("a small context")
                cold[name].append(time.perf_counter() - began)
                await session.close()
        blocks = await interleaved_blocks(pools, args.blocks)
    finally:
        for pool in pools.values():
            await pool.aclose()
    print(f"Seccomp filter cost, side by side ({args.starts} starts and {args.blocks} blocks per variant, "
          "interleaved):")
    rows = {"worker start (spawn to ready)": starts, "cold session (start + load)": cold,
            **{f"block: {name}": times for name, times in blocks.items()}}
    for row, times in rows.items():
        print(f"  {row}")
        for name in FILTER_VARIANTS:
            print(f"    {name:<17}{summary(times[name])}")
        ratio = statistics.median(times["with the filter"]) / statistics.median(times["without"])
        print(f"    => with / without (p50): {ratio:.3f}")
    print(f"\nThis machine has {os.cpu_count()} cores.")


async def interleaved_blocks(pools: dict[str, SandboxPool], blocks: int) -> dict[str, dict[str, list[float]]]:
    """Per-block seconds of each COST_BLOCKS entry in a warm session of each pool, alternating in rounds."""
    handler = InstantHandler()
    sessions = {name: await pool.session("a small context") for name, pool in pools.items()}
    times: dict[str, dict[str, list[float]]] = {block: {name: [] for name in pools} for block in COST_BLOCKS}
    try:
        for session in sessions.values():
            await timed(lambda session=session: session.execute("x = 1", handler), 20)  # warm-up
        for _ in range(max(1, blocks // ROUND)):
            for block, code in COST_BLOCKS.items():
                for name, session in sessions.items():
                    times[block][name] += await timed(lambda s=session, c=code: s.execute(c, handler), ROUND)
    finally:
        for session in sessions.values():
            await session.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=500, help="blocks per per-block measurement")
    parser.add_argument("--starts", type=int, default=5, help="session starts with the large context")
    parser.add_argument("--context-mb", type=int, default=100, help="size of the large str context")
    parser.add_argument("--seccomp-cost", action="store_true",
                        help="measure the seccomp filter: with and without it, side by side")
    args = parser.parse_args(argv)
    asyncio.run(seccomp_cost(args) if args.seccomp_cost else measure(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
