"""Direct or RLM: which way a chat request goes.

The decision has to stay cheap for prompts of tens of megabytes, so it starts from length bounds that
need no tokenizer and counts tokens exactly only when the prompt is close to the threshold.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from proxy.config import RLMSettings
from proxy.errors import invalid_request
from proxy.model_facts import ModelFacts, message_text
from proxy.registry import Target

RLM_PREFIX = "rlm/"
MODE_HEADER = "x-rlm-mode"
DEFAULT_THRESHOLD_TOKENS = 100_000
# No tokenizer in use turns more than this many characters into one token (long runs of spaces or
# repeated punctuation come closest); above threshold x this, counting cannot change the answer.
MAX_CHARS_PER_TOKEN = 12
# Framing tokens per message are a handful for every tokenizer.
MAX_TOKENS_PER_MESSAGE = 8

Mode = Literal["direct", "rlm"]


@dataclass(frozen=True)
class ModeDecision:
    mode: Mode
    model: str  # the requested model name without the `rlm/` prefix
    reason: Literal["header", "prefix", "over_threshold", "under_threshold", "server_default"]


def split_model(requested: str) -> tuple[str, bool]:
    """`rlm/gpt-4o` -> (`gpt-4o`, True): the prefix forces RLM mode for clients that only set a model."""
    if requested.startswith(RLM_PREFIX) and len(requested) > len(RLM_PREFIX):
        return requested[len(RLM_PREFIX):], True
    return requested, False


def header_mode(value: str | None) -> Literal["auto", "on", "off"] | None:
    if value is None:
        return None
    mode = value.strip().lower()
    if mode not in ("auto", "on", "off"):
        raise invalid_request(f"Header '{MODE_HEADER}' must be auto, on or off; got {value!r}.",
                              param=MODE_HEADER, code="invalid_header")
    return mode  # type: ignore[return-value]


class ModeRouter:
    def __init__(self, settings: RLMSettings, facts: ModelFacts) -> None:
        self._settings = settings
        self._facts = facts

    def threshold_tokens(self, deployment: Target) -> int:
        if deployment.rlm_threshold_tokens is not None:
            return deployment.rlm_threshold_tokens
        if self._settings.threshold_tokens is not None:
            return self._settings.threshold_tokens
        window = self._facts.max_input_tokens(deployment)
        if window is not None:
            return max(1, int(window * self._settings.threshold_fraction))
        return DEFAULT_THRESHOLD_TOKENS

    async def decide(self, header: str | None, requested_model: str, messages: list[dict[str, Any]],
                     deployment: Target) -> ModeDecision:
        model, prefixed = split_model(requested_model)
        mode = header_mode(header)
        if mode == "on":
            return ModeDecision("rlm", model, "header")
        if mode == "off":
            return ModeDecision("direct", model, "header")
        if prefixed:
            return ModeDecision("rlm", model, "prefix")
        if mode is None and self._settings.default_mode != "auto":
            return ModeDecision("rlm" if self._settings.default_mode == "on" else "direct", model,
                                "server_default")
        over = await self.over_threshold(messages, deployment)
        return ModeDecision("rlm", model, "over_threshold") if over else \
            ModeDecision("direct", model, "under_threshold")

    async def over_threshold(self, messages: list[dict[str, Any]], deployment: Target) -> bool:
        threshold = self.threshold_tokens(deployment)
        texts = [message_text(m) for m in messages]
        chars = sum(len(t) for t in texts)
        framing = MAX_TOKENS_PER_MESSAGE * len(messages)
        # Every token covers at least one byte, so tokens <= UTF-8 bytes (<= 4 per character).
        max_bytes = sum(len(t) if t.isascii() else 4 * len(t) for t in texts)
        if max_bytes + framing <= threshold:
            return False
        if chars / MAX_CHARS_PER_TOKEN > threshold:
            return True
        count = await asyncio.to_thread(self._facts.count_tokens, deployment, messages)
        return count > threshold
