"""RLM implementations side by side on the same scripted model: rlm-proxy and the official `rlms` library.

    .venv/bin/python -m bench.peers [--latencies-ms 300 50] [--sizes-mb 1 4 10] [--rounds 3] [--json out]

Both run against one mock model server (`rlm-proxy mock-upstream`) at a fixed latency per call, which plays
the root and the sub-model for both (it reads each one's prompts and answers in each one's protocol:
proxy/mock_policy.py), on the same tasks: needles of 1, 4 and 10 MB and a word count, with the same sub-call
concurrency (64). Rounds alternate between the systems. A run's critical path is the model latency it cannot
avoid: a root reply with code, its sub-calls in waves of 64 (one wave up to 64 chunks of ~100 KB, two for a
10 MB needle), a root reply with the answer. Printed per latency, task and system: successes, median wall
time, wall / critical path, and peak RSS (rlm-proxy: its server process and live sandbox workers; rlms: its
whole process, which runs the REPL in process). rlm-proxy's wall time is the client's, from the first byte
sent (the prompt travels over HTTP); rlms' is the `completion()` call alone.

A third row per task, the floor, makes the run's model calls and nothing else: its two root calls and its
sub-calls (prompts of the sizes rlm-proxy's run sent, cut from the task's text), at the same concurrency,
from a bare aiohttp client straight to the mock. It is what any implementation pays for its calls on this
machine, where the HTTP stacks and the mock share the cores with it: `wall / floor` is what each system adds
beyond that.

`rlms` (pinned below) is installed from PyPI into its own virtualenv under .cache/peers on first use. DSPy's
RLM (`dspy.RLM`) is not included: it runs the model's code in Deno with Pyodide, which it fetches from the
network at run time; not tried offline here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.passthrough import descendants, show, stop
from bench.rlm import MB, rlm_request, run_record, start_mock, start_proxy, status_kb
from proxy.mock_policy import FILLER, needle_prompt
from proxy.upstream import KEEPALIVE_S

ROOT = Path(__file__).resolve().parent.parent
RLMS_VERSION = "0.1.3"
RLMS_VENV = ROOT / ".cache" / "peers" / "rlms"
RUNNER = Path(__file__).resolve().parent / "peers_rlms.py"
SUBCALL_CONCURRENCY = 64
NEEDLE_KEY, NEEDLE_VALUE = "peer-key", "8675309"
COUNT_WORD, COUNT_TIMES = "zebra", 37
PROXY, RLMS, FLOOR = "rlm-proxy", f"rlms {RLMS_VERSION}", "floor: the calls alone"


@dataclass(frozen=True)
class Task:
    name: str
    prompt: str
    question: str
    expected: str


@dataclass
class Result:
    walls: list[float] = field(default_factory=list)
    successes: int = 0
    runs: int = 0
    peak_mb: float | None = 0.0
    subcalls: int = 0  # of the task, as rlm-proxy counted them (both systems run the same script)
    prompt_chars: list[int] = field(default_factory=list)  # of the sub-calls, in rlm-proxy's last run


def rlms_python() -> Path:
    """The library's interpreter, installed on first use."""
    python = RLMS_VENV / "bin" / "python"
    if not python.exists():
        print(f"bench.peers: installing rlms=={RLMS_VERSION} into {RLMS_VENV} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(RLMS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"rlms=={RLMS_VERSION}"], check=True)
    return python


def counting_prompt(chars: int) -> Task:
    """FILLER lines with a sentence holding the word on COUNT_TIMES lines spread through the text."""
    lines = [FILLER] * (chars // len(FILLER))
    for number in range(COUNT_TIMES):
        lines[(number * len(lines)) // COUNT_TIMES] = f"A {COUNT_WORD} crossed the road.\n"
    question = f"How many times does the word '{COUNT_WORD}' appear in the text? Answer with a single number."
    return Task(f"count, {chars // MB} MB", "".join(lines) + question, question, str(COUNT_TIMES))


def tasks(sizes_mb: list[int]) -> list[Task]:
    found = []
    for size in sizes_mb:
        prompt = needle_prompt(size * MB, NEEDLE_KEY, NEEDLE_VALUE)
        found.append(Task(f"needle, {size} MB", prompt, prompt.rsplit("\n", 1)[1], NEEDLE_VALUE))
    found.append(counting_prompt(min(sizes_mb) * MB))
    return found


class RlmsRunner:
    """The library in its own interpreter, fed one task at a time."""

    def __init__(self, mock: str, tmp: Path) -> None:
        self._tmp = tmp
        self._process = subprocess.Popen(
            # -I: not the script's directory on sys.path, where bench/rlm.py would shadow the library's `rlm`.
            [str(rlms_python()), "-I", str(RUNNER), mock + "/v1", "mock-model", str(SUBCALL_CONCURRENCY)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, task: Task) -> dict[str, Any]:
        prompt_file = self._tmp / "rlms-prompt.txt"
        prompt_file.write_text(task.prompt)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps({"prompt_file": str(prompt_file), "question": task.question})
                                  + "\n")
        self._process.stdin.flush()
        return json.loads(self._process.stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # it may have died: its error went to stderr
            if self._process.stdin is not None:
                self._process.stdin.close()
        self._process.wait(30)


class FloorRunner:
    """A run's model calls made straight to the mock, on one event loop and connection pool kept across
    runs (as the proxy keeps its own)."""

    def __init__(self, mock: str) -> None:
        self._url = mock + "/v1/chat/completions"
        self._loop = asyncio.Runner()
        self._session = self._loop.run(self._open())

    async def _open(self) -> aiohttp.ClientSession:
        # Idle connections closed before the server does, as the proxy's own pool does.
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=SUBCALL_CONCURRENCY,
                                                                    keepalive_timeout=KEEPALIVE_S))

    def run(self, task: Task, prompt_chars: list[int]) -> float:
        return self._loop.run(self._run(task, prompt_chars))

    async def _run(self, task: Task, prompt_chars: list[int]) -> float:
        head = task.question + "\n\nText:\n"
        prompts, start = [], 0
        for chars in prompt_chars:
            piece = max(0, chars - len(head))
            prompts.append(head + task.prompt[start:start + piece])
            start += piece
        began = time.perf_counter()
        await self._call("Write code to look at the context.")
        await asyncio.gather(*(self._call(prompt) for prompt in prompts))  # the pool allows 64 at once
        await self._call("Give the answer.")
        return time.perf_counter() - began

    async def _call(self, prompt: str) -> None:
        body = orjson.dumps({"model": "mock-model", "messages": [{"role": "user", "content": prompt}]})
        async with self._session.post(self._url, data=body, headers={"content-type": "application/json"}
                                      ) as response:
            response.raise_for_status()
            await response.read()

    def close(self) -> None:
        self._loop.run(self._session.close())
        self._loop.close()


def tree_peak_mb(pid: int) -> float:
    """VmHWM of a process and its live descendants, in MB."""
    total = 0
    for member in descendants(pid):
        with contextlib.suppress(OSError):  # exited meanwhile
            total += status_kb(member, "VmHWM")
    return total / 1024


def measure(latency_ms: float, all_tasks: list[Task], rounds: int, tmp: Path) -> dict[str, dict[str, Result]]:
    procs: list[subprocess.Popen[bytes]] = []
    results = {task.name: {PROXY: Result(), RLMS: Result(), FLOOR: Result(peak_mb=None)}
               for task in all_tasks}
    runner: RlmsRunner | None = None
    floor: FloorRunner | None = None
    try:
        mock = start_mock(procs, tmp, latency_ms)
        proxy = start_proxy(procs, tmp, mock, latency_ms)
        proxy_pid = procs[-1].pid
        runner = RlmsRunner(mock, tmp)
        floor = FloorRunner(mock)
        for number in range(rounds):
            for task in all_tasks:
                # Alternate which system goes first, so that neither always runs on a warmer machine; the
                # floor makes the calls of rlm-proxy's run, after it.
                order = (PROXY, RLMS, FLOOR) if number % 2 == 0 else (RLMS, PROXY, FLOOR)
                proxied = results[task.name][PROXY]
                for system in order:
                    result = results[task.name][system]
                    if system == PROXY:
                        wall, body = rlm_request(proxy, task.prompt)
                        answer = body["choices"][0]["message"]["content"]
                        result.peak_mb = tree_peak_mb(proxy_pid)
                        result.subcalls = body["rlm"]["subcalls"]
                        result.prompt_chars = [call["prompt_chars"] for call in subcalls_of(
                            orjson.loads(run_record(proxy, body)))]
                    elif system == RLMS:
                        done = runner.run(task)
                        wall, answer, result.peak_mb = done["wall_s"], done["answer"], done["peak_mb"]
                    else:
                        wall, answer = floor.run(task, proxied.prompt_chars), task.expected
                    result.runs += 1
                    result.successes += str(answer).strip() == task.expected
                    result.walls.append(wall)
    finally:
        if runner is not None:
            runner.close()
        if floor is not None:
            floor.close()
        for proc in reversed(procs):
            stop(proc)
    return results


def subcalls_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The sub-calls of a run's record, in the order they were made."""
    return [call for iteration in record["iterations"] for block in iteration["blocks"]
            for call in block["subcalls"]]


def critical_calls(subcalls: int) -> int:
    """Model calls one after the other at best: a root reply with code, the sub-calls in waves of
    SUBCALL_CONCURRENCY, a root reply with the answer."""
    return 2 + math.ceil(subcalls / SUBCALL_CONCURRENCY)


def rows_for(latency_ms: float, results: dict[str, dict[str, Result]]) -> list[list[str]]:
    rows = []
    for task, systems in results.items():
        calls = critical_calls(systems[PROXY].subcalls)
        floor = statistics.median(systems[FLOOR].walls)
        for system, result in systems.items():
            wall = statistics.median(result.walls)
            rows.append([f"{latency_ms:.0f} ms", task, system, f"{result.successes}/{result.runs}",
                         f"{wall * 1000:.0f} ms", f"{wall / (calls * latency_ms / 1000):.2f} ({calls} calls)",
                         f"{wall / floor:.2f}",
                         "-" if result.peak_mb is None else f"{result.peak_mb:.0f} MB"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latencies-ms", type=float, nargs="+", default=[300.0, 50.0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    all_tasks = tasks(args.sizes_mb)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for latency_ms in args.latencies_ms:
            rows += rows_for(latency_ms, measure(latency_ms, all_tasks, args.rounds, Path(tmp)))
    show("RLM implementations on the same scripted model (critical path: root, sub-call waves, root)",
         ["latency", "task", "system", "ok", "wall p50", "wall / critical path", "wall / floor", "peak RSS"],
         rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
