"""Keys made through the admin API, by hash: in the Redis of `cache.redis_url` when set (every replica sees
a key as soon as it is written: there is no local copy to invalidate), else in this process's memory.

Records are `KeyEntry` objects with `key_hash` set: the plaintext of a key is never stored. They carry no
TTL, so that an expired key is still shown (and refused) until it is deleted.
"""

from __future__ import annotations

from typing import Protocol

from proxy.cache import RedisStore
from proxy.config import CacheSettings, KeyEntry
from proxy.errors import store_unavailable

KEY_PREFIX = "rlm-proxy:key:v1:"


class KeyRecords(Protocol):
    async def get(self, digest: str) -> bytes | None: ...

    async def put(self, digest: str, record: bytes) -> None: ...

    async def delete(self, digest: str) -> bool: ...

    async def digests(self) -> list[str]: ...

    async def aclose(self) -> None: ...


class MemoryKeyRecords:
    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}

    async def get(self, digest: str) -> bytes | None:
        return self._records.get(digest)

    async def put(self, digest: str, record: bytes) -> None:
        self._records[digest] = record

    async def delete(self, digest: str) -> bool:
        return self._records.pop(digest, None) is not None

    async def digests(self) -> list[str]:
        return list(self._records)

    async def aclose(self) -> None:
        self._records.clear()


class RedisKeyRecords:
    def __init__(self, settings: CacheSettings) -> None:
        self._store = RedisStore(settings)

    async def get(self, digest: str) -> bytes | None:
        return await self._store.get(KEY_PREFIX + digest)

    async def put(self, digest: str, record: bytes) -> None:
        await self._store.set(KEY_PREFIX + digest, record)

    async def delete(self, digest: str) -> bool:
        return await self._store.delete(KEY_PREFIX + digest)

    async def digests(self) -> list[str]:
        return [name.removeprefix(KEY_PREFIX) for name in await self._store.names(KEY_PREFIX)]

    async def aclose(self) -> None:
        await self._store.aclose()


class KeyStore:
    """Run-time keys; a store failure is a 503 (a key that cannot be looked up cannot be let in)."""

    def __init__(self, settings: CacheSettings) -> None:
        self._records: KeyRecords = RedisKeyRecords(settings) if settings.redis_url else MemoryKeyRecords()

    async def get(self, digest: str) -> KeyEntry | None:
        try:
            record = await self._records.get(digest)
        except Exception as error:
            raise store_unavailable("key store", "key_store_unavailable", error) from error
        return None if record is None else KeyEntry.model_validate_json(record)

    async def put(self, entry: KeyEntry) -> None:
        try:
            await self._records.put(entry.hash, entry.model_dump_json(exclude={"key"}).encode())
        except Exception as error:
            raise store_unavailable("key store", "key_store_unavailable", error) from error

    async def delete(self, digest: str) -> bool:
        try:
            return await self._records.delete(digest)
        except Exception as error:
            raise store_unavailable("key store", "key_store_unavailable", error) from error

    async def all(self) -> list[KeyEntry]:
        try:
            digests = await self._records.digests()
        except Exception as error:
            raise store_unavailable("key store", "key_store_unavailable", error) from error
        entries = [await self.get(digest) for digest in sorted(digests)]
        return [entry for entry in entries if entry is not None]  # deleted meanwhile

    async def aclose(self) -> None:
        await self._records.aclose()
