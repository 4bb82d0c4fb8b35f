"""Counters for the per-key and per-team limits: in Redis (shared by every replica, each step one atomic
Lua script) or in this process.

Two kinds. A `window` counter is a number that lives until its fixed window ends (requests and tokens
per minute, dollars per budget period). A `lease` set holds who has a parallel slot, each entry with its
own expiry, so that the slots of a replica that died come back by themselves. `take` checks all of a
request's counters together and only when none is at its limit counts the request in those that count
requests or slots: all or nothing, in one step, so that replicas racing for the last slot cannot both win.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from proxy.cache import redis_client
from proxy.config import CacheSettings

SWEEP_S = 60.0  # how often the in-process counters drop what has expired

# KEYS: the counters. ARGV: now (epoch s), holder, then per counter: kind, limit, take (1/0), ttl (ms).
# Returns {0, values...} when the request was counted, or {index (1-based), value} of a counter at its limit.
TAKE_SCRIPT = """
local now, holder = tonumber(ARGV[1]), ARGV[2]
local values = {}
for i, key in ipairs(KEYS) do
  local kind, limit = ARGV[4 * i - 1], tonumber(ARGV[4 * i])
  local value
  if kind == 'lease' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    value = redis.call('ZCARD', key)
  else
    value = tonumber(redis.call('GET', key) or '0')
  end
  if value >= limit then return {i, tostring(value)} end
  values[i] = value
end
local result = {0}
for i, key in ipairs(KEYS) do
  local kind, take, ttl = ARGV[4 * i - 1], ARGV[4 * i + 1], tonumber(ARGV[4 * i + 2])
  if take == '1' then
    if kind == 'lease' then
      redis.call('ZADD', key, now + ttl / 1000, holder)
      redis.call('PEXPIRE', key, ttl)
    else
      redis.call('INCR', key)
      if ttl > 0 and redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ttl) end
    end
    values[i] = values[i] + 1
  end
  result[i + 1] = tostring(values[i])
end
return result
"""
# KEYS: window counters. ARGV: the amount wanted, then per counter: limit ('' for none), ttl (ms).
# Adds to every counter what all of them have room for, at most the amount; returns it.
DRAW_SCRIPT = """
local amount = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if ARGV[2 * i] ~= '' then
    amount = math.min(amount, tonumber(ARGV[2 * i]) - tonumber(redis.call('GET', key) or '0'))
  end
end
if amount <= 0 then return '0' end
for i, key in ipairs(KEYS) do
  redis.call('INCRBYFLOAT', key, amount)
  local ttl = tonumber(ARGV[2 * i + 1])
  if ttl > 0 and redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ttl) end
end
return tostring(amount)
"""
# KEYS: window counters. ARGV: per counter: amount, ttl (ms; 0: no expiry).
ADD_SCRIPT = """
for i, key in ipairs(KEYS) do
  redis.call('INCRBYFLOAT', key, ARGV[2 * i - 1])
  local ttl = tonumber(ARGV[2 * i])
  if ttl > 0 and redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ttl) end
end
return 1
"""


@dataclass(frozen=True)
class Counter:
    name: str
    kind: Literal["window", "lease"]
    limit: float
    take: bool  # counts this request (requests, slots); else only checked (tokens, dollars)
    ttl_s: float  # a window: until it ends (0: never); a lease: how long it holds


@dataclass(frozen=True)
class Window:
    """A window counter a request charges when it ends (tokens, dollars)."""

    name: str
    ttl_s: float  # until the window ends (0: never)
    limit: float | None = None  # dollars: the budget, which draws stay within


@dataclass(frozen=True)
class Charge:
    name: str  # a window counter
    amount: float
    ttl_s: float


@dataclass(frozen=True)
class Taken:
    refused: int | None  # the index of the first counter at its limit (nothing was counted then)
    values: tuple[float, ...]  # each counter's value, the request included; [value] of `refused`


class Counters(Protocol):
    async def take(self, counters: Sequence[Counter], holder: str, now: float) -> Taken: ...

    async def add(self, charges: Sequence[Charge]) -> None: ...

    async def draw(self, windows: Sequence[Window], usd: float) -> float:
        """Add to every window what all of them have room for under their limits, at most `usd`."""

    async def release(self, names: Sequence[str], holder: str) -> None: ...

    async def aclose(self) -> None: ...


class RedisCounters:
    def __init__(self, settings: CacheSettings) -> None:
        self._redis = redis_client(settings)
        self._take = self._redis.register_script(TAKE_SCRIPT)
        self._add = self._redis.register_script(ADD_SCRIPT)
        self._draw = self._redis.register_script(DRAW_SCRIPT)

    async def take(self, counters: Sequence[Counter], holder: str, now: float) -> Taken:
        args: list[str | float | int] = [now, holder]
        for counter in counters:
            args += [counter.kind, counter.limit, int(counter.take), int(counter.ttl_s * 1000)]
        reply = await self._take(keys=[counter.name for counter in counters], args=args)
        refused = int(reply[0])
        return Taken(refused - 1 if refused else None, tuple(float(value) for value in reply[1:]))

    async def add(self, charges: Sequence[Charge]) -> None:
        args: list[float | int] = []
        for charge in charges:
            args += [charge.amount, int(charge.ttl_s * 1000)]
        await self._add(keys=[charge.name for charge in charges], args=args)

    async def draw(self, windows: Sequence[Window], usd: float) -> float:
        args: list[float | int | str] = [usd]
        for window in windows:
            args += ["" if window.limit is None else window.limit, int(window.ttl_s * 1000)]
        return float(await self._draw(keys=[window.name for window in windows], args=args))

    async def release(self, names: Sequence[str], holder: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrem(name, holder)
            await pipe.execute()

    async def aclose(self) -> None:
        await self._redis.aclose()


class MemoryCounters:
    """The same counters for one process (no Redis): limits then hold per replica."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, float]] = {}  # name -> (value, ends at; 0: never)
        self._leases: dict[str, dict[str, float]] = {}  # name -> holder -> expires at
        self._next_sweep = 0.0

    async def take(self, counters: Sequence[Counter], holder: str, now: float) -> Taken:
        self._sweep(now)
        values = [self._value(counter, now) for counter in counters]
        for index, (counter, value) in enumerate(zip(counters, values, strict=True)):
            if value >= counter.limit:
                return Taken(index, (value,))
        for index, counter in enumerate(counters):
            if not counter.take:
                continue
            if counter.kind == "lease":
                self._leases.setdefault(counter.name, {})[holder] = now + counter.ttl_s
            else:
                ends = self._ends(counter.name, counter.ttl_s, now)
                self._windows[counter.name] = (values[index] + 1, ends)
            values[index] += 1
        return Taken(None, tuple(values))

    async def add(self, charges: Sequence[Charge]) -> None:
        now = time.time()
        for charge in charges:
            value = self._window_value(charge.name, now)
            self._windows[charge.name] = (value + charge.amount, self._ends(charge.name, charge.ttl_s, now))

    async def draw(self, windows: Sequence[Window], usd: float) -> float:
        now = time.time()
        room = [window.limit - self._window_value(window.name, now) for window in windows
                if window.limit is not None]
        amount = min([usd, *room])
        if amount <= 0:
            return 0.0
        await self.add([Charge(window.name, amount, window.ttl_s) for window in windows])
        return amount

    async def release(self, names: Sequence[str], holder: str) -> None:
        for name in names:
            self._leases.get(name, {}).pop(holder, None)

    async def aclose(self) -> None:
        self._windows.clear()
        self._leases.clear()

    def _value(self, counter: Counter, now: float) -> float:
        if counter.kind == "lease":
            return float(sum(1 for ends in self._leases.get(counter.name, {}).values() if ends > now))
        return self._window_value(counter.name, now)

    def _window_value(self, name: str, now: float) -> float:
        return self._windows[name][0] if self._live(name, now) else 0.0

    def _live(self, name: str, now: float) -> bool:
        window = self._windows.get(name)
        return window is not None and (window[1] == 0 or window[1] > now)

    def _ends(self, name: str, ttl_s: float, now: float) -> float:
        """A window keeps the end it was given when it started (as Redis keeps a key's first expiry)."""
        if self._live(name, now):
            return self._windows[name][1]
        return now + ttl_s if ttl_s > 0 else 0.0

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_S
        self._windows = {name: window for name, window in self._windows.items() if self._live(name, now)}
        self._leases = {name: live for name, holders in self._leases.items()
                        if (live := {holder: ends for holder, ends in holders.items() if ends > now})}


def counters_for(settings: CacheSettings) -> Counters:
    return RedisCounters(settings) if settings.redis_url else MemoryCounters()
