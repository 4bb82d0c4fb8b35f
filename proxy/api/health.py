"""Liveness and readiness probes; no authentication, no I/O on /livez."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from proxy.api.deps import ServicesDep

router = APIRouter()


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> dict[str, Any]:
    return {"status": "ready", "checks": {"config": "ok", "models": len(services.registry.names)}}
