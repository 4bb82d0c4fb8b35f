"""What routes get from the application: its services, and the key check."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from proxy.admission import RunAdmission
from proxy.auth import Identity, KeyChecker
from proxy.cache import Cache
from proxy.config import Settings
from proxy.errors import ProxyError
from proxy.key_store import KeyStore
from proxy.limits import KeyLimits
from proxy.metrics import Metrics
from proxy.model_facts import ModelFacts
from proxy.registry import ModelRegistry
from proxy.response_store import ResponseStore
from proxy.rlm.engine import RLMEngine
from proxy.routing import ModeRouter
from proxy.spend import SpendLedger
from proxy.trajectories.recorder import Trajectories
from proxy.upstream import Upstream
from sandbox import SandboxPool

if TYPE_CHECKING:
    from proxy.telemetry.tracing import Tracing

audit = logging.getLogger("rlm_proxy.audit")


@dataclass
class Services:
    settings: Settings
    registry: ModelRegistry
    upstream: Upstream
    keys: KeyChecker
    key_store: KeyStore
    facts: ModelFacts
    router: ModeRouter
    sandbox: SandboxPool
    engine: RLMEngine
    metrics: Metrics
    cache: Cache | None
    responses: ResponseStore
    admission: RunAdmission
    limits: KeyLimits
    spend: SpendLedger
    trajectories: Trajectories
    tracing: Tracing | None = None  # None: no `otel.endpoint`, nothing traced
    ready: bool = False  # set once start-up work (imports, warm workers) is done
    warm_up_error: str | None = None


# Both async: FastAPI runs a plain def dependency in a worker thread, which costs more than the work, and
# under a burst it starts one thread per concurrent request (each keeping a stack and a malloc arena).
async def get_services(request: Request) -> Services:
    return request.app.state.services


async def require_api_key(request: Request) -> Identity:
    return await (await get_services(request)).keys.check(request.headers.get("authorization"))


async def require_api_key_or_x_api_key(request: Request) -> Identity:
    """The key check of the Anthropic dialect: `x-api-key` (what its SDKs send) or a bearer key."""
    keys, headers = (await get_services(request)).keys, request.headers
    return await keys.check(headers.get("authorization"), headers.get("x-api-key", ""))


async def require_master_key(request: Request) -> None:
    """The admin API's guard; a refused call is audited (its route and why, never the key it sent)."""
    try:
        (await get_services(request)).keys.check_master(request.headers.get("authorization"))
    except ProxyError as error:
        audit.warning("admin %s %s refused: %s", request.method, request.url.path, error.code)
        raise


ServicesDep = Annotated[Services, Depends(get_services)]
# The caller; FastAPI runs the check once per request, however many times it is declared.
IdentityDep = Annotated[Identity, Depends(require_api_key)]
AnthropicIdentityDep = Annotated[Identity, Depends(require_api_key_or_x_api_key)]
