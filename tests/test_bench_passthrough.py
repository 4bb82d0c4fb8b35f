"""bench.passthrough's plumbing against the real mock and proxy: each route's request, the skip of a route a
target does not serve, and the per-route ratios."""

from __future__ import annotations

import asyncio

import pytest

from bench.passthrough import (
    CHAT,
    DIRECT,
    FAST,
    KEY,
    LITELLM,
    ROUTES,
    TRACED,
    Route,
    Target,
    concurrent,
    route_ratios,
    sequential,
    serving,
    tree_cpu_s,
)
from tests.harness import Mock, StartProxy, proxy_config


@pytest.fixture(scope="module")
def targets(mock_upstream: Mock, start_proxy: StartProxy) -> list[Target]:
    proxy = start_proxy(proxy_config(mock_upstream, server={"master_key": KEY}))
    return [Target(DIRECT, mock_upstream.server.url, "mock-model"), Target(FAST, proxy.url, "mock")]


def test_bridged_routes_are_measured_against_the_mocks_chat_completions() -> None:
    direct, proxy = Target(DIRECT, "http://127.0.0.1:1", "m"), Target(LITELLM, "http://127.0.0.1:2", "m",
                                                                        {"responses": "m-responses"})
    assert direct.path_and_body("messages")[0] == CHAT.path
    assert direct.path_and_body("embeddings")[0] == "/v1/embeddings"
    assert proxy.path_and_body("responses") == ("/v1/responses", {"model": "m-responses", "input": "hello"})
    assert proxy.path_and_body("messages")[1]["max_tokens"] > 0


def test_served_routes_are_timed_and_unserved_ones_skipped(targets: list[Target],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert serving(targets, "embeddings") == targets
    latencies = asyncio.run(sequential(targets, 4, 2, route="embeddings"))
    assert {name: len(values) for name, values in latencies.items()} == {DIRECT: 4, FAST: 4}
    monkeypatch.setitem(ROUTES, "nowhere", Route("/v1/nowhere", {}, "/v1/nowhere"))
    assert serving(targets, "nowhere") == []
    assert capsys.readouterr().out.count("Skipping /v1/nowhere on ") == 2


def test_ratios_per_route() -> None:
    res = {FAST: {"added_p50_ms": 1.0, "added_p99_ms": 2.0, "req_per_s": 800.0, "cpu_ms_per_request": 0.5},
           LITELLM: {"added_p50_ms": 10.0, "added_p99_ms": 40.0, "req_per_s": 100.0, "cpu_ms_per_request": 4}}
    assert route_ratios("embeddings", res) == {
        f"embeddings: added p50, {FAST} / {LITELLM}": 0.1, f"embeddings: added p99, {FAST} / {LITELLM}": 0.05,
        f"embeddings: req/s, {FAST} / {LITELLM}": 8.0,
        f"embeddings: CPU per request, {FAST} / {LITELLM}": 0.125}


def test_cpu_per_request_is_the_targets_own_process_tree(targets: list[Target], start_proxy: StartProxy,
                                                         mock_upstream: Mock) -> None:
    proxy = start_proxy(proxy_config(mock_upstream, server={"master_key": KEY}))
    measured = [Target(FAST, proxy.url, "mock", pid=proxy.process.pid), Target(DIRECT, targets[0].url, "m")]
    load = asyncio.run(concurrent(measured, 200, 8, 100))
    assert set(load.req_per_s) == {FAST, DIRECT} and all(rate > 0 for rate in load.req_per_s.values())
    assert load.cpu_ms_per_request[FAST] > 0  # the proxy worked for each request
    assert load.cpu_ms_per_request[DIRECT] == 0  # no process of its own given: nothing counted
    assert tree_cpu_s(proxy.process.pid) >= load.cpu_ms_per_request[FAST] * 200 / 1e3


def test_ratios_of_opentelemetry_on_to_off() -> None:
    res = {FAST: {"added_p50_ms": 0.5, "added_p99_ms": 4.0, "req_per_s": 800.0, "cpu_ms_per_request": 0.4},
           TRACED: {"added_p50_ms": 0.75, "added_p99_ms": 4.0, "req_per_s": 600.0, "cpu_ms_per_request": 0.5}}
    assert route_ratios("chat", res) == {"chat: added p50, OTel on / off": 1.5,
                                         "chat: added p99, OTel on / off": 1.0,
                                         "chat: req/s, OTel on / off": 0.75,
                                         "chat: CPU per request, OTel on / off": 1.25}
