"""A run's limits, and the budget of sub-calls and dollars shared by the run and its nested runs.

Sub-calls are reserved before a batch is dispatched, at an estimated cost, so that a wide batch cannot
overshoot the budget; the estimate is replaced by the real cost when each call returns.

When the run spends from a budget that other runs share (its key's, on any replica), it draws dollars from
that budget before it spends them (`cover`), so that parallel runs cannot each spend what is left; what
it drew and did not spend goes back when the request is settled, outside the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Limit = Literal["max_iterations", "max_subcalls", "max_cost_usd", "timeout_s"]


class SharedBudget(Protocol):
    async def draw(self, usd: float) -> float:
        """Take up to `usd` (or more, to save trips) from the shared budget; what was taken."""


@dataclass(frozen=True)
class RunLimits:
    max_iterations: int
    max_depth: int
    max_subcalls: int  # 0: no sub-calls at all (the paper's code-only ablation)
    max_cost_usd: float | None
    timeout_s: float


class Budget:
    def __init__(self, limits: RunLimits, shared: SharedBudget | None = None) -> None:
        self._limits = limits
        self._shared = shared
        self.subcalls = 0
        self.cost_usd = 0.0
        self._reserved_usd = 0.0
        self._drawn_usd = 0.0
        self._shared_spent = False
        self.exhausted: Limit | None = None

    async def cover(self, usd: float) -> None:
        """Draw from the shared budget what spending `usd` more needs; when it has less, the run is out of
        budget (calls still get what was drawn)."""
        if self._shared is None or self._shared_spent:
            return
        missing = usd - (self._drawn_usd - self.cost_usd - self._reserved_usd)
        if missing <= 0:
            return
        drawn = await self._shared.draw(missing)
        self._drawn_usd += drawn
        if drawn < missing:
            self._shared_spent = True
            self.exhausted = self.exhausted or "max_cost_usd"

    def reserve(self, wanted: int, cost_each_usd: float) -> int:
        """How many of `wanted` sub-calls may go out now; those are counted and their cost held."""
        granted = min(wanted, self._limits.max_subcalls - self.subcalls)
        limit: Limit | None = "max_subcalls" if granted < wanted else None
        if (cap := self._cap_usd()) is not None and cost_each_usd > 0:
            affordable = int((cap - self.cost_usd - self._reserved_usd) / cost_each_usd)
            if affordable < granted:
                granted, limit = max(0, affordable), "max_cost_usd"
        if limit is not None:
            self.exhausted = self.exhausted or limit
        self.subcalls += granted
        self._reserved_usd += granted * cost_each_usd
        return granted

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        self._reserved_usd = max(0.0, self._reserved_usd - reserved_usd)
        self.spend(actual_usd)

    def spend(self, cost_usd: float) -> None:
        """Cost of a call that was not reserved (root calls): it can end the run but not be refused."""
        self.cost_usd += cost_usd
        if self._limits.max_cost_usd is not None and self.cost_usd >= self._limits.max_cost_usd:
            self.exhausted = self.exhausted or "max_cost_usd"

    def refusal(self) -> str:
        if self._shared_spent:
            return "Error: the budget this run spends from (its API key's) is spent."
        if self.exhausted == "max_cost_usd":
            return f"Error: the run's cost budget (max_cost_usd={self._limits.max_cost_usd:g}) is spent."
        return f"Error: the run's sub-call budget (max_subcalls={self._limits.max_subcalls}) is spent."

    def _cap_usd(self) -> float | None:
        """What the run may spend in all, as far as it knows now."""
        caps = [cap for cap in (self._limits.max_cost_usd, self._drawn_usd if self._shared else None)
                if cap is not None]
        return min(caps) if caps else None
