"""Stored responses of the Responses API: a Response, the conversation before it, and whose it is.

The store reuses the cache's backends (`proxy.cache`): Redis when `cache.redis_url` is set, so a
conversation continues on any replica; else a bounded in-process LRU. Each record holds the whole
conversation up to its response, so continuing one costs a single read. A key sees only the responses
made with it: any other key gets the same 404 as for a response that never existed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.cache import MemoryStore, RedisStore, Store
from proxy.config import CacheSettings, ResponsesSettings
from proxy.errors import ProxyError, store_unavailable

log = logging.getLogger("rlm_proxy")

KEY_PREFIX = "rlm-proxy:response:v1:"


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]  # the conversation before the response's output, oldest first

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """What a request continuing from this response follows: its input, then its output."""
        return [*self.input_items, *self.response.get("output", [])]


def not_found(response_id: str, param: str | None = None) -> ProxyError:
    return ProxyError(404, f"No response with id '{response_id}' is stored for this key (it may have "
                      "expired, been deleted, or been created with store: false).", code="response_not_found",
                      param=param)


class ResponseStore:
    def __init__(self, settings: ResponsesSettings, cache: CacheSettings) -> None:
        self._ttl_s = settings.store_ttl_s
        self._store: Store = RedisStore(cache) if cache.redis_url \
            else MemoryStore(settings.max_bytes, settings.max_stored)

    async def save(self, owner: str, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        """Keep a finished response; a store failure is logged, never the client's problem."""
        record = orjson.dumps({"owner": owner, "response": response, "input_items": input_items})
        try:
            await self._store.set(KEY_PREFIX + response["id"], record, self._ttl_s)
        except Exception as error:
            log.warning("storing response %s failed (%s: %s)", response["id"], type(error).__name__, error)

    async def load(self, owner: str, response_id: str, param: str | None = None) -> StoredResponse:
        record = await self._read(response_id)
        if record is None or record.get("owner") != owner:
            raise not_found(response_id, param)
        return StoredResponse(record["response"], record["input_items"])

    async def delete(self, owner: str, response_id: str) -> None:
        await self.load(owner, response_id)
        try:
            await self._store.delete(KEY_PREFIX + response_id)
        except Exception as error:
            raise store_unavailable("response store", "store_unavailable", error) from error

    async def _read(self, response_id: str) -> dict[str, Any] | None:
        try:
            raw = await self._store.get(KEY_PREFIX + response_id)
        except Exception as error:
            raise store_unavailable("response store", "store_unavailable", error) from error
        return None if raw is None else orjson.loads(raw)

    async def aclose(self) -> None:
        await self._store.aclose()
