"""What a caller may do: which models it may name, whether it may ask for RLM mode, and the RLM caps its
key sets below the server's. A key's team narrows its models too (both must allow a model)."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from proxy.auth import Identity
from proxy.config import Limits, RLMSettings
from proxy.errors import ProxyError

RLM_CAPS = ("max_iterations", "max_depth", "max_subcalls", "max_cost_usd", "timeout_s")


def _allows(limits: Limits | None, model: str) -> bool:
    return limits is None or limits.models is None or any(fnmatchcase(model, p) for p in limits.models)


def may_use(identity: Identity, model: str) -> bool:
    """Whether the caller may call `model` (a model name without `rlm/`)."""
    return _allows(identity.key, model) and _allows(identity.team_limits, model)


def may_use_rlm(identity: Identity) -> bool:
    return identity.key is None or identity.key.rlm.allowed


def check_model(identity: Identity, model: str, param: str = "model") -> None:
    if not may_use(identity, model):
        raise ProxyError(403, f"This key may not use the model '{model}'.", code="model_not_allowed",
                         param=param)


def check_rlm_allowed(identity: Identity, asked_by: str) -> None:
    """Refuse a request that asks for RLM mode itself (the `rlm/` prefix, `x-rlm-mode: on`) from a key
    without it; requests that RLM mode would only take over past the threshold go direct instead."""
    if not may_use_rlm(identity):
        raise ProxyError(403, f"This key may not use RLM mode, which {asked_by} asks for; send the request "
                         "without it to reach the model directly.", code="rlm_not_allowed", param="model")


def visible_models(identity: Identity, names: Iterable[str], rlm_prefix: str) -> list[str]:
    """The model ids the caller may use, as GET /v1/models lists them: each name, then its `rlm/` twin."""
    allowed = [name for name in names if may_use(identity, name)]
    return [*allowed, *(rlm_prefix + name for name in allowed)] if may_use_rlm(identity) else allowed


def rlm_settings_for(identity: Identity, settings: RLMSettings) -> RLMSettings:
    """The server's RLM settings with the key's caps applied where they are lower."""
    wanted = {name: getattr(identity.key.rlm, name) for name in RLM_CAPS} if identity.key is not None else {}
    caps: dict[str, float] = {}
    for name, cap in wanted.items():
        server = getattr(settings, name)
        if cap is not None and (server is None or cap < server):
            caps[name] = cap
    return settings.model_copy(update=caps) if caps else settings
