"""Application factory: everything the app holds is built here from one Settings object."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from proxy.admission import RunAdmission, memory_limit_bytes, server_processes, workers_memory_holds
from proxy.api import (
    chat,
    completions,
    embeddings,
    health,
    keys,
    messages,
    models,
    prometheus,
    responses,
    runs,
    spend,
    ui,
)
from proxy.api.deps import Services
from proxy.auth import KeyChecker
from proxy.balancer import Balancer
from proxy.cache import Cache
from proxy.config import Settings, load_settings, worker_ids
from proxy.errors import ProxyError, error_dialect, invalid_request
from proxy.http_server.head_limits import lifespan_state
from proxy.key_store import KeyStore
from proxy.limits import KeyLimits
from proxy.memory import IdleMemoryMiddleware, MemoryReleaser, load_glibc
from proxy.metrics import Metrics, UpstreamMetrics
from proxy.middleware import (
    BodyLimitMiddleware,
    LimitsMiddleware,
    MetricsMiddleware,
    RequestContextMiddleware,
)
from proxy.model_caller import UpstreamCaller
from proxy.model_facts import ModelFacts
from proxy.registry import ModelRegistry
from proxy.response_store import ResponseStore
from proxy.rlm.engine import RLMEngine
from proxy.routing import ModeRouter
from proxy.spend import SpendLedger
from proxy.trajectories.recorder import Trajectories
from proxy.trajectories.secrets import known_secrets
from proxy.upstream import Upstream
from sandbox import MIB, PoolLimits, SandboxLimits, SandboxPool, WorkerUser

if TYPE_CHECKING:
    from proxy.telemetry.tracing import Tracing

log = logging.getLogger("rlm_proxy")


def create_app(settings: Settings) -> FastAPI:
    registry = ModelRegistry(settings.model_list, settings.fallbacks())
    facts = ModelFacts()
    metrics = Metrics(registry.names)
    tracing = _tracing(settings, registry)
    make_upstream = Upstream if tracing is None else tracing.upstream
    upstream = make_upstream(settings.upstream, UpstreamMetrics(metrics, facts),
                             balancer=Balancer.from_settings(settings.router_settings),
                             resolve=registry.resolve)
    pool_limits = _pool_limits(settings)
    sandbox = SandboxPool(_sandbox_limits(settings), pool_limits)
    cache = Cache(settings.cache, lambda result: metrics.cache.labels(result).inc()) \
        if settings.cache.enabled else None
    releaser = MemoryReleaser(load_glibc(), settings.server.release_memory_idle_s) \
        if settings.server.release_memory else None
    key_store = KeyStore(settings.cache)
    services = Services(
        settings=settings,
        registry=registry,
        upstream=upstream,
        keys=KeyChecker(settings.server, key_store),
        key_store=key_store,
        facts=facts,
        router=ModeRouter(settings.rlm, facts),
        sandbox=sandbox,
        engine=RLMEngine(UpstreamCaller(registry, upstream, facts, cache), sandbox, settings.rlm),
        metrics=metrics,
        cache=cache,
        responses=ResponseStore(settings.responses, settings.cache),
        admission=_admission(settings, pool_limits.max_workers, metrics),
        limits=KeyLimits(settings.limits, settings.cache, metrics),
        spend=SpendLedger(settings.spend, settings.cache, metrics),
        trajectories=Trajectories(settings.trajectories, settings.cache, known_secrets(settings)),
        tracing=tracing,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        if releaser is not None:
            releaser.start()
        # Serving starts at once (/livez answers); /readyz waits for the warm-up.
        warm_up = asyncio.create_task(_warm_up(services, releaser))
        yield lifespan_state(settings.server)  # the HTTP protocol's head limits
        warm_up.cancel()
        if releaser is not None:
            await releaser.aclose()
        await services.sandbox.aclose()
        await services.upstream.aclose()
        if services.cache is not None:
            await services.cache.aclose()
        await services.responses.aclose()
        await services.key_store.aclose()
        await services.limits.aclose()
        await services.spend.aclose()
        await services.trajectories.aclose()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # flushes the spans still buffered

    app = FastAPI(title="rlm-proxy", version="0.1.0", lifespan=lifespan,
                  telemetry=None if tracing is None else tracing.fastapi_telemetry())
    app.state.services = services
    app.include_router(chat.router)
    app.include_router(messages.router)
    app.include_router(responses.router)
    app.include_router(embeddings.router)
    app.include_router(completions.router)
    app.include_router(models.router)
    app.include_router(keys.router)
    app.include_router(spend.router)
    app.include_router(runs.router)
    app.include_router(ui.build_router())
    if settings.server.health_routes:
        app.include_router(health.router)
    if settings.server.metrics_route:
        app.include_router(prometheus.router)
    app.add_exception_handler(ProxyError, _proxy_error)
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_exception)
    # add_middleware wraps from the inside out: the request context must be outermost.
    if settings.server.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.server.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id", "x-rlm-mode"])
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.server.max_body_bytes)
    app.add_middleware(LimitsMiddleware, limits=services.limits, spend=services.spend)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if releaser is not None:
        app.add_middleware(IdleMemoryMiddleware, releaser=releaser)
    app.add_middleware(RequestContextMiddleware)
    return app


def _tracing(settings: Settings, registry: ModelRegistry) -> Tracing | None:
    """OpenTelemetry tracing when an endpoint is set; otherwise nothing of it is even imported."""
    if settings.otel.endpoint is None:
        return None
    from proxy.telemetry.tracing import Tracing, otlp_exporter

    return Tracing(settings.otel, registry, otlp_exporter(settings.otel))


async def _warm_up(services: Services, releaser: MemoryReleaser | None) -> None:
    try:
        await services.sandbox.start()
        # litellm's import takes seconds: on the first request it would stall every other one.
        await asyncio.to_thread(services.facts.load)
    except Exception as error:
        # Not ready, and /readyz says why; the process keeps serving what it can.
        log.exception("start-up warm-up failed")
        services.warm_up_error = f"{type(error).__name__}: {error}"
        return
    if releaser is not None:
        releaser.started_up()
    services.ready = True


def _sandbox_limits(settings: Settings) -> SandboxLimits:
    sandbox = settings.sandbox
    return SandboxLimits(memory_mb=sandbox.memory_mb, cpu_s_per_block=sandbox.cpu_s_per_block,
                         cpu_s_per_run=sandbox.cpu_s_per_run, wall_s_per_block=sandbox.wall_s_per_block,
                         max_output_chars=settings.rlm.max_output_chars,
                         max_batch_bytes=sandbox.max_batch_mb * MIB, max_run_bytes=sandbox.max_run_mb * MIB)


def _max_workers(settings: Settings) -> int:
    sandbox = settings.sandbox
    if sandbox.max_workers is not None:
        return sandbox.max_workers
    held = workers_memory_holds(sandbox.memory_mb, memory_limit_bytes(), server_processes())
    return max(sandbox.workers, held)


def _admission(settings: Settings, max_workers: int, metrics: Metrics) -> RunAdmission:
    admission = settings.admission
    # A run holds a worker: by default as many runs as workers (a nested run waits for one of its own).
    capacity = admission.max_concurrent_rlm_runs or max_workers
    return RunAdmission(capacity, admission.max_queued_rlm_runs, admission.queue_timeout_s,
                        observer=metrics)


def _pool_limits(settings: Settings) -> PoolLimits:
    sandbox = settings.sandbox
    user = None if sandbox.worker_user is None else WorkerUser(*worker_ids(sandbox.worker_user))
    return PoolLimits(warm_workers=sandbox.workers, max_workers=_max_workers(settings),
                      worker_wait_s=sandbox.worker_wait_s, max_inflight_bytes=sandbox.max_inflight_mb * MIB,
                      worker_user=user)


def create_app_from_env() -> FastAPI:
    """Entry point for `uvicorn --factory` (multi-worker serving reads the config path from the env)."""
    return create_app(load_settings())


def _error_response(request: Request, error: ProxyError) -> Response:
    """The error in the shape the request's path answers in."""
    return Response(error.body(error_dialect(request.url.path)), status_code=error.status,
                    media_type="application/json", headers=error.headers)


async def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return _error_response(request, exc)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(request, ProxyError(exc.status_code, str(exc.detail), code=code,
                                               headers=dict(exc.headers or {})))


async def _validation_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _error_response(request, invalid_request(f"Invalid request: {exc.errors()}"))
