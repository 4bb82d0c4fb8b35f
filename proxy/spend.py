"""The spend ledger: what every request cost upstream (direct calls, RLM root and sub-calls) and what the
cache saved it, per key, team and model and per UTC day, for the admin's reports (GET /spend/keys,
GET /spend/report) and for Prometheus (per key alias and team, with a bounded number of series).

With `cache.redis_url` each day is one Redis hash that every replica adds to (HINCRBYFLOAT, kept for
`spend.retention_days`); without it, the process keeps its own days. A request is recorded when its
response is done (proxy/middleware.py), cancelled ones too: what they spent was spent.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, Protocol

import orjson

from proxy.auth import ANONYMOUS, Identity
from proxy.cache import redis_client
from proxy.config import CacheSettings, SpendSettings
from proxy.metering import Metering
from proxy.metrics import OTHER, Metrics

log = logging.getLogger("rlm_proxy")

# One hash tag: a report reads many days in one pipeline, which Redis Cluster runs over keys of one slot.
PREFIX = "{rlm-proxy:spend}:v1:"
SPENDERS = PREFIX + "keys"  # key hash -> {"alias", "team"} of every key that spent
FIGURES = ("requests", "prompt_tokens", "completion_tokens", "spend_usd", "saved_usd")
NO_MODEL = "-"  # where a request's count goes: it is not per model
GroupBy = Literal["key", "team", "model"]
UNNAMED, NO_TEAM = "unnamed", "none"
DAY_S = 86_400


class SpendStore(Protocol):
    async def add(self, day: str, increments: dict[str, float], spender: tuple[str, str], ttl_s: int) -> None:
        ...

    async def days(self, days: list[str]) -> list[dict[str, float]]: ...

    async def spenders(self) -> dict[str, dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class RedisSpendStore:
    def __init__(self, cache: CacheSettings) -> None:
        self._redis = redis_client(cache)

    async def add(self, day: str, increments: dict[str, float], spender: tuple[str, str], ttl_s: int) -> None:
        key = PREFIX + day
        async with self._redis.pipeline(transaction=False) as pipe:
            for field, value in increments.items():
                pipe.hincrbyfloat(key, field, value)
            pipe.expire(key, ttl_s)
            pipe.hset(SPENDERS, spender[0], spender[1])
            await pipe.execute()

    async def days(self, days: list[str]) -> list[dict[str, float]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(PREFIX + day)
            found = await pipe.execute()
        return [{field.decode(): float(value) for field, value in entries.items()} for entries in found]

    async def spenders(self) -> dict[str, dict[str, Any]]:
        found = await self._redis.hgetall(SPENDERS)
        return {name.decode(): orjson.loads(value) for name, value in found.items()}

    async def aclose(self) -> None:
        await self._redis.aclose()


class MemorySpendStore:
    def __init__(self, retention_days: int) -> None:
        self._retention_days = retention_days
        self._days: dict[str, defaultdict[str, float]] = {}
        self._spenders: dict[str, dict[str, Any]] = {}

    async def add(self, day: str, increments: dict[str, float], spender: tuple[str, str], ttl_s: int) -> None:
        figures = self._days.setdefault(day, defaultdict(float))
        for field, value in increments.items():
            figures[field] += value
        self._spenders[spender[0]] = orjson.loads(spender[1])
        for old in sorted(self._days)[:-self._retention_days]:  # ISO dates sort by time
            del self._days[old]

    async def days(self, days: list[str]) -> list[dict[str, float]]:
        return [dict(self._days.get(day, {})) for day in days]

    async def spenders(self) -> dict[str, dict[str, Any]]:
        return dict(self._spenders)

    async def aclose(self) -> None:
        pass


@dataclass(frozen=True)
class Row:
    key_hash: str
    model: str
    figure: str
    value: float


class SpendLedger:
    def __init__(self, settings: SpendSettings, cache: CacheSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._store: SpendStore = RedisSpendStore(cache) if cache.redis_url \
            else MemorySpendStore(settings.retention_days)
        self._metrics = metrics
        self._labels: set[tuple[str, str]] = set()
        self._failing = False

    async def record(self, identity: Identity, metering: Metering) -> None:
        """Add a finished request's spend to its key's day; a store failure is logged, never raised."""
        increments = {_field(identity.key_hash, NO_MODEL, "requests"): 1.0}
        for model, spend in metering.by_model.items():
            for figure, value in (("prompt_tokens", spend.prompt_tokens),
                                  ("completion_tokens", spend.completion_tokens),
                                  ("spend_usd", spend.cost_usd), ("saved_usd", spend.saved_usd)):
                if value:
                    increments[_field(identity.key_hash, model, figure)] = float(value)
        self._observe(identity, metering)
        spender = orjson.dumps({"alias": identity.alias, "team": identity.team}).decode()
        try:
            await self._store.add(_day(time.time()), increments, (identity.key_hash, spender),
                                  self._settings.retention_days * DAY_S)
        except Exception as error:
            if not self._failing:  # one line per outage
                log.warning("spend ledger write failed (%s: %s); spend is missing from the reports until it "
                            "works again", type(error).__name__, error)
            self._failing = True
            return
        self._failing = False

    async def report(self, start: date, end: date, group_by: GroupBy) -> list[dict[str, Any]]:
        """The figures of the days from `start` to `end` (UTC, both included), per key, team or model,
        highest spend first."""
        days = [(start + timedelta(days=number)).isoformat() for number in range((end - start).days + 1)]
        spenders = await self._store.spenders()
        groups: dict[str, dict[str, Any]] = {}
        for row in _rows(await self._store.days(days)):
            who = spenders.get(row.key_hash, {})
            name = {"key": row.key_hash, "team": who.get("team") or NO_TEAM, "model": row.model}[group_by]
            if group_by == "model" and row.model == NO_MODEL:
                continue  # request counts are per key
            group = groups.setdefault(name, _empty_group(group_by, name, who))
            group[row.figure] += row.value
        ordered = [groups[name] for name in sorted(groups, key=lambda n: (-groups[n]["spend_usd"], n))]
        for group in ordered:
            for figure in ("requests", "prompt_tokens", "completion_tokens"):
                group[figure] = int(group[figure])
        return ordered

    async def aclose(self) -> None:
        await self._store.aclose()

    def _observe(self, identity: Identity, metering: Metering) -> None:
        labels = self._series(identity)
        self._metrics.spend.labels(*labels).inc(metering.cost_usd)
        self._metrics.spend_saved.labels(*labels).inc(metering.saved_usd)

    def _series(self, identity: Identity) -> tuple[str, str]:
        """(key, team) labels: a key's alias when it has one (never its hash), at most
        `spend.metrics_max_labels` of them, later ones counted as "other"."""
        named = (identity.key is not None and identity.key.alias is not None) or identity.master \
            or identity is ANONYMOUS
        labels = (identity.alias if named else UNNAMED, identity.team or NO_TEAM)
        if labels in self._labels:
            return labels
        if len(self._labels) < self._settings.metrics_max_labels:
            self._labels.add(labels)
            return labels
        return OTHER, OTHER


def _field(key_hash: str, model: str, figure: str) -> str:
    return f"{key_hash}|{model}|{figure}"


def _rows(days: Iterable[dict[str, float]]) -> Iterable[Row]:
    for figures in days:
        for field, value in figures.items():
            key_hash, _, rest = field.partition("|")  # a model name may hold "|", a hash cannot
            model, _, figure = rest.rpartition("|")
            if figure in FIGURES:
                yield Row(key_hash, model, figure, value)


def _empty_group(group_by: GroupBy, name: str, who: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = {group_by: name}
    if group_by == "key":  # LiteLLM's names: the key's hash is its `token`
        group = {"token": name, "key_alias": who.get("alias"), "team_id": who.get("team")}
    return group | dict.fromkeys(FIGURES, 0.0)


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).date().isoformat()
