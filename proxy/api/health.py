"""Liveness and readiness probes; no authentication, no I/O on /livez."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from proxy.api.deps import ServicesDep

router = APIRouter()


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    sandbox = services.sandbox.status()
    checks: dict[str, Any] = {"config": "ok", "models": len(services.registry.names),
                              "warm_up": "done" if services.ready else services.warm_up_error or "running",
                              "sandbox": sandbox, "admission": services.admission.status()}
    if services.cache is not None:
        # A Redis outage only costs cache misses: reported, but the proxy stays ready.
        checks["cache"] = {"backend": services.cache.backend, "status": await services.cache.status()}
    ready = services.ready and bool(sandbox.get("usable"))
    status = "ready" if ready else "starting" if not services.ready else "not_ready"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)
