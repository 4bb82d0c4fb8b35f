"""What is known about a model: its input window, token counts and prices (config first, then litellm)."""

from __future__ import annotations

import contextlib
import os
import warnings
from types import ModuleType
from typing import Any

import orjson

from proxy.registry import Deployment, Target


def import_litellm() -> ModuleType:
    """litellm, imported the one safe way: without this variable it fetches a price map at import time."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    # Its models (and the openai SDK's it dumps) type embeddings as float lists: every base64 embedding,
    # passed on as it is, would write a serializer warning to the log.
    warnings.filterwarnings("ignore", category=UserWarning, message=(
        r"Pydantic serializer warnings:\s+PydanticSerializationUnexpectedValue\(Expected `list\[float\]`"
        r"[^\n]*field_name='embedding'"))
    return litellm


def message_text(message: dict[str, Any]) -> str:
    """The text of a message's content, whether a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content
                       if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def usage_tokens(usage: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of an upstream `usage` object; anything not a count reads as 0."""
    if not isinstance(usage, dict):
        return 0, 0
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class ModelFacts:
    """Lookups are cached per model; litellm is loaded by `load()` (slow) and used only when loaded."""

    def __init__(self) -> None:
        self._litellm: ModuleType | None = None
        self._windows: dict[str, int | None] = {}
        self._prices: dict[str, dict[str, float] | None] = {}
        self._reasoning: dict[str, bool] = {}

    def load(self) -> None:
        """Blocking (seconds): call it from a thread at start-up."""
        self._litellm = import_litellm()

    def max_input_tokens(self, target: Target) -> int | None:
        """A group's window is its smallest deployment's: a request must fit whichever one is picked."""
        return min((window for d in target.deployments if (window := self._window(d)) is not None),
                   default=None)

    def _window(self, deployment: Deployment) -> int | None:
        if deployment.max_input_tokens is not None:
            return deployment.max_input_tokens
        if self._litellm is None:
            return None
        if deployment.model not in self._windows:
            self._windows[deployment.model] = self._litellm_info(deployment.model, "max_input_tokens")
        return self._windows[deployment.model]

    def count_tokens(self, target: Target, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None = None) -> int:
        """Exact where litellm knows the tokenizer (a group's first deployment's). Blocking and ~5 MB/s:
        keep it off the event loop."""
        if self._litellm is not None:
            with contextlib.suppress(Exception):  # a model whose tokenizer litellm cannot find
                return int(self._litellm.token_counter(model=target.deployments[0].model, messages=messages,
                                                       tools=tools))
        tool_chars = len(orjson.dumps(tools)) if tools else 0
        return estimate_tokens(sum(len(message_text(m)) for m in messages) + tool_chars, len(messages))

    def supports_reasoning(self, target: Target) -> bool:
        """Whether litellm knows every deployment's model to take `reasoning_effort`."""
        return all(self._reasons(d.model) for d in target.deployments)

    def _reasons(self, model: str) -> bool:
        if self._litellm is None:
            return False
        if model not in self._reasoning:
            try:
                self._reasoning[model] = bool(self._litellm.supports_reasoning(model=model))
            except Exception:  # not in litellm's map
                self._reasoning[model] = False
        return self._reasoning[model]

    def cost_usd(self, target: Target, prompt_tokens: int, completion_tokens: int) -> float:
        """A deployment's price for the tokens; a group's dearest (an estimate made before it answers)."""
        return max(self._cost(d, prompt_tokens, completion_tokens) for d in target.deployments)

    def _cost(self, deployment: Deployment, prompt_tokens: int, completion_tokens: int) -> float:
        rates = self._rates(deployment)
        if rates is None:
            return 0.0
        above = prompt_tokens > LONG_PROMPT_TOKENS
        input_rate = rates.get("input_cost_per_token_above_200k_tokens") if above else None
        output_rate = rates.get("output_cost_per_token_above_200k_tokens") if above else None
        return (prompt_tokens * (input_rate or rates.get("input_cost_per_token") or 0.0)
                + completion_tokens * (output_rate or rates.get("output_cost_per_token") or 0.0))

    def _rates(self, deployment: Deployment) -> dict[str, float] | None:
        """Prices per token, looked up once per model (litellm's cost functions take ~0.5 ms a call)."""
        if deployment.input_cost_per_token is not None or deployment.output_cost_per_token is not None:
            return {"input_cost_per_token": deployment.input_cost_per_token or 0.0,
                    "output_cost_per_token": deployment.output_cost_per_token or 0.0}
        if self._litellm is None:
            return None
        if deployment.model not in self._prices:
            self._prices[deployment.model] = self._litellm_info(deployment.model, None)
        return self._prices[deployment.model]

    def _litellm_info(self, model: str, key: str | None) -> Any:
        """One field of litellm's model map, or (key None) the prices in it; None when it has no entry."""
        assert self._litellm is not None
        try:
            info = self._litellm.get_model_info(model)
        except Exception:  # not in litellm's map
            return None
        if key is not None:
            return info.get(key)
        return {name: float(value) for name, value in info.items()
                if name.endswith("_cost_per_token") or name.endswith("_cost_per_token_above_200k_tokens")
                if isinstance(value, int | float)}


# Providers that price long prompts higher switch rates above this many prompt tokens.
LONG_PROMPT_TOKENS = 200_000
# Typical English text runs about 4 characters per token; each message adds a few tokens of framing.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def estimate_tokens(chars: int, messages: int = 1) -> int:
    return chars // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * messages
