"""What one request has spent upstream so far: tokens and dollars of every call made for it (RLM
sub-calls too, which run in tasks that inherit the request's context), for the per-key limits."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Metering:
    tokens: int = 0
    cost_usd: float = 0.0

    def add(self, tokens: int, cost_usd: float) -> None:
        self.tokens += tokens
        self.cost_usd += cost_usd


# The metering of the request being served; None outside the model routes.
REQUEST_METERING: ContextVar[Metering | None] = ContextVar("rlm_proxy_request_metering", default=None)
