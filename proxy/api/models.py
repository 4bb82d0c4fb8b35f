"""GET /v1/models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from proxy.access import visible_models
from proxy.api.deps import IdentityDep, ServicesDep
from proxy.routing import RLM_PREFIX

router = APIRouter()


@router.get("/v1/models")
@router.get("/models", include_in_schema=False)
async def list_models(services: ServicesDep, identity: IdentityDep) -> dict[str, Any]:
    """The models the caller's key may use (its team's list narrows it too)."""
    return {"object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "rlm-proxy"}
                     for name in visible_models(identity, services.registry.names, RLM_PREFIX)]}
