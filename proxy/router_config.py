"""LiteLLM's `router_settings`, `litellm_settings` and `general_settings`: the keys rlm-proxy reads.

A LiteLLM Proxy config loads unchanged when it uses only these keys. Any other key is refused at start-up
with a message naming it: a setting that would be silently ignored (a Redis for shared cooldowns, a
routing strategy we lack) changes what the operator believes the proxy does.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

RoutingStrategy = Literal["simple-shuffle", "least-busy", "latency-based-routing"]
# LiteLLM's shape: a list of {model_name: [fallback model_name, ...]} mappings.
FallbackList = list[dict[str, list[str]]]


class _LiteLLMSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in data if key not in cls.model_fields)
            if unknown:
                raise PydanticCustomError(
                    "unsupported_setting",
                    "{keys} not supported by rlm-proxy (supported in {section}: {supported}); remove "
                    "{them} (see the README's table of LiteLLM settings)",
                    {"keys": ", ".join(f"'{cls.section}.{key}'" for key in unknown) + (
                        " is" if len(unknown) == 1 else " are"),
                     "section": cls.section, "supported": ", ".join(cls.model_fields),
                     "them": "it" if len(unknown) == 1 else "them"})
        return data


def _fallbacks_are_distinct(value: FallbackList) -> FallbackList:
    seen: set[str] = set()
    for mapping in value:
        for name in mapping:
            if name in seen:
                raise ValueError(f"'{name}' has fallbacks listed twice")
            seen.add(name)
    return value


class RouterSettings(_LiteLLMSection):
    section = "router_settings"

    routing_strategy: RoutingStrategy = "simple-shuffle"
    num_retries: int | None = Field(default=None, ge=0, le=10)  # the same setting as upstream.max_retries
    timeout: float | None = Field(default=None, gt=0)  # the same setting as upstream.timeout_s
    # A deployment failing more than allowed_fails times in a minute is left out for cooldown_time seconds.
    allowed_fails: int = Field(default=3, ge=0)
    cooldown_time: float = Field(default=5.0, ge=0)
    fallbacks: FallbackList = []
    context_window_fallbacks: FallbackList = []

    _distinct = field_validator("fallbacks", "context_window_fallbacks")(_fallbacks_are_distinct)


class LiteLLMSettings(_LiteLLMSection):
    section = "litellm_settings"

    num_retries: int | None = Field(default=None, ge=0, le=10)
    request_timeout: float | None = Field(default=None, gt=0)
    fallbacks: FallbackList = []
    context_window_fallbacks: FallbackList = []

    _distinct = field_validator("fallbacks", "context_window_fallbacks")(_fallbacks_are_distinct)


class GeneralSettings(_LiteLLMSection):
    section = "general_settings"

    master_key: SecretStr | None = None  # the same setting as server.master_key


def merged_fallbacks(router: FallbackList, litellm: FallbackList, kind: str) -> dict[str, tuple[str, ...]]:
    """One table from both places LiteLLM accepts fallbacks; a group listed in both is ambiguous."""
    table: dict[str, tuple[str, ...]] = {}
    for mapping in [*router, *litellm]:
        for name, targets in mapping.items():
            if name in table:
                raise ValueError(f"'{name}' has {kind} in both router_settings and litellm_settings")
            table[name] = tuple(targets)
    return table


def one_value(name: str, values: dict[str, Any]) -> Any:
    """The value of a setting that several sections may give; None if none does, an error if they differ."""
    given = {where: value for where, value in values.items() if value is not None}
    if len(set(map(_comparable, given.values()))) > 1:
        raise ValueError(f"{name} is given differently in " + " and ".join(given))
    return next(iter(given.values()), None)


def _comparable(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value
