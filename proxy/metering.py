"""What one request has spent upstream so far: tokens and dollars of every call made for it (RLM
sub-calls too, which run in tasks that inherit the request's context), per model, and what the cache
saved it; for the per-key limits (proxy/limits.py) and the spend ledger (proxy/spend.py)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class ModelSpend:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0  # what the calls the cache answered cost when they were first made


@dataclass
class Metering:
    by_model: dict[str, ModelSpend] = field(default_factory=dict)

    def add(self, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        spend = self._of(model)
        spend.prompt_tokens += prompt_tokens
        spend.completion_tokens += completion_tokens
        spend.cost_usd += cost_usd

    def saved(self, model: str, cost_usd: float) -> None:
        self._of(model).saved_usd += cost_usd

    @property
    def tokens(self) -> int:
        return sum(spend.prompt_tokens + spend.completion_tokens for spend in self.by_model.values())

    @property
    def cost_usd(self) -> float:
        return sum(spend.cost_usd for spend in self.by_model.values())

    @property
    def saved_usd(self) -> float:
        return sum(spend.saved_usd for spend in self.by_model.values())

    def _of(self, model: str) -> ModelSpend:
        spend = self.by_model.get(model)
        if spend is None:
            spend = self.by_model[model] = ModelSpend()
        return spend


# The metering of the request being served; None outside the model routes.
REQUEST_METERING: ContextVar[Metering | None] = ContextVar("rlm_proxy_request_metering", default=None)
