"""Which deployment of a model group takes the next call: LiteLLM's routing strategies, rpm/tpm limits and
cooldowns, as a small in-process state machine.

Pure: no I/O and an injected clock, so that every rule is unit-tested without a server. The upstream client
tells it when a call starts, answers, fails and ends. State is per process, as with LiteLLM without Redis.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from proxy.registry import Deployment
from proxy.router_config import RouterSettings, RoutingStrategy

WINDOW_S = 60.0  # rpm, tpm and allowed_fails count per minute, as in LiteLLM
LATENCY_SAMPLES = 10  # latency-based routing averages a deployment's last few answers


@dataclass
class _State:
    in_flight: int = 0
    window: int = -1  # the minute the counts below belong to
    requests: int = 0
    tokens: int = 0
    fails: int = 0
    cooldown_until: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


class Unavailable(Exception):
    """No deployment of the group may take a call now: all cooling down or over their rpm/tpm."""

    def __init__(self, retry_after_s: float, reason: str) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
        self.reason = reason


class Balancer:
    def __init__(self, strategy: RoutingStrategy, allowed_fails: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self._strategy = strategy
        self._allowed_fails = allowed_fails
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._states: dict[str, _State] = {}

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> Balancer:
        return cls(settings.routing_strategy, settings.allowed_fails, settings.cooldown_time)

    def pick(self, deployments: Sequence[Deployment], avoid: Collection[str] = ()) -> Deployment:
        """A deployment that may take a call, preferring those not in `avoid` (keys of ones that failed
        this request); raises `Unavailable` when none may."""
        now = self._clock()
        open_ = [d for d in deployments if self._may_take(d, now)]
        if not open_:
            raise self._unavailable(deployments, now)
        candidates = [d for d in open_ if d.key not in avoid] or open_
        if len(candidates) == 1:
            return candidates[0]
        if self._strategy == "least-busy":
            return self._lowest(candidates, lambda d: self._state(d, now).in_flight)
        if self._strategy == "latency-based-routing":
            return self._lowest(candidates, lambda d: self._mean_latency(self._state(d, now)))
        return self._shuffled(candidates)

    def has_other(self, deployments: Sequence[Deployment], avoid: Collection[str]) -> bool:
        """Whether a deployment outside `avoid` may take a call now (a retry need not wait then)."""
        now = self._clock()
        return any(d.key not in avoid and self._may_take(d, now) for d in deployments)

    def started(self, deployment: Deployment) -> None:
        state = self._state(deployment, self._clock())
        state.in_flight += 1
        state.requests += 1

    def ended(self, deployment: Deployment) -> None:
        self._state(deployment, self._clock()).in_flight -= 1

    def answered(self, deployment: Deployment, latency_s: float) -> None:
        """A call got its answer (a stream its first item) after `latency_s`."""
        self._state(deployment, self._clock()).latencies.append(latency_s)

    def used(self, deployment: Deployment, tokens: int) -> None:
        self._state(deployment, self._clock()).tokens += tokens

    def failed(self, deployment: Deployment, group_size: int) -> None:
        """A call failed in a way that says the deployment is unwell (retryable, or its credentials)."""
        now = self._clock()
        state = self._state(deployment, now)
        state.fails += 1
        # As in LiteLLM, the only deployment of a group is never cooled down: that would only turn its
        # errors into 429s (fallbacks, if any, take over when its calls fail).
        if group_size > 1 and state.fails > self._allowed_fails:
            state.cooldown_until = now + self._cooldown_s

    def _state(self, deployment: Deployment, now: float) -> _State:
        state = self._states.get(deployment.key)
        if state is None:
            state = self._states[deployment.key] = _State()
        window = int(now // WINDOW_S)
        if state.window != window:
            state.window, state.requests, state.tokens, state.fails = window, 0, 0, 0
        return state

    def _may_take(self, deployment: Deployment, now: float) -> bool:
        state = self._state(deployment, now)
        return (state.cooldown_until <= now
                and (deployment.rpm is None or state.requests < deployment.rpm)
                and (deployment.tpm is None or state.tokens < deployment.tpm))

    def _unavailable(self, deployments: Sequence[Deployment], now: float) -> Unavailable:
        next_window = (int(now // WINDOW_S) + 1) * WINDOW_S
        waits = []
        for deployment in deployments:
            state = self._state(deployment, now)
            over_limit = ((deployment.rpm is not None and state.requests >= deployment.rpm)
                          or (deployment.tpm is not None and state.tokens >= deployment.tpm))
            waits.append(max(state.cooldown_until, next_window if over_limit else now) - now)
        name = deployments[0].name
        return Unavailable(min(waits), f"No deployment of '{name}' can take a request now: each is over its "
                                       "rpm/tpm limit or cooling down after failures.")

    def _lowest(self, candidates: Sequence[Deployment], measure: Callable[[Deployment], float]) -> Deployment:
        values = [measure(d) for d in candidates]
        best = min(values)
        return self._rng.choice([d for d, value in zip(candidates, values, strict=True) if value == best])

    @staticmethod
    def _mean_latency(state: _State) -> float:
        # A deployment with no answers yet reads as the fastest, so that each one gets measured.
        return sum(state.latencies) / len(state.latencies) if state.latencies else 0.0

    def _shuffled(self, candidates: Sequence[Deployment]) -> Deployment:
        # LiteLLM's simple-shuffle: weighted by `weight`, else by rpm, else by tpm, else uniform.
        for attribute in ("weight", "rpm", "tpm"):
            weights = [getattr(d, attribute) or 0.0 for d in candidates]
            if sum(weights) > 0:
                return self._rng.choices(candidates, weights)[0]
        return self._rng.choice(candidates)
