"""Whose cached model calls a caller may reuse (cache.scope), through the real proxy, the openai SDK, the
mock and a real redis-server: a cache hit tells the caller that someone in its scope asked the same."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.harness import EXTRA_KEY, MASTER_KEY, Mock, Redis, Server, StartProxy, rlm_config
from tests.test_cache import run, varied_haystack

ALPHA_1, ALPHA_2, BETA_1 = "sk-alpha-one", "sk-alpha-two", "sk-beta-one"
KEYS = [{"key": ALPHA_1, "alias": "alpha-1", "team": "alpha"},
        {"key_hash": hashlib.sha256(ALPHA_2.encode()).hexdigest(), "team": "alpha"},  # known by its hash only
        {"key": BETA_1, "team": "beta"}]


def scoped_proxy(start_proxy: StartProxy, mock: Mock, scope: str, redis: Redis | None) -> Server:
    cache: dict[str, Any] = {"scope": scope}
    if redis is not None:
        cache["redis_url"] = redis.url
    return start_proxy(rlm_config(mock, server={"keys": KEYS}, cache=cache))


@pytest.fixture(scope="module")
def default_scope(start_proxy: StartProxy, mock_upstream: Mock, redis_server: Redis) -> Server:
    """Nothing about scopes or teams in the config: a master key and `api_keys`, as before they existed."""
    return start_proxy(rlm_config(mock_upstream, cache={"redis_url": redis_server.url}))


@pytest.fixture(scope="module")
def global_scope(start_proxy: StartProxy, mock_upstream: Mock, redis_server: Redis) -> Server:
    return scoped_proxy(start_proxy, mock_upstream, "global", redis_server)


@pytest.fixture(scope="module")
def team_scope(start_proxy: StartProxy, mock_upstream: Mock) -> Server:
    return scoped_proxy(start_proxy, mock_upstream, "team", None)  # the in-process store


def needle_task(seed: str, extra: str = "") -> str:
    return varied_haystack(400_000, seed) + (
        f"One of the special magic numbers for {seed} is: 31337.\n"
        f"What is the special magic number for {seed} mentioned in the provided text?{extra}")


def cached(proxy: Server, prompt: str, key: str) -> int:
    answer, figures = run(proxy, prompt, api_key=key)
    assert answer == "31337"
    assert figures["subcalls"] >= 4
    return figures["cached_subcalls"]


def all_of(proxy: Server, prompt: str, key: str) -> bool:
    answer, figures = run(proxy, prompt, api_key=key)
    assert answer == "31337"
    return figures["cached_subcalls"] == figures["subcalls"] >= 4


def test_by_default_a_key_never_sees_another_keys_cached_calls(default_scope: Server) -> None:
    prompt = needle_task("scope-default")
    assert cached(default_scope, prompt, EXTRA_KEY) == 0
    assert cached(default_scope, prompt, MASTER_KEY) == 0  # the master key is a scope of its own
    assert all_of(default_scope, prompt, EXTRA_KEY)  # each key still reuses its own calls


def test_single_flight_is_not_shared_across_keys(default_scope: Server, mock_upstream: Mock) -> None:
    # The same request at the same time from two keys: each must reach the model itself, and neither may
    # wait for the other's call (a waiter would count the shared answer as cached).
    prompt = needle_task("scope-flight", " [[mock:latency_ms=300]]")
    before = mock_upstream.stats()["requests"]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda key: run(default_scope, prompt, api_key=key), [MASTER_KEY, EXTRA_KEY]))
    calls = mock_upstream.stats()["requests"] - before
    assert [answer for answer, _ in results] == ["31337", "31337"]
    assert [figures["cached_subcalls"] for _, figures in results] == [0, 0]
    one_run = results[0][1]["iterations"] + results[0][1]["subcalls"]
    assert calls == 2 * one_run


def test_global_scope_shares_calls_between_keys(global_scope: Server, mock_upstream: Mock) -> None:
    prompt = needle_task("scope-global")
    assert cached(global_scope, prompt, ALPHA_1) == 0
    before = mock_upstream.stats()["requests"]
    assert all_of(global_scope, prompt, BETA_1)
    assert all_of(global_scope, prompt, MASTER_KEY)
    assert mock_upstream.stats()["requests"] == before  # root calls too


def test_team_scope_shares_within_a_team_only(team_scope: Server) -> None:
    prompt = needle_task("scope-team")
    assert cached(team_scope, prompt, ALPHA_1) == 0
    assert all_of(team_scope, prompt, ALPHA_2)  # same team, its key configured by hash
    assert cached(team_scope, prompt, BETA_1) == 0
    assert all_of(team_scope, prompt, BETA_1)
    # Keys without a team fall back to their own key's scope.
    assert cached(team_scope, prompt, EXTRA_KEY) == 0
    assert cached(team_scope, prompt, MASTER_KEY) == 0
    assert all_of(team_scope, prompt, MASTER_KEY)
