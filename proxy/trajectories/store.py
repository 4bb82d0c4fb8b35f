"""Where run records are kept: Redis with a TTL when `cache.redis_url` is set (any replica serves any run),
else a bounded in-process store (oldest run out first).

A record is stored whole (its header and events, JSON) beside its summary (the header alone), which is what
listing reads. In Redis a sorted set orders the runs by start time; members whose record expired are
dropped from it as listing meets them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from proxy.cache import ENTRY_OVERHEAD_BYTES, redis_client
from proxy.config import CacheSettings, TrajectorySettings

KEY_PREFIX = "rlm-proxy:run:v1:"
SUMMARY_PREFIX = "rlm-proxy:run-summary:v1:"
INDEX_KEY = "rlm-proxy:runs:v1"
PAGE = 100  # summaries read from Redis at a time while listing


class RunStore(Protocol):
    async def save(self, summary: dict[str, Any], record: bytes) -> None: ...

    async def load(self, run_id: str) -> bytes | None: ...

    def newest_first(self, after: str | None) -> AsyncIterator[dict[str, Any]]:
        """Summaries, newest run first, starting after the run `after` (None: from the newest)."""

    async def delete(self, run_id: str) -> bool: ...

    async def aclose(self) -> None: ...


def run_store(settings: TrajectorySettings, cache: CacheSettings) -> RunStore:
    return RedisRuns(cache, settings.ttl_s) if cache.redis_url else \
        MemoryRuns(settings.max_bytes, settings.max_runs, settings.ttl_s)


class MemoryRuns:
    """Records in start order, bounded by bytes and count; the oldest go first, and any after `ttl_s`."""

    def __init__(self, max_bytes: int, max_runs: int, ttl_s: int) -> None:
        self._max_bytes, self._max_runs, self._ttl_s = max_bytes, max_runs, ttl_s
        self._runs: OrderedDict[str, tuple[dict[str, Any], bytes]] = OrderedDict()
        self.bytes_used = 0

    async def save(self, summary: dict[str, Any], record: bytes) -> None:
        run_id = summary["id"]
        if (old := self._runs.get(run_id)) is not None:
            self.bytes_used -= _size(run_id, old[1])
        self._runs[run_id] = (summary, record)  # a saved run keeps its place: order is by start
        self.bytes_used += _size(run_id, record)
        self._expire()
        while self.bytes_used > self._max_bytes or len(self._runs) > self._max_runs:
            self._drop(next(iter(self._runs)))

    async def load(self, run_id: str) -> bytes | None:
        self._expire()
        entry = self._runs.get(run_id)
        return None if entry is None else entry[1]

    async def newest_first(self, after: str | None) -> AsyncIterator[dict[str, Any]]:
        self._expire()
        ids = list(reversed(self._runs))
        start = ids.index(after) + 1 if after in self._runs else 0
        for run_id in ids[start:]:
            if (entry := self._runs.get(run_id)) is not None:
                yield entry[0]

    async def delete(self, run_id: str) -> bool:
        if run_id not in self._runs:
            return False
        self._drop(run_id)
        return True

    async def aclose(self) -> None:
        self._runs.clear()
        self.bytes_used = 0

    def _expire(self) -> None:
        oldest = time.time() - self._ttl_s
        while self._runs and next(iter(self._runs.values()))[0]["started_at"] < oldest:
            self._drop(next(iter(self._runs)))

    def _drop(self, run_id: str) -> None:
        _, record = self._runs.pop(run_id)
        self.bytes_used -= _size(run_id, record)


def _size(run_id: str, record: bytes) -> int:
    # The summary is a small share of the record (its header); counted in the overhead.
    return len(run_id) + len(record) + ENTRY_OVERHEAD_BYTES


class RedisRuns:
    def __init__(self, cache: CacheSettings, ttl_s: int) -> None:
        self._redis: redis.Redis | RedisCluster = redis_client(cache)
        self._ttl_s = ttl_s

    async def save(self, summary: dict[str, Any], record: bytes) -> None:
        run_id = summary["id"]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(KEY_PREFIX + run_id, record, ex=self._ttl_s)
            pipe.set(SUMMARY_PREFIX + run_id, orjson.dumps(summary), ex=self._ttl_s)
            pipe.zadd(INDEX_KEY, {run_id: summary["started_at"]})
            pipe.zremrangebyscore(INDEX_KEY, "-inf", time.time() - self._ttl_s)
            await pipe.execute()

    async def load(self, run_id: str) -> bytes | None:
        return await self._redis.get(KEY_PREFIX + run_id)

    async def newest_first(self, after: str | None) -> AsyncIterator[dict[str, Any]]:
        start = 0
        if after is not None:
            rank = await self._redis.zrevrank(INDEX_KEY, after)
            start = 0 if rank is None else rank + 1
        while True:
            ids = [i.decode() for i in await self._redis.zrevrange(INDEX_KEY, start, start + PAGE - 1)]
            if not ids:
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    pipe.get(SUMMARY_PREFIX + run_id)
                found = await pipe.execute()
            gone = [run_id for run_id, raw in zip(ids, found, strict=True) if raw is None]
            if gone:
                await self._redis.zrem(INDEX_KEY, *gone)
            for raw in found:
                if raw is not None:
                    yield orjson.loads(raw)
            start += len(ids) - len(gone)

    async def delete(self, run_id: str) -> bool:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(KEY_PREFIX + run_id)  # one key per command: the keys may be on different nodes
            pipe.delete(SUMMARY_PREFIX + run_id)
            pipe.zrem(INDEX_KEY, run_id)
            deleted, _, _ = await pipe.execute()
        return bool(deleted)

    async def aclose(self) -> None:
        await self._redis.aclose()
