"""The limit counters' two backends behave alike: the in-process one, and Redis (a real redis-server)
through the Lua scripts: all or nothing, windows that end, leases that expire or are given back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from proxy.config import CacheSettings, LimitsSettings
from proxy.limit_counters import Charge, Counter, Counters, MemoryCounters, RedisCounters, Window
from proxy.limits import Grant, KeyLimits
from proxy.metrics import Metrics
from tests.harness import Redis, free_port


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest, redis_server: Redis) -> AsyncIterator[Counters]:
    made: Counters = MemoryCounters() if request.param == "memory" else \
        RedisCounters(CacheSettings(redis_url=redis_server.url))
    yield made
    await made.aclose()


def window(name: str, limit: float, take: bool = True, ttl_s: float = 60) -> Counter:
    return Counter(f"test:{time.time_ns()}:{name}", "window", limit, take, ttl_s)


async def test_a_request_is_counted_in_all_its_counters_or_in_none(counters: Counters) -> None:
    key, team = window("key", 3), window("team", 2)
    now = time.time()
    assert (await counters.take([key, team], "a", now)).values == (1, 1)
    assert (await counters.take([key, team], "b", now)).values == (2, 2)
    refused = await counters.take([key, team], "c", now)
    assert (refused.refused, refused.values) == (1, (2,))
    # The key's counter was not counted by the refused request.
    assert (await counters.take([key], "d", now)).values == (3,)
    assert (await counters.take([key], "e", now)).refused == 0


async def test_checked_windows_hold_charges_until_they_end(counters: Counters) -> None:
    tokens = window("tokens", 100, take=False, ttl_s=0.5)
    now = time.time()
    assert (await counters.take([tokens], "a", now)).values == (0,)
    await counters.add([Charge(tokens.name, 60.5, tokens.ttl_s), Charge(tokens.name, 40, tokens.ttl_s)])
    assert (await counters.take([tokens], "b", now)).refused == 0
    await asyncio.sleep(0.6)
    assert (await counters.take([tokens], "c", time.time())).values == (0,)


async def test_leases_are_given_back_or_expire(counters: Counters) -> None:
    slots = Counter(f"test:{time.time_ns()}:slots", "lease", 2, True, 60)
    now = time.time()
    assert (await counters.take([slots], "a", now)).values == (1,)
    assert (await counters.take([slots], "b", now)).values == (2,)
    assert (await counters.take([slots], "c", now)).refused == 0
    await counters.release([slots.name], "a")
    assert (await counters.take([slots], "c", now)).values == (2,)
    # A holder that never gave its slot back (its replica died) loses it once the lease ends.
    assert (await counters.take([slots], "d", now + 61)).values == (1,)


async def test_a_draw_takes_what_every_budget_has_room_for(counters: Counters) -> None:
    prefix = f"test:{time.time_ns()}:"
    key, team, spend = (Window(prefix + "key", 60, 1.0), Window(prefix + "team", 60, 0.5),
                        Window(prefix + "unlimited", 60))
    assert await counters.draw([key, team, spend], 0.25) == 0.25
    await counters.add([Charge(team.name, 0.15, 60)])  # a direct request of the team's
    # The team has 0.1 left: that is all there is, and it is charged to the key and the spend window too.
    assert await counters.draw([key, team, spend], 0.25) == pytest.approx(0.1)
    assert await counters.draw([key, team, spend], 0.25) == 0.0
    # Giving back what was not spent (a negative charge) makes room again.
    await counters.add([Charge(window.name, -0.2, 60) for window in (key, team, spend)])
    assert await counters.draw([key], 10) == pytest.approx(1.0 - 0.15)


@pytest.mark.parametrize(("policy", "drawn"), [("open", 0.2), ("closed", 0.0)])
async def test_a_draw_with_redis_down_follows_the_failure_policy(policy: str, drawn: float) -> None:
    cache = CacheSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.2)
    metrics = Metrics([])
    limits = KeyLimits(LimitsSettings(redis_failure=policy), cache, metrics)
    grant = Grant(holder="run", spend_windows=[Window("test:down", 60, 1.0)])
    try:
        assert await limits.draw(grant, 0.2) == drawn
        assert await limits.draw(grant, 0.2) == drawn  # skipped while Redis is known down
    finally:
        await limits.aclose()
    assert grant.drawn_usd == 0.0  # nothing was charged: nothing goes back at the end
    assert metrics.registry.get_sample_value("rlm_proxy_limits_unavailable_total") == 2
