"""Deployment selection (proxy/balancer.py): strategies, rpm/tpm limits, cooldowns, with a fake clock; and
the retry and fallback order of `Upstream` over a scripted backend."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from proxy.balancer import Balancer, Unavailable
from proxy.config import Settings, UpstreamSettings
from proxy.registry import Deployment, ModelGroup, ModelRegistry
from proxy.router_config import RoutingStrategy
from proxy.upstream import Upstream, UpstreamError, error_from_status


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0 * 60  # the start of a minute

    def __call__(self) -> float:
        return self.now


def deployment(key: str, **fields: Any) -> Deployment:
    return Deployment("group", f"openai/{key}", id=key, **fields)


def balancer(strategy: RoutingStrategy = "simple-shuffle", clock: Clock | None = None,
             allowed_fails: int = 1, cooldown_s: float = 30.0) -> Balancer:
    return Balancer(strategy, allowed_fails, cooldown_s, clock or Clock(), random.Random(7))


def picks(chooser: Balancer, deployments: list[Deployment], count: int) -> Counter[str]:
    return Counter(chooser.pick(deployments).key for _ in range(count))


def test_simple_shuffle_follows_weights() -> None:
    counts = picks(balancer(), [deployment("a", weight=1), deployment("b", weight=3)], 4000)
    assert 0.2 < counts["a"] / 4000 < 0.3 and 0.7 < counts["b"] / 4000 < 0.8


def test_simple_shuffle_weighs_by_rpm_without_weights_and_uniformly_without_either() -> None:
    by_rpm = picks(balancer(), [deployment("a", rpm=10**6), deployment("b", rpm=9 * 10**6)], 2000)
    assert by_rpm["a"] < 300 < 1500 < by_rpm["b"]
    uniform = picks(balancer(), [deployment("a"), deployment("b")], 2000)
    assert 800 < uniform["a"] < 1200


def test_least_busy_picks_the_deployment_with_fewest_calls_in_flight() -> None:
    chooser = balancer("least-busy")
    a, b, c = deployment("a"), deployment("b"), deployment("c")
    for busy in (a, a, b):
        chooser.started(busy)
    assert {chooser.pick([a, b, c]).key for _ in range(20)} == {"c"}
    chooser.started(c)
    chooser.started(c)
    assert {chooser.pick([a, b, c]).key for _ in range(20)} == {"b"}
    chooser.ended(a)
    chooser.ended(a)
    assert {chooser.pick([a, b, c]).key for _ in range(20)} == {"a"}


def test_latency_based_routing_prefers_the_fastest_and_measures_new_deployments_first() -> None:
    chooser = balancer("latency-based-routing")
    fast, slow, new = deployment("fast"), deployment("slow"), deployment("new")
    chooser.answered(fast, 0.1)
    chooser.answered(slow, 0.5)
    assert chooser.pick([fast, slow, new]).key == "new"
    chooser.answered(new, 0.3)
    assert {chooser.pick([fast, slow, new]).key for _ in range(20)} == {"fast"}
    for _ in range(10):  # only the last few answers count: the fast one slowed down
        chooser.answered(fast, 1.0)
    assert chooser.pick([fast, slow, new]).key == "new"


def test_rpm_and_tpm_limits_skip_a_deployment_until_the_next_minute() -> None:
    clock = Clock()
    chooser = balancer(clock=clock)
    limited, tokens = deployment("limited", rpm=2, weight=1000), deployment("tokens", tpm=100, weight=1)
    for _ in range(2):
        chooser.started(chooser.pick([limited]))
    assert chooser.pick([limited, tokens]).key == "tokens"
    chooser.used(tokens, 100)
    with pytest.raises(Unavailable) as info:
        chooser.pick([limited, tokens])
    clock.now += 20
    with pytest.raises(Unavailable) as info:
        chooser.pick([limited, tokens])
    assert info.value.retry_after_s == pytest.approx(40)
    clock.now += 40
    assert chooser.pick([limited]).key == "limited"


def test_cooldown_after_allowed_fails_then_recovery_after_cooldown_time() -> None:
    clock = Clock()
    chooser = balancer(clock=clock, allowed_fails=2, cooldown_s=30)
    sick, well = deployment("sick", weight=1000), deployment("well", weight=1)
    for _ in range(2):  # within allowed_fails: still picked
        chooser.failed(sick, group_size=2)
        assert chooser.pick([sick, well]).key == "sick"
    chooser.failed(sick, group_size=2)
    assert {chooser.pick([sick, well]).key for _ in range(20)} == {"well"}
    with pytest.raises(Unavailable) as info:
        chooser.pick([sick])
    assert info.value.retry_after_s == pytest.approx(30)
    clock.now += 30
    assert chooser.pick([sick, well]).key == "sick"


def test_the_only_deployment_of_a_group_is_never_cooled_down() -> None:
    chooser = balancer(allowed_fails=0)
    only = deployment("only")
    for _ in range(5):
        chooser.failed(only, group_size=1)
    assert chooser.pick([only]) is only


def test_a_retry_avoids_deployments_that_failed_this_request() -> None:
    chooser = balancer()
    a, b = deployment("a", weight=1000), deployment("b", weight=1)
    assert chooser.pick([a, b], avoid=["a"]).key == "b"
    assert chooser.has_other([a, b], ["a"]) and not chooser.has_other([a, b], ["a", "b"])
    assert chooser.pick([a, b], avoid=["a", "b"]).key in {"a", "b"}  # all failed: any open one again


# ---------------------------------------------------------------------------------------------------------
# Upstream: retries across deployments, then fallback groups, over a scripted backend


class ScriptedBackend:
    """Answers per deployment key: an HTTP status to fail with, or 200."""

    def __init__(self, statuses: dict[str, int]) -> None:
        self.statuses = statuses
        self.calls: list[str] = []

    async def complete(self, target: Deployment, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(target.key)
        status = self.statuses.get(target.key, 200)
        if status == 400:
            raise UpstreamError(400, "too long", code="context_length_exceeded", retryable=False)
        if status != 200:
            raise error_from_status(status, "failed")
        return {"choices": [{"message": {"content": target.key}}], "usage": {"prompt_tokens": 1}}


class Observer:
    def __init__(self) -> None:
        self.answered: list[str] = []
        self.errors: list[str] = []

    def on_usage(self, deployment: Deployment, usage: dict[str, Any]) -> None:
        self.answered.append(deployment.key)

    def on_error(self, deployment: Deployment, error: UpstreamError) -> None:
        self.errors.append(deployment.key)


def scripted_upstream(settings: Settings, backend: ScriptedBackend,
                      observer: Observer) -> tuple[Upstream, ModelRegistry]:
    registry = ModelRegistry(settings.model_list, settings.fallbacks())
    upstream = Upstream(UpstreamSettings(max_retries=settings.upstream.max_retries, retry_backoff_s=0),
                        observer, balancer=Balancer.from_settings(settings.router_settings),
                        resolve=registry.resolve)
    upstream.backend_for = lambda deployment: backend  # type: ignore[method-assign,assignment,return-value]
    return upstream, registry


def entry(name: str, key: str, weight: float = 1) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": f"openai/{key}", "weight": weight},
            "model_info": {"id": key}}


def test_retries_go_to_another_deployment_then_to_fallback_groups_in_order() -> None:
    settings = Settings(model_list=[entry("main", "m1", 1000), entry("main", "m2"), entry("second", "s1"),
                                    entry("third", "t1")],
                        upstream={"max_retries": 1},
                        router_settings={"fallbacks": [{"main": ["second", "third"]}]})
    backend, observer = ScriptedBackend({"m1": 500, "m2": 429, "s1": 503}), Observer()
    upstream, registry = scripted_upstream(settings, backend, observer)
    answered, completion = asyncio.run(upstream.complete_routed(registry.resolve("main"), {}))
    assert backend.calls == ["m1", "m2", "s1", "s1", "t1"]
    assert answered.key == "t1" and completion["choices"][0]["message"]["content"] == "t1"
    assert observer.answered == ["t1"] and observer.errors == ["m2", "s1"]


def test_context_window_errors_go_to_context_window_fallbacks_only() -> None:
    settings = Settings(model_list=[entry("small", "s"), entry("big", "b"), entry("other", "o")],
                        router_settings={"fallbacks": [{"small": ["other"]}],
                                         "context_window_fallbacks": [{"small": ["big"]}]})
    backend, observer = ScriptedBackend({"s": 400}), Observer()
    upstream, registry = scripted_upstream(settings, backend, observer)
    answered, _ = asyncio.run(upstream.complete_routed(registry.resolve("small"), {}))
    assert backend.calls == ["s", "b"] and answered.key == "b"


def test_client_errors_are_not_retried_nor_fallen_back() -> None:
    settings = Settings(model_list=[entry("main", "m1"), entry("main", "m2"), entry("other", "o")],
                        router_settings={"fallbacks": [{"main": ["other"]}]})
    backend = ScriptedBackend({"m1": 400, "m2": 400})
    upstream, registry = scripted_upstream(settings, backend, Observer())
    with pytest.raises(UpstreamError) as info:
        asyncio.run(upstream.complete(registry.resolve("main"), {}))
    assert info.value.status == 400 and len(backend.calls) == 1


def test_a_group_all_cooling_down_answers_429_with_retry_after() -> None:
    settings = Settings(model_list=[entry("main", "m1"), entry("main", "m2")], upstream={"max_retries": 1},
                        router_settings={"allowed_fails": 0, "cooldown_time": 30})
    backend = ScriptedBackend({"m1": 500, "m2": 500})
    upstream, registry = scripted_upstream(settings, backend, Observer())
    group = registry.resolve("main")
    with pytest.raises(UpstreamError) as info:
        asyncio.run(upstream.complete(group, {}))
    assert info.value.status == 502 and sorted(backend.calls) == ["m1", "m2"]
    with pytest.raises(UpstreamError) as info:
        asyncio.run(upstream.complete(group, {}))
    assert info.value.status == 429 and info.value.code == "deployments_unavailable"
    assert info.value.headers == {"retry-after": "30"} and len(backend.calls) == 2


def test_a_group_answers_for_its_most_constrained_deployment() -> None:
    group = ModelGroup("g", (
        Deployment("g", "openai/a", max_input_tokens=8000, rlm_threshold_tokens=5000,
                   input_cost_per_token=1e-6, native_apis=frozenset({"responses", "messages"})),
        Deployment("g", "openai/b", max_input_tokens=4000, input_cost_per_token=3e-6,
                   native_apis=frozenset({"responses"}))))
    assert group.max_input_tokens == 4000 and group.rlm_threshold_tokens == 5000
    assert group.input_cost_per_token == 3e-6
    assert group.speaks("responses") and not group.speaks("messages")
