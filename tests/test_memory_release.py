"""Memory goes back after a burst: the real proxy serves concurrent 1 MB RLM runs, and once idle its RSS
returns close to where it was (server.release_memory; proxy/memory.py says what kept it before)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Server, StartProxy, rlm_config

BURST = 24
MIB = 1024 * 1024
# Measured on 2 shared cores: a burst of 24 lifts the peak by ~45 MiB; once idle the proxy keeps ~3 MiB
# with the release and ~50 MiB without it (server.release_memory: false).
SETTLED_BOUND = 25 * MIB


@pytest.fixture(scope="module")
def releasing_proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy(rlm_config(mock_upstream, server={"release_memory_idle_s": 0.3},
                                  rlm={"subcall_concurrency": 64}))


def status_bytes(server: Server, field: str) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def burst(proxy: Server, tag: str, runs: int) -> None:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=300)

    def one(number: int) -> str | None:
        prompt = needle_prompt(1_000_000, f"{tag}-{number}", str(1000 + number), depth=0.6)
        messages = [{"role": "user", "content": prompt}]
        return client.chat.completions.create(model="mock", messages=messages).choices[0].message.content

    with ThreadPoolExecutor(runs) as pool:
        assert list(pool.map(one, range(runs))) == [str(1000 + number) for number in range(runs)]


def settled_rss(proxy: Server, bound: int, timeout_s: float = 15.0) -> int:
    """The RSS once it is under `bound`, or the last one seen when `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while (rss := status_bytes(proxy, "VmRSS")) >= bound and time.monotonic() < deadline:
        time.sleep(0.25)
    return rss


@contextlib.contextmanager
def probed(proxy: Server, interval_s: float = 0.05) -> Iterator[None]:
    """/livez asked all along, as an orchestrator would: requests that never let the proxy look idle long."""
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=proxy.url, timeout=10) as client:
            while not done.wait(interval_s):
                client.get("/livez").raise_for_status()

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        yield
    finally:
        done.set()
        prober.join()


def test_rss_settles_after_a_burst_of_rlm_runs(releasing_proxy: Server) -> None:
    burst(releasing_proxy, "warm", 2)  # code paths, pools and caches warm
    time.sleep(1)
    before = status_bytes(releasing_proxy, "VmRSS")
    Path(f"/proc/{releasing_proxy.process.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    with probed(releasing_proxy):
        burst(releasing_proxy, "burst", BURST)
        assert status_bytes(releasing_proxy, "VmHWM") - before > SETTLED_BOUND  # else it proved nothing
        after = settled_rss(releasing_proxy, before + SETTLED_BOUND)
    assert after - before < SETTLED_BOUND, f"{(after - before) / MIB:.0f} MiB kept after the burst"
