"""The limit counters' two backends behave alike: the in-process one, and Redis (a real redis-server)
through the Lua scripts: all or nothing, windows that end, leases that expire or are given back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from proxy.config import CacheSettings
from proxy.limit_counters import Charge, Counter, Counters, MemoryCounters, RedisCounters
from tests.harness import Redis


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
