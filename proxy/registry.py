"""Maps the model names clients ask for to model groups: the deployments sharing a `model_name`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config import ROUTING_PARAMS, ModelEntry, NativeAPI
from proxy.errors import ProxyError


@dataclass(frozen=True)
class Deployment:
    """One upstream target: the litellm model string plus its call parameters (api_base, api_key...)."""

    name: str  # what the client asked for
    model: str  # litellm's `provider/model`
    params: dict[str, Any] = field(default_factory=dict)
    max_input_tokens: int | None = None
    rlm_threshold_tokens: int | None = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    native_apis: frozenset[NativeAPI] | None = None  # None: the provider's default (see `speaks`)
    # Load balancing (litellm_params' weight, rpm, tpm) and the deployment's identity in the balancer.
    weight: float | None = None
    rpm: float | None = None
    tpm: float | None = None
    id: str | None = None

    @property
    def key(self) -> str:
        return self.id or self.name

    @property
    def deployments(self) -> tuple[Deployment, ...]:
        """A deployment serves where a group does, as a group of one."""
        return (self,)

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0] if "/" in self.model else ""

    def speaks(self, api: NativeAPI) -> bool:
        """Whether requests in this dialect go to the deployment as they are, rather than bridged."""
        if self.native_apis is not None:
            return api in self.native_apis
        if api == "responses":
            return self.provider == "openai" and not self.params.get("api_base")
        return self.provider == "anthropic"

    @property
    def provider_model(self) -> str:
        """The model name as the provider itself knows it."""
        return self.model.split("/", 1)[1] if "/" in self.model else self.model


@dataclass(frozen=True)
class ModelGroup:
    """The deployments of one `model_name`, load-balanced, with the group's fallbacks (by name).

    It answers what callers ask of a model as the group's most constrained deployment would: the smallest
    input window and RLM threshold, the highest prices, and a native dialect only if every deployment
    speaks it, so that whichever deployment is picked can take the request.
    """

    name: str
    deployments: tuple[Deployment, ...]
    fallbacks: tuple[str, ...] = ()
    context_window_fallbacks: tuple[str, ...] = ()

    @property
    def max_input_tokens(self) -> int | None:
        return _smallest(d.max_input_tokens for d in self.deployments)

    @property
    def rlm_threshold_tokens(self) -> int | None:
        return _smallest(d.rlm_threshold_tokens for d in self.deployments)

    @property
    def input_cost_per_token(self) -> float | None:
        return _largest(d.input_cost_per_token for d in self.deployments)

    @property
    def output_cost_per_token(self) -> float | None:
        return _largest(d.output_cost_per_token for d in self.deployments)

    def speaks(self, api: NativeAPI) -> bool:
        return all(d.speaks(api) for d in self.deployments)


def _smallest(values: Iterable[int | None]) -> int | None:
    return min((v for v in values if v is not None), default=None)


def _largest(values: Iterable[float | None]) -> float | None:
    return max((v for v in values if v is not None), default=None)


def _deployment(entry: ModelEntry, index: int) -> Deployment:
    params = {k: v for k, v in entry.litellm_params.items() if k != "model" and k not in ROUTING_PARAMS}
    routing = entry.litellm_params
    info = entry.model_info
    return Deployment(
        name=entry.model_name,
        model=entry.litellm_params["model"],
        params=params,
        max_input_tokens=info.max_input_tokens,
        rlm_threshold_tokens=info.rlm_threshold_tokens,
        input_cost_per_token=info.input_cost_per_token,
        output_cost_per_token=info.output_cost_per_token,
        native_apis=None if info.native_apis is None else frozenset(info.native_apis),
        weight=routing.get("weight"),
        rpm=routing.get("rpm"),
        tpm=routing.get("tpm"),
        # LiteLLM's model_info.id names a deployment; else its place in model_list does.
        id=str(getattr(info, "id", None) or f"{entry.model_name}#{index}"),
    )


class ModelRegistry:
    """With a model list, only listed names resolve; without one, any name goes to litellm as is."""

    def __init__(self, entries: list[ModelEntry],
                 fallbacks: Mapping[str, Mapping[str, tuple[str, ...]]] | None = None) -> None:
        members: dict[str, list[Deployment]] = {}
        for index, entry in enumerate(entries):
            members.setdefault(entry.model_name, []).append(_deployment(entry, index))
        tables = fallbacks or {}
        self._fallbacks = {kind: dict(table) for kind, table in tables.items()}
        self._by_name = {name: self._group(name, tuple(deployments)) for name, deployments in members.items()}

    def _group(self, name: str, deployments: tuple[Deployment, ...]) -> ModelGroup:
        tables = self._fallbacks
        return ModelGroup(name, deployments, fallbacks=tables.get("fallbacks", {}).get(name, ()),
                          context_window_fallbacks=tables.get("context_window_fallbacks", {}).get(name, ()))

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def resolve(self, name: str, param: str = "model") -> ModelGroup:
        if not self._by_name:
            return self._group(name, (Deployment(name=name, model=name),))
        group = self._by_name.get(name)
        if group is None:
            raise ProxyError(404, f"The model '{name}' does not exist or is not served by this proxy.",
                             code="model_not_found", param=param)
        return group


# What the upstream client is asked to call: a group, or one deployment as a group of one.
Target = Deployment | ModelGroup
