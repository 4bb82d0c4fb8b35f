"""Maps the model names clients ask for to upstream deployments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.config import ModelEntry, NativeAPI
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


class ModelRegistry:
    """With a model list, only listed names resolve; without one, any name goes to litellm as is."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self._by_name: dict[str, Deployment] = {}
        for entry in entries:
            params = {k: v for k, v in entry.litellm_params.items() if k != "model"}
            # The first entry of a repeated name wins; LiteLLM would load-balance, we keep it simple.
            self._by_name.setdefault(entry.model_name, Deployment(
                name=entry.model_name,
                model=entry.litellm_params["model"],
                params=params,
                max_input_tokens=entry.model_info.max_input_tokens,
                rlm_threshold_tokens=entry.model_info.rlm_threshold_tokens,
                input_cost_per_token=entry.model_info.input_cost_per_token,
                output_cost_per_token=entry.model_info.output_cost_per_token,
                native_apis=None if entry.model_info.native_apis is None
                else frozenset(entry.model_info.native_apis),
            ))

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def resolve(self, name: str, param: str = "model") -> Deployment:
        if not self._by_name:
            return Deployment(name=name, model=name)
        deployment = self._by_name.get(name)
        if deployment is None:
            raise ProxyError(404, f"The model '{name}' does not exist or is not served by this proxy.",
                             code="model_not_found", param=param)
        return deployment
