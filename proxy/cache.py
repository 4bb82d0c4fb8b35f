"""The model-call cache of RLM runs: Redis when configured, else a bounded in-process LRU.

Keys hash the canonical request (model, messages, output-affecting parameters) under a versioned
namespace; every operation touches one key, so Redis Cluster needs no hash tags. Redis failures never fail
a request: they count as errors, read as misses, and the store is skipped for a moment so that a dead
Redis does not add its timeout to every call; it is tried again afterwards and recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.config import CacheSettings

log = logging.getLogger("rlm_proxy")

KEY_VERSION = "v1"
# Parameters that change what a model answers; anything else (user, stream options...) does not.
OUTPUT_PARAMS = ("temperature", "top_p", "seed", "max_tokens", "max_completion_tokens", "stop",
                 "frequency_penalty", "presence_penalty", "response_format", "logit_bias", "n",
                 "tools", "tool_choice", "parallel_tool_calls")
CacheResult = Literal["hit", "miss", "error"]
# Per in-process entry beyond its key and value: str and bytes headers, the (expiry, value) tuple, the
# float, the ordered dict's slot and link (about 230 bytes measured with CPython 3.11).
ENTRY_OVERHEAD_BYTES = 256
MAX_ENTRY_SHARE = 1 / 16  # larger entries are not kept in process


@dataclass(frozen=True)
class CachePolicy:
    """A run's use of the cache. `scope` says whose entries the run shares (auth.Identity.cache_scope; ""
    is everyone's): required, so that no route can share a tenant's entries by forgetting it. From the
    client's Cache-Control: `no-cache` skips reads, `no-store` skips writes."""

    scope: str
    read: bool = True
    write: bool = True

    @classmethod
    def from_header(cls, value: str | None, scope: str) -> CachePolicy:
        directives = {part.strip().lower() for part in (value or "").split(",")}
        return cls(read="no-cache" not in directives, write="no-store" not in directives, scope=scope)


def cache_key(namespace: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any],
              scope: str) -> str:
    request: dict[str, Any] = {"model": model, "messages": messages,
                               "params": {k: params[k] for k in OUTPUT_PARAMS if k in params}}
    if scope:  # the global scope keeps the keys it had before scopes existed
        request["scope"] = scope
    canonical = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
    return f"{namespace}:{KEY_VERSION}:{hashlib.sha256(canonical).hexdigest()}"


class Store(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """LRU with per-entry expiry, bounded by bytes and by entries: the embedded default, per process."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes_used = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if key in self._entries:
            self._drop(key)
        # One huge entry would flush much of the cache for a single reuse.
        if entry_bytes(key, value) > self._max_bytes * MAX_ENTRY_SHARE:
            return
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self.bytes_used += entry_bytes(key, value)
        while self.bytes_used > self._max_bytes or len(self._entries) > self._max_entries:
            self._drop(next(iter(self._entries)))

    async def delete(self, key: str) -> bool:
        if key not in self._entries:
            return False
        self._drop(key)
        return True

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes_used -= entry_bytes(key, value)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._entries.clear()
        self.bytes_used = 0


def entry_bytes(key: str, value: bytes) -> int:
    """What an entry costs the process: its key and value, and the objects that hold them."""
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


def redis_client(settings: CacheSettings) -> redis.Redis | RedisCluster:
    """A client of `cache.redis_url` with its timeouts: a dead Redis costs at most the timeout."""
    assert settings.redis_url is not None
    # One immediate retry on a broken connection: after a Redis restart every pooled connection is
    # stale, and the first command on each would otherwise fail although Redis is back.
    options: dict[str, Any] = {"socket_timeout": settings.redis_timeout_s,
                               "socket_connect_timeout": settings.redis_timeout_s,
                               "retry": Retry(NoBackoff(), 1, (RedisConnectionError,))}
    return (RedisCluster.from_url(settings.redis_url, **options) if settings.redis_cluster
            else redis.Redis.from_url(settings.redis_url, **options))


class RedisStore:
    def __init__(self, settings: CacheSettings) -> None:
        self._redis = redis_client(settings)

    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(key)

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        await self._redis.set(key, value, ex=ttl_s)

    async def names(self, prefix: str) -> list[str]:
        """The keys under `prefix` (SCAN: never blocks Redis; on a cluster, every primary is scanned)."""
        return [name.decode() async for name in self._redis.scan_iter(match=prefix + "*", count=1000)]

    async def delete(self, key: str) -> bool:
        return bool(await self._redis.delete(key))

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()

    # Claims: which replica makes a call that several are about to make.

    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        return bool(await self._redis.set(key, owner, nx=True, px=int(ttl_s * 1000)))

    async def renew(self, key: str, owner: str, ttl_s: float) -> bool:
        return bool(await self._redis.eval(_RENEW_IF_OWNED, 1, key, owner, int(ttl_s * 1000)))

    async def release(self, key: str, owner: str) -> None:
        await self._redis.eval(_DELETE_IF_OWNED, 1, key, owner)


# Only the claim's owner may extend or drop it: a claim that expired may belong to another replica now.
_RENEW_IF_OWNED = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                   "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end")
_DELETE_IF_OWNED = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                    "return redis.call('del', KEYS[1]) else return 0 end")
CLAIM_SUFFIX = ":claim"
FIRST_POLL_S, LAST_POLL_S = 0.02, 0.2


class Cache:
    """Lookups with single-flight: identical concurrent calls reach the model once, in this process and,
    with Redis, across the replicas sharing it (one claims the call; the others wait for its answer)."""

    def __init__(self, settings: CacheSettings, on_lookup: Callable[[CacheResult], None]) -> None:
        self._settings = settings
        self._claims = RedisStore(settings) if settings.redis_url else None
        self._store: Store = self._claims or MemoryStore(settings.max_bytes, settings.max_entries)
        self._on_lookup = on_lookup
        self._in_flight: dict[str, asyncio.Future[bytes]] = {}
        self._skip_until = 0.0  # after a store failure, skip it until then

    @property
    def backend(self) -> str:
        return "redis" if self._settings.redis_url else "memory"

    async def fetch(self, key: str, policy: CachePolicy,
                    produce: Callable[[], Awaitable[bytes]]) -> tuple[bytes, bool]:
        """The cached value (and True), or `produce()`'s (and False), stored for the next caller."""
        if policy.read:
            cached = await self._get(key)
            if cached is not None:
                return cached, True
            shared = self._in_flight.get(key)
            if shared is not None:  # someone is already asking: wait for their answer
                try:
                    return await asyncio.shield(shared), True
                except asyncio.CancelledError:
                    if not shared.cancelled():
                        raise  # this caller was cancelled, not the one it waited for
                    # The one it waited for went away (its client left): ask for ourselves.
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if policy.read:
            self._in_flight[key] = future
        try:
            value, from_another = await self._once_across_replicas(key, policy, produce)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # waiters re-raise it; mark it retrieved so asyncio does not log it
            raise
        finally:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
        future.set_result(value)
        return value, from_another

    async def lookup(self, key: str) -> bytes | None:
        """The cached value, or None: a read, never a call (a replay takes its calls from the cache alone)."""
        return await self._get(key)

    async def _once_across_replicas(self, key: str, policy: CachePolicy,
                                    produce: Callable[[], Awaitable[bytes]]) -> tuple[bytes, bool]:
        """`produce()`'s value (and False), or, when another replica is making the same call, its answer
        from the store (and True). A replica claims a call in Redis for `shared_flight_lock_s`, renewed
        while it works; the others poll for the answer, and call themselves once the claim is gone without
        one (the holder failed or died) or after `shared_flight_wait_s`. Only where the answer will be
        written and may be read: a no-store call could not be shared, a no-cache one must not wait."""
        claims = self._claims
        if claims is None or not (policy.read and policy.write) or time.monotonic() < self._skip_until:
            return await self._produced(key, policy, produce), False
        claim, owner = key + CLAIM_SUFFIX, uuid.uuid4().hex
        deadline = time.monotonic() + self._settings.shared_flight_wait_s
        pause, claimed = FIRST_POLL_S, False
        try:
            while not (claimed := await claims.claim(claim, owner, self._settings.shared_flight_lock_s)):
                if (value := await self._store.get(key)) is not None:
                    return value, True
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, LAST_POLL_S)
        except Exception as error:
            self._failed("claim", error)
        if not claimed:  # Redis failing, or the wait ran out: call, as without a claim
            return await self._produced(key, policy, produce), False
        try:
            # The holder may have finished between the last poll and this claim.
            if pause > FIRST_POLL_S and (value := await self._store.get(key)) is not None:
                return value, True
            async with self._renewing(claims, claim, owner):
                # Stored before the claim goes: a waiter that finds neither would call again.
                return await self._produced(key, policy, produce), False
        finally:
            with contextlib.suppress(Exception):
                await claims.release(claim, owner)

    async def _produced(self, key: str, policy: CachePolicy,
                        produce: Callable[[], Awaitable[bytes]]) -> bytes:
        value = await produce()
        if policy.write:
            await self._set(key, value)
        return value

    @contextlib.asynccontextmanager
    async def _renewing(self, claims: RedisStore, claim: str, owner: str) -> AsyncIterator[None]:
        async def renew() -> None:
            while True:
                await asyncio.sleep(self._settings.shared_flight_lock_s / 3)
                with contextlib.suppress(Exception):  # a lost claim only lets another replica call too
                    await claims.renew(claim, owner, self._settings.shared_flight_lock_s)

        task = asyncio.ensure_future(renew())
        try:
            yield
        finally:
            task.cancel()

    async def _get(self, key: str) -> bytes | None:
        if time.monotonic() < self._skip_until:
            self._on_lookup("error")
            return None
        try:
            value = await self._store.get(key)
        except Exception as error:
            self._failed("read", error)
            self._on_lookup("error")
            return None
        self._on_lookup("miss" if value is None else "hit")
        return value

    async def _set(self, key: str, value: bytes) -> None:
        if time.monotonic() < self._skip_until:
            return
        try:
            await self._store.set(key, value, self._settings.ttl_s)
        except Exception as error:
            self._failed("write", error)

    def _failed(self, what: str, error: Exception) -> None:
        self._skip_until = time.monotonic() + self._settings.redis_retry_s
        log.warning("cache %s failed (%s: %s); skipping the cache for %.1f s", what, type(error).__name__,
                    error, self._settings.redis_retry_s)

    async def status(self) -> str:
        try:
            await self._store.ping()
        except Exception:
            return "degraded"
        return "ok"

    async def aclose(self) -> None:
        await self._store.aclose()
