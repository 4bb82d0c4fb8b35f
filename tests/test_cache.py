"""The sub-call cache against a real redis-server: re-runs, single-flight, Cache-Control, Redis outages."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest

from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Redis, Server, StartProxy, rlm_config, scrape

RLM_ON = {"x-rlm-mode": "on"}


@pytest.fixture(scope="module")
def mock_upstream(own_mock_upstream: Mock) -> Mock:
    """This module counts upstream requests exactly: it has a mock of its own."""
    return own_mock_upstream


@pytest.fixture(scope="module")
def cached_proxy(mock_upstream: Mock, start_proxy: StartProxy, redis_server: Redis) -> Server:
    return start_proxy(rlm_config(mock_upstream, cache={"redis_url": redis_server.url, "redis_retry_s": 0.2}))


def run(proxy: Server, prompt: str, headers: dict[str, str] | None = None,
        api_key: str = MASTER_KEY) -> tuple[str, dict[str, Any]]:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=api_key, max_retries=0, timeout=120)
    completion = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": prompt}],
                                                extra_headers={**RLM_ON, **(headers or {})})
    return completion.choices[0].message.content or "", completion.model_extra["rlm"]


def cache_counts(proxy: Server) -> dict[str, float]:
    samples = scrape(proxy)
    return {result: samples.get(("rlm_proxy_cache_requests_total", (("result", result),)), 0.0)
            for result in ("hit", "miss", "error")}


def varied_haystack(chars: int, seed: str) -> str:
    """Every line differs, so that every chunk's prompt differs (no accidental single-flight)."""
    return "".join(f"Line {i} of {seed}: the weather was mild and the river ran slow.\n"
                   for i in range(chars // 60))


def test_identical_rerun_is_served_from_the_cache(cached_proxy: Server, mock_upstream: Mock) -> None:
    prompt = varied_haystack(900_000, "rerun") + (
        "One of the special magic numbers for cache-key is: 5550123.\n"
        "What is the special magic number for cache-key mentioned in the provided text?")
    before = mock_upstream.stats()["requests"]
    answer, first = run(cached_proxy, prompt)
    upstream_first = mock_upstream.stats()["requests"] - before
    assert answer == "5550123"
    assert first["cached_subcalls"] == 0 and first["subcalls"] >= 8
    hits_before = cache_counts(cached_proxy)["hit"]
    answer, second = run(cached_proxy, prompt)
    upstream_second = mock_upstream.stats()["requests"] - before - upstream_first
    assert answer == "5550123"
    assert second["cached_subcalls"] >= 0.95 * second["subcalls"]
    assert cache_counts(cached_proxy)["hit"] - hits_before >= 0.95 * (second["subcalls"] + 2)
    assert upstream_second <= 0.05 * upstream_first
    # The run consumed what the cache served: usage is the same, the cost was saved.
    assert second["cost_usd"] == 0 and second["cost_saved_usd"] == pytest.approx(first["cost_usd"])


def test_concurrent_identical_subcalls_reach_the_upstream_once(cached_proxy: Server,
                                                               mock_upstream: Mock) -> None:
    # A haystack of identical lines cut at line ends gives identical chunk prompts, sent in one batch.
    prompt = needle_prompt(1_000_000, "flight-key", "777", depth=0.5)
    before = mock_upstream.stats()["requests"]
    answer, figures = run(cached_proxy, prompt)
    assert answer == "777"
    assert figures["subcalls"] >= 9
    # Two root replies, and one call per distinct chunk: a plain one, the needle's, and the short last one.
    assert mock_upstream.stats()["requests"] - before <= 2 + 3


def test_no_cache_skips_reads_and_no_store_skips_writes(cached_proxy: Server, mock_upstream: Mock) -> None:
    prompt = varied_haystack(300_000, "directives") + (
        "What is the special magic number for nothing-here mentioned in the provided text?")
    requests = lambda: mock_upstream.stats()["requests"]  # noqa: E731
    start = requests()
    run(cached_proxy, prompt, {"cache-control": "no-store"})
    first = requests() - start
    run(cached_proxy, prompt)  # nothing was stored: all upstream again, and now stored
    assert requests() - start - first == first
    middle = requests()
    run(cached_proxy, prompt, {"cache-control": "no-cache"})  # stored, but not read
    assert requests() - middle == first
    end = requests()
    run(cached_proxy, prompt)
    assert requests() == end  # a plain request reads what the others stored


def test_redis_outage_degrades_to_misses_and_recovers(cached_proxy: Server, redis_server: Redis,
                                                      mock_upstream: Mock) -> None:
    prompt = varied_haystack(600_000, "outage") + (
        "One of the special magic numbers for outage-key is: 9090.\n"
        "What is the special magic number for outage-key mentioned in the provided text? "
        "[[mock:latency_ms=1000]]")
    errors_before = cache_counts(cached_proxy)["error"]
    killer = threading.Timer(0.5, redis_server.kill)  # while the root model is still thinking
    killer.start()
    try:
        answer, _ = run(cached_proxy, prompt)
    finally:
        killer.join()
    assert answer == "9090"
    assert cache_counts(cached_proxy)["error"] > errors_before
    assert httpx.get(cached_proxy.url + "/readyz").json()["checks"]["cache"]["status"] == "degraded"
    redis_server.start()
    time.sleep(0.3)  # past the pause after the last failure
    run(cached_proxy, prompt)  # fills the fresh Redis
    hits = cache_counts(cached_proxy)["hit"]
    before = mock_upstream.stats()["requests"]
    assert run(cached_proxy, prompt)[0] == "9090"
    assert cache_counts(cached_proxy)["hit"] > hits
    assert mock_upstream.stats()["requests"] == before
    assert httpx.get(cached_proxy.url + "/readyz").json()["checks"]["cache"]["status"] == "ok"
