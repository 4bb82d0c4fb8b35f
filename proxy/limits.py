"""Per-key and per-team limits: requests and tokens per minute, parallel requests, parallel RLM runs (per
key) and spend per budget period, enforced across replicas by the counters of proxy/limit_counters.py.

Windows are fixed and aligned to the epoch: rpm and tpm count per calendar minute, spend per
`budget_duration` (a `1d` budget resets at 00:00 UTC, `30d` every 30 days counted from 1970-01-01), or
forever without one. A request is counted (and its slots taken) when it is admitted; its tokens and dollars,
every upstream call it made included (RLM sub-calls too), when it ends. So a request admitted under a limit
may end above it, and the requests after it are refused until the window turns. An RLM run instead draws
dollars from its key's and team's budgets before it spends them (`KeyBudget`), a share of the budget at a
time, so that parallel runs on any replica cannot each spend what is left: when a draw comes back short,
the run stops spending and answers with what it has; what it drew and did not spend goes back when it ends.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field

from proxy.auth import Identity
from proxy.config import CacheSettings, Limits, LimitsSettings, duration_seconds
from proxy.errors import ProxyError
from proxy.limit_counters import Charge, Counter, Counters, Window, counters_for
from proxy.metering import Metering
from proxy.metrics import Metrics

log = logging.getLogger("rlm_proxy")

# One hash tag for every counter: a request's key and team counters are checked in one script, which Redis
# Cluster runs only over keys of one slot (so on a cluster they all live on one shard).
KEY_PREFIX = "{rlm-proxy:limit}:v1:"
GRANT_STATE = "limit_grant"  # where a route leaves its request's Grant in the ASGI scope's state
SPENDER_STATE = "spender"  # ... and the Identity its spend is recorded for (proxy/spend.py)
MINUTE_S = 60
LEASE_RETRY_S = 1  # a parallel slot may free at any moment
# An RLM run draws at least this share of its smallest budget at a time: few trips to Redis, and parallel
# runs near the end of a budget hold little of it each.
DRAW_SHARE = 0.05


@dataclass(frozen=True)
class _Check:
    counter: Counter
    limit: str  # rpm, tpm, budget, parallel_requests, parallel_rlm_runs
    scope: str  # key, team
    resets_at: float  # epoch s; 0 for slots


@dataclass
class Grant:
    """What admitting a request took, and what it owes when it ends."""

    holder: str
    leases: list[str] = field(default_factory=list)
    token_windows: list[Window] = field(default_factory=list)
    spend_windows: list[Window] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    drawn_usd: float = 0.0  # what its RLM run took from the spend windows ahead of spending it

    @property
    def has_budget(self) -> bool:
        return any(window.limit is not None for window in self.spend_windows)


_REFUSALS = {"rpm": ("requests per minute", "rate_limit_exceeded"),
             "tpm": ("tokens per minute", "rate_limit_exceeded"),
             "budget": ("budget in US dollars", "budget_exceeded"),
             "parallel_requests": ("parallel requests", "parallel_requests_exceeded"),
             "parallel_rlm_runs": ("parallel RLM runs", "parallel_rlm_runs_exceeded")}


class KeyLimits:
    def __init__(self, settings: LimitsSettings, cache: CacheSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._retry_s = cache.redis_retry_s
        self._counters: Counters = counters_for(cache)
        self._metrics = metrics
        self._skip_until = 0.0  # after a Redis failure, skip it until then

    async def admit(self, identity: Identity, rlm: bool) -> Grant | None:
        """Count the request against its key's and team's limits, or refuse it with 429; None when
        neither has any limit (or Redis failed and the policy lets requests through)."""
        now = time.time()
        grant = Grant(holder=uuid.uuid4().hex)
        checks: list[_Check] = []
        for scope, name, limits in (("key", identity.key_hash, identity.key),
                                    ("team", identity.team, identity.team_limits)):
            if limits is not None and name is not None:
                checks += self._checks(grant, f"{KEY_PREFIX}{scope}:{name}:", scope, limits, now)
        if identity.key is not None and rlm and identity.key.max_parallel_rlm_runs is not None:
            checks.append(self._lease(f"{KEY_PREFIX}key:{identity.key_hash}:rlm_runs",
                                      identity.key.max_parallel_rlm_runs, "parallel_rlm_runs", "key"))
        if not checks:
            return grant if grant.spend_windows else None  # nothing to check, spend to count
        if time.monotonic() < self._skip_until:
            return self._unavailable(None)
        try:
            taken = await self._counters.take([check.counter for check in checks], grant.holder, now)
        except Exception as error:
            return self._unavailable(error)
        self._skip_until = 0.0
        if taken.refused is not None:
            raise self._refusal(checks[taken.refused], now)
        grant.leases = [check.counter.name for check in checks if check.counter.kind == "lease"]
        grant.headers = _headers(checks, taken.values, now)
        return grant

    async def draw(self, grant: Grant, usd: float) -> float:
        """Take up to `usd` (at least a share of the smallest budget) from the request's budgets at once;
        what was taken, which is charged already. When the counters fail, the policy decides: all of it
        (open) or nothing (closed)."""
        smallest = min(window.limit for window in grant.spend_windows if window.limit is not None)
        if time.monotonic() >= self._skip_until:
            try:
                taken = await self._counters.draw(grant.spend_windows, max(usd, DRAW_SHARE * smallest))
            except Exception as error:
                self._failed(error)
            else:
                grant.drawn_usd += taken
                return taken
        self._metrics.limits_unavailable.inc()
        return usd if self._settings.redis_failure == "open" else 0.0

    async def settle(self, grant: Grant, metering: Metering) -> None:
        """Give back the request's slots and charge what it spent (less what it drew ahead: a negative
        charge gives back what it drew and did not spend)."""
        charges = [Charge(window.name, metering.tokens, window.ttl_s) for window in grant.token_windows
                   if metering.tokens]
        owed = metering.cost_usd - grant.drawn_usd
        charges += [Charge(window.name, owed, window.ttl_s) for window in grant.spend_windows if owed]
        try:
            if grant.leases:
                await self._counters.release(grant.leases, grant.holder)
            if charges:
                await self._counters.add(charges)
        except Exception as error:
            self._failed(error)
            self._metrics.limits_unavailable.inc()

    async def aclose(self) -> None:
        await self._counters.aclose()

    def _checks(self, grant: Grant, prefix: str, scope: str, limits: Limits, now: float) -> list[_Check]:
        minute = math.floor(now / MINUTE_S)
        minute_ends = (minute + 1) * MINUTE_S
        checks = []
        if limits.rpm is not None:
            checks.append(_Check(Counter(f"{prefix}requests:{minute}", "window", limits.rpm, True,
                                         minute_ends - now), "rpm", scope, minute_ends))
        if limits.tpm is not None:
            name = f"{prefix}tokens:{minute}"
            grant.token_windows.append(Window(name, minute_ends - now))
            checks.append(_Check(Counter(name, "window", limits.tpm, False, minute_ends - now), "tpm", scope,
                                 minute_ends))
        # Spend is counted for every key and team with limits, so that it can be read per period.
        if limits.budget_duration is not None:
            period_s = duration_seconds(limits.budget_duration)
            period = math.floor(now / period_s)
            name, ends = f"{prefix}spend:{limits.budget_duration}:{period}", (period + 1) * period_s
        else:
            name, ends = f"{prefix}spend:total", 0.0
        ttl_s = ends - now if ends else 0.0
        grant.spend_windows.append(Window(name, ttl_s, limits.max_budget_usd))
        if limits.max_budget_usd is not None:
            budget = Counter(name, "window", limits.max_budget_usd, False, ttl_s)
            checks.append(_Check(budget, "budget", scope, ends))
        if limits.max_parallel_requests is not None:
            checks.append(self._lease(f"{prefix}parallel", limits.max_parallel_requests, "parallel_requests",
                                      scope))
        return checks

    def _lease(self, name: str, limit: int, kind: str, scope: str) -> _Check:
        return _Check(Counter(name, "lease", limit, True, self._settings.lease_s), kind, scope, 0.0)

    def _refusal(self, check: _Check, now: float) -> ProxyError:
        self._metrics.limit_rejected.labels(check.limit, check.scope).inc()
        what, code = _REFUSALS[check.limit]
        message = f"This {check.scope} has reached its limit of {check.counter.limit:g} {what}"
        if check.counter.kind == "window" and not check.resets_at:  # a budget without a period
            return ProxyError(429, message + "; it has no budget_duration, so it does not reset.", code=code)
        retry_s = max(1, math.ceil(check.resets_at - now)) if check.resets_at else LEASE_RETRY_S
        headers = {"retry-after": str(retry_s)}
        kind = {"rpm": "requests", "tpm": "tokens"}.get(check.limit)
        if kind is not None:
            headers |= {f"x-ratelimit-limit-{kind}": f"{check.counter.limit:g}",
                        f"x-ratelimit-remaining-{kind}": "0", f"x-ratelimit-reset-{kind}": f"{retry_s}s"}
        return ProxyError(429, f"{message}; try again in {retry_s} s.", code=code, headers=headers)

    def _unavailable(self, error: Exception | None) -> None:
        if error is not None:
            self._failed(error)
        if self._settings.redis_failure == "closed":
            raise ProxyError(503, "Limits cannot be checked (their store is unavailable); try again shortly.",
                             code="limits_unavailable", error_type="server_error",
                             headers={"retry-after": "1"})
        self._metrics.limits_unavailable.inc()
        return None

    def _failed(self, error: Exception) -> None:
        if self._skip_until == 0.0:  # one line per outage
            log.warning("limit counters failed (%s: %s); requests go %s until Redis answers again",
                        type(error).__name__, error,
                        "unlimited" if self._settings.redis_failure == "open" else "refused (503)")
        self._skip_until = time.monotonic() + self._retry_s


def _headers(checks: list[_Check], values: tuple[float, ...], now: float) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for requests and tokens: of the tightest limit of each."""
    headers: dict[str, str] = {}
    for limit, kind in (("rpm", "requests"), ("tpm", "tokens")):
        mine = [(check.counter.limit - value, check) for check, value in zip(checks, values, strict=True)
                if check.limit == limit]
        if not mine:
            continue
        remaining, check = min(mine, key=lambda pair: pair[0])
        headers |= {f"x-ratelimit-limit-{kind}": f"{check.counter.limit:g}",
                    f"x-ratelimit-remaining-{kind}": f"{max(0, math.floor(remaining))}",
                    f"x-ratelimit-reset-{kind}": f"{max(0.0, check.resets_at - now):.0f}s"}
    return headers


class KeyBudget:
    """The budgets an RLM run spends from (its key's and team's), as the engine draws from them."""

    def __init__(self, limits: KeyLimits, grant: Grant) -> None:
        self._limits = limits
        self._grant = grant

    async def draw(self, usd: float) -> float:
        return await self._limits.draw(self._grant, usd)
