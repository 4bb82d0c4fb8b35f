"""The fast path's HTTP client under many concurrent calls: what it costs the event loop, side by side.

    .venv/bin/python -m bench.upstream_pool [--in-flight 100 400 800] [--latency-ms 200] [--waves 5]

The mock model server answers after a fixed latency; waves of N concurrent calls go through
proxy.upstream.Upstream, once with its own client (aiohttp) and once with httpx.AsyncClient (httpcore's
pool, the client before issue 9) behind the same `HttpClient` interface, in alternating order. A 10 ms
ticker task runs alongside: how late it wakes up is how long everything else on the event loop waits,
/livez included (issue 9 asks for less than 1 s at any load). Per client and N: the ticker's lag (p50, p99,
max), CPU time of this process per call, and calls/s (the ideal is N / latency; a single mock process caps
it before that on a small machine); then ratios httpx / aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.passthrough import free_port, run, show, start, stop
from proxy.config import UpstreamSettings
from proxy.metrics import Metrics, UpstreamMetrics
from proxy.model_facts import ModelFacts
from proxy.registry import Deployment
from proxy.upstream import HttpClient, HttpResponse, Upstream, connection_error, timeout_error

TICK_S = 0.01
AIOHTTP, HTTPX = "aiohttp", "httpx"  # Upstream's own client, and the one it had before


class HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def read(self) -> bytes:
        return await self._response.aread()

    async def lines(self) -> AsyncIterator[bytes]:
        async for line in self._response.aiter_lines():
            yield line.encode()


class HttpxClient:
    """The fast path's client before issue 9, configured as it was: one pool of max_connections."""

    def __init__(self, max_connections: int) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(limits=limits)

    @asynccontextmanager
    async def post(self, url: str, payload: bytes, headers: dict[str, str], timeout_s: float
                   ) -> AsyncIterator[HttpResponse]:
        request = self._http.build_request("POST", url, content=payload, headers=headers, timeout=timeout_s)
        try:
            response = await self._http.send(request, stream=True)
            try:
                yield HttpxResponse(response)
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise timeout_error(timeout_s) from exc
        except httpx.TransportError as exc:
            raise connection_error(type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self._http.aclose()


async def _tick(lags: list[float], done: asyncio.Event) -> None:
    while not done.is_set():
        began = time.perf_counter()
        await asyncio.sleep(TICK_S)
        lags.append(time.perf_counter() - began - TICK_S)


async def measure(client_name: str, mock: str, in_flight: int, waves: int) -> dict[str, float]:
    settings = UpstreamSettings(max_connections=1000, timeout_s=120)
    http: HttpClient | None = HttpxClient(settings.max_connections) if client_name == HTTPX else None
    upstream = Upstream(settings, UpstreamMetrics(Metrics(["mock"]), ModelFacts()), http=http)
    target = Deployment("mock", "openai/mock-model", {"api_base": mock + "/v1", "api_key": "sk-bench"},
                        input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    body = {"messages": [{"role": "user", "content": "hello"}]}

    async def wave() -> None:
        replies = await asyncio.gather(*(upstream.complete(target, body) for _ in range(in_flight)))
        assert all(reply["choices"] for reply in replies)

    try:
        await wave()  # connections opened, not measured
        lags: list[float] = []
        done = asyncio.Event()
        ticker = asyncio.create_task(_tick(lags, done))
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(waves):
            await wave()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        done.set()
        await ticker
    finally:
        await upstream.aclose()
    p = statistics.quantiles(lags, n=100, method="inclusive")
    calls = in_flight * waves
    return {"lag_p50_ms": p[49] * 1e3, "lag_p99_ms": p[98] * 1e3, "lag_max_ms": max(lags) * 1e3,
            "cpu_ms_per_call": cpu / calls * 1e3, "calls_per_s": calls / wall}


def report(results: dict[int, dict[str, dict[str, float]]], args: argparse.Namespace) -> dict[str, Any]:
    rows = [[f"{n}", name, *(f"{r[key]:.1f}" for key in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms")),
             f"{r['cpu_ms_per_call']:.3f}", f"{r['calls_per_s']:.0f}", f"{n / (args.latency_ms / 1e3):.0f}"]
            for n, by_client in results.items() for name, r in by_client.items()]
    show(f"{args.waves} waves of N calls at once, mock latency {args.latency_ms:g} ms; lag of a "
         f"{TICK_S * 1e3:g} ms ticker", ["N", "client", "lag p50 ms", "p99", "max", "CPU ms/call", "calls/s",
                                        "ideal"], rows)
    ratios = {}
    for n, by_client in results.items():
        old, new = by_client[HTTPX], by_client[AIOHTTP]
        ratios[f"N={n}"] = {
            "lag p99, httpx / aiohttp": old["lag_p99_ms"] / max(new["lag_p99_ms"], 1e-3),
            "lag max, httpx / aiohttp": old["lag_max_ms"] / max(new["lag_max_ms"], 1e-3),
            "CPU per call, httpx / aiohttp": old["cpu_ms_per_call"] / new["cpu_ms_per_call"],
            "calls/s, aiohttp / httpx": new["calls_per_s"] / old["calls_per_s"],
        }
    print("\nRatios:")
    for n, values in ratios.items():
        print(f"  {n}: " + ", ".join(f"{label} {value:.1f}" for label, value in values.items()))
    worst = max(r[AIOHTTP]["lag_max_ms"] for r in results.values())
    print(f"\nWorst event-loop stall with Upstream's own client: {worst:.0f} ms (issue 9's bound: 1000 ms). "
          "The mock and this process share the machine's cores.")
    return {"args": vars(args), "results": {str(n): r for n, r in results.items()}, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream_pool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[100, 400, 800])
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--waves", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-upstream-pool-") as tmp:
        try:
            port = free_port()
            command = [sys.executable, "-m", "proxy.cli", "mock-upstream", "--port", str(port),
                       "--latency-ms", str(args.latency_ms)]
            mock = start(procs, command, port, "/v1/models", Path(tmp) / "mock.log")
            for turn, n in enumerate(args.in_flight):
                order = [AIOHTTP, HTTPX] if turn % 2 == 0 else [HTTPX, AIOHTTP]  # neither always goes first
                results[n] = {name: run(measure(name, mock, n, args.waves)) for name in order}
                results[n] = {name: results[n][name] for name in (HTTPX, AIOHTTP)}
                print(f"N={n} done", flush=True)
        finally:
            for proc in procs:
                stop(proc)
    summary = report(results, args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
