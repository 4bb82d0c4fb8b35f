"""Passthrough overhead: what the proxy adds over calling the mock model server directly, per route.

    .venv/bin/python -m bench.passthrough [--requests N] [--concurrency C] [--with-litellm-proxy] [--otel]
                                          [--routes chat responses messages embeddings]

Targets: the mock directly, rlm-proxy on its fast path, rlm-proxy on the litellm path, and optionally
LiteLLM Proxy (started by bench/litellm_baseline.sh, or already running at --litellm-proxy-url); with --otel,
also rlm-proxy on its fast path with OpenTelemetry on, exporting every trace to a local OTLP/HTTP receiver
(bench.otlp_sink), beside the same proxy with it off.
Routes: /v1/chat/completions, /v1/responses and /v1/messages (both bridged to the mock's chat completions,
so their added latency is measured against the mock's chat completions) and /v1/embeddings. A target that
answers a route with 404 (not served there) is left out of that route, with a line saying so.
Under load, each target's own CPU time per request is read from /proc for its process tree (the mock's,
the proxy's, LiteLLM Proxy's when this script starts it), beside its requests per second: on 2 shared cores
the client and the mock take much of the CPU and squeeze the throughput ratio toward 1.
The client is a minimal HTTP/1.1 client on raw asyncio streams: an httpx.AsyncClient costs 0.3-0.5 ms per
request here, several times the mock's own service time, which would blur what is being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

KEY = "sk-bench"
DIRECT, FAST, SLOW = "direct (mock)", "rlm-proxy fast path", "rlm-proxy litellm path"
TRACED = "rlm-proxy fast path, OTel on"
LITELLM = "LiteLLM Proxy"
Latencies = dict[str, list[float]]
HELLO = [{"role": "user", "content": "hello"}]


@dataclass(frozen=True)
class Route:
    path: str
    body: dict[str, Any]  # without `model`
    direct_path: str  # what the mock serves for it: bridged routes end in its chat completions


CHAT = Route("/v1/chat/completions", {"messages": HELLO}, "/v1/chat/completions")
ROUTES = {
    "chat": CHAT,
    "responses": Route("/v1/responses", {"input": "hello"}, CHAT.path),
    "messages": Route("/v1/messages", {"max_tokens": 64, "messages": HELLO}, CHAT.path),
    # The openai SDK's default encoding; the mock's default size (1536 dimensions).
    "embeddings": Route("/v1/embeddings", {"input": "hello", "encoding_format": "base64"}, "/v1/embeddings"),
}


@dataclass
class Target:
    name: str
    url: str  # base URL
    model: str
    route_models: dict[str, str] = field(default_factory=dict)  # where a route needs another model name
    pid: int | None = None  # the process whose tree's CPU time is its own (None: started elsewhere)

    def path_and_body(self, route: str, stream: bool = False) -> tuple[str, dict[str, Any]]:
        spec = ROUTES[route]
        if self.name == DIRECT:  # the mock is the baseline: the chat request for bridged routes
            spec = CHAT if spec.direct_path == CHAT.path else spec
        body = {"model": self.route_models.get(route, self.model), **spec.body}
        return spec.path, {**body, "stream": True} if stream else body

    def request(self, route: str = "chat", stream: bool = False) -> bytes:
        path, body = self.path_and_body(route, stream)
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nhost: {urlsplit(self.url).netloc}\r\n"
                f"authorization: Bearer {KEY}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\n\r\n")
        return head.encode() + payload

    def serves(self, route: str) -> bool:
        """False when the target answers the route with 404 (not built there); other failures raise."""
        path, body = self.path_and_body(route)
        response = httpx.post(self.url + path, json=body, headers={"authorization": f"Bearer {KEY}"},
                              timeout=60)
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise RuntimeError(f"{self.name} {path}: HTTP {response.status_code}: {response.text[:300]}")
        return True


class Conn:
    """One keep-alive HTTP/1.1 connection; reads content-length and chunked (SSE) bodies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, target: Target) -> Conn:
        parts = urlsplit(target.url)
        return cls(*await asyncio.open_connection(parts.hostname, parts.port or 80))

    async def call(self, request: bytes) -> bytes:
        self.writer.write(request)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        if b"content-length" in headers:
            body = await self.reader.readexactly(int(headers[b"content-length"]))
        else:  # chunked, as streamed responses are (no target sends trailers)
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append((await self.reader.readexactly(size + 2))[:-2])
            await self.reader.readuntil(b"\r\n")
            body = b"".join(parts)
        if not lines[0].startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{lines[0].decode()}: {body[:300]!r}")
        return body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def rotated(targets: Sequence[Target], round_no: int) -> list[Target]:
    """Who goes first changes every round, so that no target always runs right after the same one."""
    shift = round_no % len(targets)
    return [*targets[shift:], *targets[:shift]]


async def sequential(targets: Sequence[Target], n: int, round_size: int, stream: bool = False,
                     route: str = "chat") -> Latencies:
    """Per-request latencies (s) in interleaved rounds. A new connection per round: an idle keep-alive one
    could be closed by the server (uvicorn: after 5 s) while the other targets take their turn."""
    latencies: Latencies = {t.name: [] for t in targets}
    for round_no, start in enumerate(range(0, n, round_size)):
        for target in rotated(targets, round_no):
            request, conn = target.request(route, stream), await Conn.open(target)
            for _ in range(min(round_size, n - start)):
                began = time.perf_counter()
                body = await conn.call(request)
                latencies[target.name].append(time.perf_counter() - began)
                if stream and not body.rstrip().endswith(b"data: [DONE]"):
                    raise RuntimeError(f"{target.name}: stream did not end with [DONE]: {body[-200:]!r}")
            await conn.close()
    return latencies


async def _drain(conn: Conn, request: bytes, budget: list[int]) -> None:
    while budget[0] > 0:
        budget[0] -= 1
        await conn.call(request)


@dataclass
class Throughput:
    req_per_s: dict[str, float]
    cpu_ms_per_request: dict[str, float]  # the target's own process tree, from /proc


async def concurrent(targets: Sequence[Target], total: int, concurrency: int, round_size: int,
                     route: str = "chat") -> Throughput:
    """Requests/s with `concurrency` connections kept busy, in interleaved rounds of `round_size`, and the
    CPU time each target's processes spent per request meanwhile."""
    elapsed = dict.fromkeys((t.name for t in targets), 0.0)
    cpu = dict.fromkeys((t.name for t in targets), 0.0)
    for round_no, start in enumerate(range(0, total, round_size)):
        for target in rotated(targets, round_no):
            conns = [await Conn.open(target) for _ in range(concurrency)]  # connecting is not timed
            budget, request = [min(round_size, total - start)], target.request(route)
            cpu_before = tree_cpu_s(target.pid)
            began = time.perf_counter()
            await asyncio.gather(*(_drain(conn, request, budget) for conn in conns))
            elapsed[target.name] += time.perf_counter() - began
            cpu[target.name] += tree_cpu_s(target.pid) - cpu_before
            await asyncio.gather(*(conn.close() for conn in conns))
    return Throughput({name: total / seconds for name, seconds in elapsed.items()},
                      {name: seconds * 1e3 / total for name, seconds in cpu.items()})


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu_s(pid: int | None) -> float:
    """The CPU time (user and system) that `pid` and its live descendants have used so far; 0 without one."""
    ticks = 0
    for member in descendants(pid) if pid is not None else ():
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime and stime: stat's 14th and 15th fields
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(procs: list[subprocess.Popen[bytes]], cmd: list[str], port: int, ready_path: str, log: Path,
          env: dict[str, str] | None = None, timeout_s: float = 60.0) -> str:
    # Own session, so that stop() reaches everything the command starts (the shell script exec's litellm).
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})
    procs.append(proc)  # before waiting: the caller's finally stops it even if it never gets ready
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return url
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{' '.join(cmd[:4])} not ready (exit code {proc.poll()}):\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)


def start_all(args: argparse.Namespace, procs: list[subprocess.Popen[bytes]], tmp: Path) -> list[Target]:
    cli, port = [sys.executable, "-m", "proxy.cli"], free_port()
    mock = start(procs, [*cli, "mock-upstream", "--port", str(port)], port, "/v1/models", tmp / "mock.log")
    config = tmp / "rlm-proxy.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": "mock", "litellm_params": {
            "model": "openai/mock-model", "api_base": mock + "/v1", "api_key": "sk-anything"}}],
        "server": {"master_key": KEY}}))
    targets = [Target(DIRECT, mock, "mock-model", pid=procs[-1].pid)]
    proxies = [(FAST, {"RLM_PROXY_UPSTREAM__FAST_PATH": "true"})]
    if not args.skip_litellm_path:
        proxies.append((SLOW, {"RLM_PROXY_UPSTREAM__FAST_PATH": "false"}))
    if args.otel:
        port = free_port()
        args.otlp_sink = start(procs, [*cli[:2], "bench.otlp_sink", "--port", str(port)], port, "/stats",
                               tmp / "otlp-sink.log")
        proxies.append((TRACED, {"RLM_PROXY_UPSTREAM__FAST_PATH": "true",
                                 "OTEL_EXPORTER_OTLP_ENDPOINT": args.otlp_sink}))
    for number, (name, env) in enumerate(proxies):
        port = free_port()
        cmd = [*cli, "serve", "--config", str(config), "--port", str(port), "--workers", "1", "--log-level",
               "warning"]
        url = start(procs, cmd, port, "/readyz", tmp / f"proxy-{number}.log", env=env)
        targets.append(Target(name, url, "mock", pid=procs[-1].pid))
    litellm_url, litellm_pid = args.litellm_proxy_url, None
    if args.with_litellm_proxy and not litellm_url:
        port = free_port()
        script = Path(__file__).with_name("litellm_baseline.sh")
        litellm_url = start(procs, ["bash", str(script), mock, str(port)], port, "/health/liveliness",
                            tmp / "litellm-proxy.log", env={"LITELLM_WORKDIR": str(tmp)},  # config goes here
                            timeout_s=args.litellm_timeout)
        litellm_pid = procs[-1].pid
    if litellm_url:
        # Its openai/ model would send /v1/responses to the mock's Responses API; this one bridges to chat.
        targets.append(Target(LITELLM, litellm_url.rstrip("/"), "mock", {"responses": "mock-responses"},
                              pid=litellm_pid))
    return targets


def show(title: str, header: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        print(f"\n{title}")
        for row in [header, *rows]:
            cells = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
            print("  ".join([row[0].ljust(widths[0]), *cells[1:]]))
        return
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i else "left")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def summarize(latencies: list[float], direct: list[float]) -> dict[str, float]:
    # Added latency is a difference of percentiles (requests are not paired across targets).
    p = statistics.quantiles(latencies, n=100, method="inclusive")
    d = statistics.quantiles(direct, n=100, method="inclusive")
    return {"p50_ms": p[49] * 1e3, "p99_ms": p[98] * 1e3, "added_p50_ms": (p[49] - d[49]) * 1e3,
            "added_p99_ms": (p[98] - d[98]) * 1e3, "mean_ms": statistics.fmean(latencies) * 1e3}


Measured = dict[str, tuple[Latencies, Throughput]]  # route -> (sequential latencies, under load)
FIGURES = ("p50_ms", "p99_ms", "added_p50_ms", "added_p99_ms")


def route_ratios(route: str, res: dict[str, dict[str, float]]) -> dict[str, float]:
    """Added latency and throughput of rlm-proxy against the other targets on one route."""
    ratios = {f"{route}: added p50, {FAST} / {other}": res[FAST]["added_p50_ms"] / res[other]["added_p50_ms"]
              for other in (SLOW, LITELLM) if FAST in res and other in res}
    if FAST in res and TRACED in res:
        on, off = res[TRACED], res[FAST]
        ratios[f"{route}: added p50, OTel on / off"] = on["added_p50_ms"] / off["added_p50_ms"]
        ratios[f"{route}: added p99, OTel on / off"] = on["added_p99_ms"] / off["added_p99_ms"]
        ratios[f"{route}: req/s, OTel on / off"] = on["req_per_s"] / off["req_per_s"]
        if off["cpu_ms_per_request"]:
            ratios[f"{route}: CPU per request, OTel on / off"] = (on["cpu_ms_per_request"]
                                                                 / off["cpu_ms_per_request"])
    for mine in (FAST, SLOW):
        if mine in res and LITELLM in res:
            ours, theirs = res[mine], res[LITELLM]
            ratios[f"{route}: added p99, {mine} / {LITELLM}"] = ours["added_p99_ms"] / theirs["added_p99_ms"]
            ratios[f"{route}: req/s, {mine} / {LITELLM}"] = ours["req_per_s"] / theirs["req_per_s"]
            if theirs["cpu_ms_per_request"]:
                ratios[f"{route}: CPU per request, {mine} / {LITELLM}"] = (ours["cpu_ms_per_request"]
                                                                          / theirs["cpu_ms_per_request"])
    return ratios


def report(args: argparse.Namespace, measured: Measured, streamed: Latencies) -> dict[str, Any]:
    cols = ["target", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"]
    results: dict[str, dict[str, dict[str, float]]] = {}
    ratios: dict[str, float] = {}
    for route, (seq, load) in measured.items():
        res = {name: {**summarize(lat, seq[DIRECT]), "req_per_s": load.req_per_s[name],
                      "cpu_ms_per_request": load.cpu_ms_per_request[name]} for name, lat in seq.items()}
        results[route] = res
        baseline = "" if ROUTES[route].direct_path == ROUTES[route].path else \
            f" (bridged: direct is the mock's {ROUTES[route].direct_path})"
        show(f"{ROUTES[route].path}{baseline}, non-streaming: {args.requests} sequential requests per "
             f"target; req/s with {args.concurrency} in flight, {args.concurrent_requests} requests",
             [*cols, f"req/s (C={args.concurrency})", "CPU ms/request"],
             [[name, *(f"{r[k]:.3f}" for k in FIGURES), f"{r['req_per_s']:.0f}",
               f"{r['cpu_ms_per_request']:.3f}" if r["cpu_ms_per_request"] else "-"]
              for name, r in res.items()])
        ratios |= route_ratios(route, res)
    sse = {name: summarize(lat, streamed[DIRECT]) for name, lat in streamed.items()}
    if sse:
        show(f"{CHAT.path}, streaming (until [DONE]): {args.requests} sequential requests per target", cols,
             [[name, *(f"{r[k]:.3f}" for k in FIGURES)] for name, r in sse.items()])
    print("\nRatios:\n" + "\n".join(f"  {label}: {value:.2f}" for label, value in ratios.items()))
    if args.otel:  # the traced proxy's batches, still arriving: at least what was sent before now
        exported = httpx.get(args.otlp_sink + "/stats", timeout=5).json()
        print(f"\nOTLP receiver: {exported['spans']} spans in {exported['exports']} exports from {TRACED}.")
    print(f"\nThis machine has {os.cpu_count()} cores (os.cpu_count()); the client, the server under test "
          "and the mock share them (the other servers sit idle meanwhile).")
    return {"cpu_count": os.cpu_count(), "args": vars(args), "results": results, "streaming": sse,
            "ratios": ratios}


def serving(targets: Sequence[Target], route: str) -> list[Target]:
    """The targets that serve a route; a line for each that does not (a 404: not built there yet)."""
    kept = []
    for target in targets:
        if target.serves(route):
            kept.append(target)
        else:
            print(f"Skipping {ROUTES[route].path} on {target.name}: it answers 404 (route not served).",
                  flush=True)
    return kept if len(kept) > 1 and kept[0].name == DIRECT else []


async def measure(args: argparse.Namespace, targets: list[Target]) -> tuple[Measured, Latencies]:
    print("Targets: " + ", ".join(f"{t.name} {t.url}" for t in targets), flush=True)
    measured: Measured = {}
    for route in args.routes:
        on_route = serving(targets, route)
        if not on_route:
            continue
        # Imports, pools and caches warm up in each server.
        await sequential(on_route, args.warmup, args.warmup, route=route)
        seq = await sequential(on_route, args.requests, args.round, route=route)
        load = await concurrent(on_route, args.concurrent_requests, args.concurrency, args.round * 5, route)
        measured[route] = seq, load
    if args.no_stream:
        return measured, {}
    pair = [t for t in targets if t.name in (DIRECT, FAST, TRACED)]
    await sequential(pair, args.warmup, args.warmup, stream=True)
    return measured, await sequential(pair, args.requests, args.round, stream=True)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:  # uvloop, as the servers use: a cheaper client loop leaves more CPU to the servers
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="sequential requests per target")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--concurrent-requests", type=int, default=2000)
    parser.add_argument("--round", type=int, default=100, help="requests per target per turn (x5 concurrent)")
    parser.add_argument("--litellm-proxy-url", help="a running LiteLLM Proxy (model mock, key sk-bench)")
    parser.add_argument("--with-litellm-proxy", action="store_true", help="start one: litellm_baseline.sh")
    parser.add_argument("--litellm-timeout", type=float, default=900.0, help="s, may include its install")
    parser.add_argument("--skip-litellm-path", action="store_true")
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--otel", action="store_true", help="also the fast path with OpenTelemetry on")
    parser.add_argument("--routes", nargs="+", choices=list(ROUTES), default=list(ROUTES))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-passthrough-") as tmp:
        try:
            summary = report(args, *run(measure(args, start_all(args, procs, Path(tmp)))))
        finally:
            for proc in reversed(procs):
                stop(proc)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
