"""What engine tests' fake model callers share: the facts of models without a window or a price."""

from __future__ import annotations


class UnlimitedModels:
    """Every model name is known, has no input window to respect and costs nothing."""

    def prompt_limit_chars(self, model: str) -> int | None:
        return None

    def estimate_cost_usd(self, model: str, prompt_chars: int, completion_tokens: int) -> float:
        return 0.0

    def unknown_model(self, model: str) -> str | None:
        return None
