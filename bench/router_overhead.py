"""Load balancing's cost per call: rlm-proxy's balancer + fast path against `litellm.Router.acompletion`.

    .venv/bin/python -m bench.router_overhead [--calls N]

In one process, against one mock model server, calls alternate in rounds between: our `Upstream` on one
deployment, our `Upstream` on a two-deployment group (weighted simple-shuffle), and `litellm.Router` on the
same two deployments. Printed: p50/p99 per call and each p50 as a ratio of the single-deployment one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.passthrough import free_port, show, start, stop
from proxy.balancer import Balancer
from proxy.config import UpstreamSettings
from proxy.model_facts import import_litellm
from proxy.registry import Deployment, ModelGroup
from proxy.router_config import RouterSettings
from proxy.upstream import Upstream

BODY = {"model": "mock", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


class NoObserver:
    def on_usage(self, deployment: Deployment, usage: dict[str, Any]) -> None:
        pass

    def on_error(self, deployment: Deployment, error: Exception) -> None:
        pass


async def measure(base: str, calls: int, round_size: int) -> dict[str, list[float]]:
    params = {"api_base": base, "api_key": "sk-bench"}
    one = Deployment("mock", "openai/mock-model", dict(params), id="one")
    group = ModelGroup("mock", (Deployment("mock", "openai/mock-model", dict(params), weight=1, id="a"),
                                Deployment("mock", "openai/mock-model", dict(params), weight=3, id="b")))
    upstream = Upstream(UpstreamSettings(), NoObserver(), balancer=Balancer.from_settings(RouterSettings()))
    litellm = import_litellm()
    router = litellm.Router(model_list=[
        {"model_name": "mock", "litellm_params": {"model": "openai/mock-model", **params, "weight": weight}}
        for weight in (1, 3)], routing_strategy="simple-shuffle", num_retries=0)
    targets: dict[str, Callable[[], Awaitable[Any]]] = {
        "rlm-proxy, one deployment": lambda: upstream.complete(one, BODY),
        "rlm-proxy, group of two": lambda: upstream.complete(group, BODY),
        "litellm.Router, group of two": lambda: router.acompletion(**BODY),
    }
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    for call in targets.values():  # warm-up: connections, litellm's lazy imports
        for _ in range(20):
            await call()
    done = 0
    while done < calls:
        for name, call in targets.items():
            for _ in range(round_size):
                began = time.perf_counter()
                await call()
                latencies[name].append(time.perf_counter() - began)
        done += round_size
    await upstream.aclose()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="calls per target")
    parser.add_argument("--round", type=int, default=50, help="calls per target per turn")
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            port = free_port()
            command = [sys.executable, "-m", "proxy.cli", "mock-upstream", "--port", str(port)]
            url = start(procs, command, port, "/v1/models", Path(tmp) / "mock.log")
            latencies = asyncio.run(measure(url + "/v1", args.calls, args.round))
        finally:
            for proc in procs:
                stop(proc)
    baseline = statistics.median(next(iter(latencies.values())))
    rows = []
    for name, values in latencies.items():
        p50, p99 = statistics.median(values), statistics.quantiles(values, n=100)[98]
        rows.append([name, f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}", f"{p50 / baseline:.2f}x",
                     f"{(p50 - baseline) * 1e3:+.3f}"])
    show(f"Per call, {args.calls} sequential calls each, in turns of {args.round}",
         ["target", "p50 ms", "p99 ms", "p50 ratio", "p50 added ms"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
