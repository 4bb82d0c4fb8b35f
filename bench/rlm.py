"""RLM engine figures, measured side by side in one run and printed as ratios to their targets.

    .venv/bin/python -m bench.rlm [--latency-ms 300] [--repeats 5] [--json out.json]

Each line shows the measured figure, its bound (the target) and their ratio: the target is met below 1.

1. Critical path: with the mock model at a fixed latency L, an RLM needle run is root reply, one wave of
   concurrent sub-calls, root reply: 3 L. Its wall time, seen by the client, within 15% of 3 L.
2. The mode decision for a 40 MB prompt, beyond parsing the body (target < 100 ms).
3. Per-block sandbox overhead: `x = 1` round trips in a warm session, p50 (target < 5 ms).
4. Run start with a 100 MB context: a session from the warm pool, context loaded (target < 0.5 s).
5. Each sequential `llm_query` of a block, against a call to the mock made directly (target < 1 ms).
6. The proxy's peak RSS growth while serving a 40 MB prompt in RLM mode (target < 2.5x the prompt).

With `--streaming-gain` it measures what streaming execution saves: a 1 MB needle run against two proxies
in front of one mock that writes at `--tokens-per-second` (80), one streaming root replies (each ```repl
block runs once its closing fence arrives) and one reading them whole (`rlm.stream_root_replies: false`),
in alternating rounds; for a root model that stops after its code and for one that writes on (about 120
tokens) after it, as real models often do.

With `--record-cost` it measures instead what a run's trajectory record costs: a 10 MB needle run against
two proxies in front of one mock, one recording runs and one with `trajectories.enabled: false`, in
alternating rounds: the client's wall time (median) and the proxy's peak RSS growth per run (median), side
by side with their ratios, and the size of the record.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.passthrough import DIRECT, KEY, Target, free_port, run, sequential, show, start, stop
from bench.sandbox import per_block, session_starts
from proxy.config import RLMSettings
from proxy.mock_policy import needle_prompt
from proxy.model_facts import ModelFacts
from proxy.registry import Deployment
from proxy.routing import ModeRouter
from sandbox import PoolLimits, SandboxLimits, SandboxPool

MB = 1024 * 1024
WINDOW_TOKENS = 32_000
NEEDLE_KEY, NEEDLE_VALUE = "bench-key", "8675309"
NO_CACHE = {"cache-control": "no-cache, no-store"}  # a cached replay would not call the model at all


CLI = [sys.executable, "-m", "proxy.cli"]


def start_mock(procs: list[subprocess.Popen[bytes]], tmp: Path, latency_ms: float,
               tokens_per_second: float | None = None) -> str:
    """The mock model at `latency_ms` a call (writing at `tokens_per_second` if given); its URL."""
    port = free_port()
    pace = [] if tokens_per_second is None else ["--tokens-per-second", str(tokens_per_second)]
    return start(procs, [*CLI, "mock-upstream", "--port", str(port), "--latency-ms", str(latency_ms),
                         "--context-window-tokens", str(WINDOW_TOKENS), *pace], port, "/v1/models",
                 tmp / f"mock-{latency_ms}.log")


def start_stack(procs: list[subprocess.Popen[bytes]], tmp: Path, latency_ms: float,
                env: dict[str, str] | None = None) -> str:
    """The mock at `latency_ms` and the proxy in front of it (`env` for the proxy); the proxy's URL."""
    return start_proxy(procs, tmp, start_mock(procs, tmp, latency_ms), latency_ms, env)


def start_proxy(procs: list[subprocess.Popen[bytes]], tmp: Path, mock: str, latency_ms: float,
                env: dict[str, str] | None = None, name: str = "",
                server: dict[str, Any] | None = None) -> str:
    """The proxy in front of the mock at `mock` (`server`: more of its server settings); its URL."""
    config = tmp / f"proxy-{latency_ms}{name}.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "mock", "litellm_params": {
            "model": "openai/mock-model", "api_base": mock + "/v1", "api_key": "sk-anything"},
            "model_info": {"max_input_tokens": WINDOW_TOKENS}}],
        "server": {"master_key": KEY, **(server or {})},
        "rlm": {"subcall_concurrency": 64},
        "upstream": {"timeout_s": 120}}))
    port = free_port()
    serve = [*CLI, "serve", "--config", str(config), "--port", str(port), "--log-level", "warning"]
    return start(procs, serve, port, "/readyz", tmp / f"proxy-{latency_ms}{name}.log", env=env)


def rlm_request(proxy: str, prompt: str) -> tuple[float, dict[str, Any]]:
    """The seconds from sending the request to its answer, and the answer. The client is made before the
    clock starts: making one (httpx loads its TLS certificates) takes 20-50 ms, which is not the proxy's."""
    body = orjson.dumps({"model": "mock", "messages": [{"role": "user", "content": prompt}]})
    with httpx.Client(timeout=600) as client:
        began = time.perf_counter()
        response = client.post(proxy + "/v1/chat/completions", content=body,
                               headers={"authorization": f"Bearer {KEY}", "x-rlm-mode": "on", **NO_CACHE})
        elapsed = time.perf_counter() - began
    response.raise_for_status()
    return elapsed, response.json()


def row(what: str, measured: float, bound: float, unit: str, scale: float = 1.0) -> list[str]:
    digits = 2 if bound * scale < 10 else 0
    return [what, f"{measured * scale:.{digits}f} {unit}", f"{bound * scale:.{digits}f} {unit}",
            f"{measured / bound:.3f}"]


def critical_path(proxy: str, latency_s: float, sizes: list[int], repeats: int) -> list[list[str]]:
    rows = []
    for size in sizes:
        prompt = needle_prompt(size, NEEDLE_KEY, NEEDLE_VALUE)
        rlm_request(proxy, prompt)  # warm-up
        walls = []
        for _ in range(repeats):
            wall, body = rlm_request(proxy, prompt)
            assert body["choices"][0]["message"]["content"] == NEEDLE_VALUE, body
            walls.append(wall)
        wall = statistics.median(walls)
        subcalls = body["rlm"]["subcalls"]
        rows.append(row(f"RLM run wall time, {size / MB:.0f} MB needle, {subcalls} sub-calls in one wave; "
                        f"bound 1.15 x 3 x {latency_s * 1e3:.0f} ms", wall, 1.15 * 3 * latency_s, "ms", 1e3))
    return rows


def run_record(proxy: str, body: dict[str, Any]) -> bytes:
    """The record of the run that answered with `body`, as GET /v1/rlm/runs/{id} gives it."""
    response = httpx.get(f"{proxy}/v1/rlm/runs/{body['rlm']['run_id']}", timeout=30,
                         headers={"authorization": f"Bearer {KEY}"})
    response.raise_for_status()
    return response.content


def subcall_overhead(proxy: str, mock: str, calls: int) -> list[str]:
    """What the proxy adds to each sequential `llm_query`: a block making `calls` of them one after another
    (its duration, from the run's record) against as many calls made to the mock directly."""
    code = f"for number in range({calls}):\n    llm_query(f'hello {{number}}')\n"
    prompt = "[[exec:" + base64.b64encode(code.encode()).decode() + "]] Run it."
    _, body = rlm_request(proxy, prompt)
    block = orjson.loads(run_record(proxy, body))["iterations"][0]["blocks"][0]
    assert block["outcome"] == "ok" and len(block["subcalls"]) == calls, block
    direct = run(sequential([Target(DIRECT, mock, "mock-model")], calls, calls))[DIRECT]
    added = block["duration_s"] / calls - statistics.median(direct)
    return row(f"each sequential llm_query, over a direct call to the mock ({calls} in one block)",
               added, 0.001, "ms", 1e3)


async def decision_time() -> list[str]:
    prompt = "lorem ipsum dolor sit amet " * (40 * MB // 27)
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]})
    began = time.perf_counter()
    messages = orjson.loads(raw)["messages"]
    parsed = time.perf_counter() - began
    router = ModeRouter(RLMSettings(), ModelFacts())
    began = time.perf_counter()
    decision = await router.decide(None, "m", messages, Deployment("m", "openai/m", max_input_tokens=128_000))
    decided = time.perf_counter() - began
    assert decision.mode == "rlm"
    return row(f"mode decision, {len(raw) / MB:.0f} MB prompt (parsing it took {parsed * 1e3:.0f} ms)",
               decided, 0.1, "ms", 1e3)


async def sandbox_figures(blocks: int) -> list[list[str]]:
    pool = SandboxPool(SandboxLimits(memory_mb=2048), PoolLimits(warm_workers=2))
    await pool.start()
    try:
        overhead = statistics.median((await per_block(pool, blocks))['execute("x = 1")'])
        started = statistics.median(await session_starts(pool, 100, 3))
    finally:
        await pool.aclose()
    return [row(f"sandbox block overhead, p50 of {blocks} blocks", overhead, 0.005, "ms", 1e3),
            row("run start, 100 MB context (p50 of 3)", started, 0.5, "ms", 1e3)]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_memory(proxy: str, pid: int) -> list[str]:
    prompt = needle_prompt(40 * MB, NEEDLE_KEY, NEEDLE_VALUE)
    rlm_request(proxy, needle_prompt(MB, NEEDLE_KEY, NEEDLE_VALUE))  # allocator and caches warm
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = status_kb(pid, "VmRSS")
    rlm_request(proxy, prompt)
    growth = (status_kb(pid, "VmHWM") - before) * 1024
    return row(f"proxy peak RSS growth, {len(prompt) / MB:.0f} MB prompt in RLM mode (idle RSS "
               f"{before // 1024} MB); bound 2.5x the prompt", growth, 2.5 * len(prompt), "MB", 1 / MB)


@dataclass
class Runs:
    """One proxy's runs of one prompt in a side-by-side comparison."""

    walls: list[float] = field(default_factory=list)
    growths: list[float] = field(default_factory=list)  # peak RSS growth per run, bytes
    last: dict[str, Any] = field(default_factory=dict)  # the last response's body


def start_proxies(tmp: Path, procs: list[subprocess.Popen[bytes]], mock: str,
                  envs: dict[str, dict[str, str]]) -> dict[str, tuple[str, int]]:
    """A proxy in front of `mock` per `envs` entry: name -> (URL, pid)."""
    proxies = {}
    for name, env in envs.items():
        proxies[name] = (start_proxy(procs, tmp, mock, 0, env=env, name=name), procs[-1].pid)
    return proxies


def alternate(proxies: dict[str, tuple[str, int]], prompt: str, rounds: int) -> dict[str, Runs]:
    """Each proxy answers `prompt` once to warm up, then `rounds` times, taking turns to go first."""
    runs = {name: Runs() for name in proxies}
    for url, _ in proxies.values():
        rlm_request(url, prompt)  # allocator, caches and workers warm
    for turn in range(rounds):
        for name in list(proxies) if turn % 2 == 0 else list(reversed(proxies)):
            (url, pid), measured = proxies[name], runs[name]
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            before = status_kb(pid, "VmRSS")
            wall, measured.last = rlm_request(url, prompt)
            assert measured.last["choices"][0]["message"]["content"] == NEEDLE_VALUE, measured.last
            measured.growths.append((status_kb(pid, "VmHWM") - before) * 1024)
            measured.walls.append(wall)
    return runs


def record_cost(tmp: Path, procs: list[subprocess.Popen[bytes]], rounds: int) -> list[list[str]]:
    proxies = start_proxies(tmp, procs, start_mock(procs, tmp, 0),
                            {name: {"RLM_PROXY_TRAJECTORIES__ENABLED": enabled}
                             for name, enabled in (("recording", "true"), ("off", "false"))})
    runs = alternate(proxies, needle_prompt(10 * MB, NEEDLE_KEY, NEEDLE_VALUE), rounds)
    on, off = runs["recording"], runs["off"]
    record = run_record(proxies["recording"][0], on.last)
    on_wall, off_wall = statistics.median(on.walls), statistics.median(off.walls)
    on_rss, off_rss = statistics.median(on.growths), statistics.median(off.growths)
    return [["10 MB needle run, wall time (median)", f"{on_wall * 1e3:.0f} ms", f"{off_wall * 1e3:.0f} ms",
             f"{on_wall / off_wall:.3f}"],
            ["proxy peak RSS growth per run (median)", f"{on_rss / MB:.1f} MB", f"{off_rss / MB:.1f} MB",
             f"{on_rss / off_rss:.3f}" if off_rss else "-"],
            ["the run's record (GET /v1/rlm/runs/{id})", f"{len(record) / 1024:.1f} KiB", "-", "-"]]


def streaming_gain(tmp: Path, procs: list[subprocess.Popen[bytes]], rounds: int, latency_ms: float,
                   tokens_per_second: float) -> list[list[str]]:
    """Root replies streamed (each block run at its closing fence) against read whole, with a mock that
    writes at `tokens_per_second`: a model that stops at its block, and one that writes on after it."""
    proxies = start_proxies(tmp, procs, start_mock(procs, tmp, latency_ms, tokens_per_second),
                            {name: {"RLM_PROXY_RLM__STREAM_ROOT_REPLIES": streamed}
                             for name, streamed in (("streamed", "true"), ("whole", "false"))})
    rows = []
    for what, policy in (("stops after its code", ""), ("writes on after its code", " [[policy:explains]]")):
        runs = alternate(proxies, needle_prompt(MB, NEEDLE_KEY, NEEDLE_VALUE) + policy, rounds)
        streamed, whole = (statistics.median(runs[name].walls) for name in ("streamed", "whole"))
        rows.append([f"1 MB needle run, root model {what}", f"{streamed * 1e3:.0f} ms",
                     f"{whole * 1e3:.0f} ms", f"{streamed / whole:.3f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=500)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--record-cost", action="store_true", help="what recording a run costs (see above)")
    parser.add_argument("--streaming-gain", action="store_true",
                        help="root replies streamed against read whole (see above)")
    parser.add_argument("--tokens-per-second", type=float, default=80.0, help="the mock's writing speed")
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-rlm-") as tmp:
        if args.record_cost or args.streaming_gain:
            try:
                if args.record_cost:
                    title, columns = ("A run's trajectory record: recording on and off, side by side",
                                      ["what", "recording", "off", "ratio"])
                    rows = record_cost(Path(tmp), procs, args.repeats)
                else:
                    title, columns = (f"Streaming execution at {args.tokens_per_second:g} tokens/s and "
                                      f"{args.latency_ms:g} ms a call: wall time (median), side by side",
                                      ["what", "streamed", "read whole", "ratio"])
                    rows = streaming_gain(Path(tmp), procs, args.repeats, args.latency_ms,
                                          args.tokens_per_second)
            finally:
                for proc in reversed(procs):
                    stop(proc)
            show(title, columns, rows)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))
            return 0
        try:
            slow = start_stack(procs, Path(tmp), args.latency_ms)
            rows += critical_path(slow, args.latency_ms / 1000, [MB, 4 * MB], args.repeats)
            rows.append(asyncio.run(decision_time()))
            rows += asyncio.run(sandbox_figures(args.blocks))
            mock = start_mock(procs, Path(tmp), 0)
            fast = start_proxy(procs, Path(tmp), mock, 0)
            for _ in range(2):  # the first warms the connections up
                overhead = subcall_overhead(fast, mock, 200)
            rows.append(overhead)
            rows.append(peak_memory(fast, procs[-1].pid))
        finally:
            for proc in reversed(procs):
                stop(proc)
    show("RLM engine: measured against the target bound", ["what", "measured", "bound", "ratio"], rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
