"""The request core every dialect shares: the mode decision, RLM runs, direct calls and their metrics.

A dialect adapter (Chat Completions, Responses, Messages) translates its request into a `ChatRequest`,
calls `route`, and renders what comes back in its own shapes: a `Direct` call it completes or streams
through `complete` / `stream` (or forwards natively), an `RLMRun` whose events it turns into its answer.
Keys, limits, the mode decision, cache scope and metrics are decided here once for every route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, cast

from fastapi import Request

from proxy.access import check_model, check_rlm_allowed, may_use_rlm, rlm_settings_for
from proxy.admission import RunAdmission
from proxy.api.deps import Services
from proxy.api.request import ChatRequest
from proxy.api.rlm import as_proxy_errors, last_event, observed, run_request
from proxy.api.streaming import until_disconnect
from proxy.auth import Identity, presented_keys
from proxy.cache import CachePolicy
from proxy.errors import invalid_request
from proxy.limits import GRANT_STATE, SPENDER_STATE, Grant, KeyBudget
from proxy.middleware import RouteInfo
from proxy.registry import ModelGroup
from proxy.rlm.engine import RunRequest
from proxy.rlm.events import Event, RunFinished
from proxy.routing import MODE_HEADER, header_mode, split_model

DIRECT_HEADERS = {"x-rlm-mode": "direct"}


@dataclass(frozen=True)
class Direct:
    """A request for the upstream model itself; `chat.body['model']` no longer carries `rlm/`."""

    group: ModelGroup  # the requested model's deployments; Upstream picks one per call
    chat: ChatRequest


@dataclass(frozen=True)
class RLMRun:
    """A request answered by the RLM loop; `events` end with `RunFinished` (metrics already recorded)."""

    run: RunRequest
    events: AsyncIterator[Event]

    @property
    def run_id(self) -> str:
        return self.run.run_id


async def route(request: Request, services: Services, identity: Identity,
                chat: ChatRequest) -> Direct | RLMRun:
    """Decide direct or RLM for a request already in Chat Completions form, and prepare that path."""
    model, _ = split_model(chat.model)
    check_model(identity, model)
    group = services.registry.resolve(model)
    decision = await services.router.decide(request.headers.get(MODE_HEADER), chat.model, chat.messages,
                                            group)
    mode = decision.mode
    if mode == "rlm" and not may_use_rlm(identity):
        if decision.reason == "header":
            check_rlm_allowed(identity, f"'{MODE_HEADER}: on'")
        if decision.reason == "prefix":
            check_rlm_allowed(identity, f"the model '{chat.model}'")
        mode = "direct"  # past the threshold, or the server's default: the model itself answers
    _note_route(request, services, mode, decision.model)
    if mode == "rlm" and chat.rlm.sub_model is not None:
        check_model(identity, chat.rlm.sub_model, param="rlm.sub_model")
    grant = await _admit(request, services, identity, rlm=mode == "rlm")
    if mode == "rlm":
        cache = CachePolicy.from_header(request.headers.get("cache-control"),
                                        identity.cache_scope(services.settings.cache.scope))
        run = run_request(chat, decision.model, rlm_settings_for(identity, services.settings.rlm), cache)
        if grant is not None and grant.has_budget:
            run = replace(run, shared_budget=KeyBudget(services.limits, grant))
        # A bad sub-model would turn every sub-call into an error string: refuse the request instead.
        services.registry.resolve(run.sub_model, param="rlm.sub_model")
        events = as_proxy_errors(services.engine.run(run))
        if services.tracing is not None:
            events = services.tracing.run_events(events, run)
        events = services.trajectories.recorded(
            observed(events, services.metrics, run), run, identity,
            presented_keys(request.headers.get("authorization"), request.headers.get("x-api-key")))
        admitted = _admitted(services.admission, identity.key_hash, events)
        # Waits for a slot before any response starts, so that a refusal is a plain 503.
        await until_disconnect(request.receive, anext(admitted))
        return RLMRun(run, cast(AsyncIterator[Event], admitted))
    if decision.model != chat.model:
        chat.body["model"] = decision.model
    return Direct(group, chat)


async def _admitted(admission: RunAdmission, key: str, events: AsyncIterator[Event]
                    ) -> AsyncIterator[Event | None]:
    """None once the run has an admission slot, then its events; the slot is held until they end. Started
    before it is returned, the generator gives the slot back however it ends (closed, or collected)."""
    await admission.enter(key)
    try:
        yield None
        async for event in events:
            yield event
    finally:
        admission.leave(key)


async def route_passthrough(request: Request, services: Services, identity: Identity,
                            body: dict[str, Any]) -> ModelGroup:
    """The model group for a request that only the upstream model answers (embeddings, legacy completions),
    whose `model` is checked already. RLM mode answers chat-like requests only: the `rlm/` prefix,
    `x-rlm-mode: on` and an `rlm` object are refused rather than ignored."""
    name, prefixed = split_model(body["model"])
    asked = _rlm_asked_by(request, body, prefixed)
    if asked is not None:
        param, what = asked
        raise invalid_request(f"RLM mode answers chat-like requests only (chat completions, responses, "
                              f"messages); {request.url.path} passes requests through to the model, so "
                              f"{what} cannot ask for it.", param=param, code="rlm_not_supported")
    check_model(identity, name)
    group = services.registry.resolve(name)
    _note_route(request, services, "direct", name)
    await _admit(request, services, identity, rlm=False)
    return group


async def _admit(request: Request, services: Services, identity: Identity, rlm: bool) -> Grant | None:
    """Count the request against its key's and team's limits (429 past one), before any work or queue;
    the grant is left for the limits middleware, which settles it when the response is done."""
    grant = await services.limits.admit(identity, rlm)
    setattr(request.state, GRANT_STATE, grant)
    setattr(request.state, SPENDER_STATE, identity)
    return grant


def _rlm_asked_by(request: Request, body: dict[str, Any], prefixed: bool) -> tuple[str, str] | None:
    """(param, description) of whatever in the request asks for RLM mode, if anything does."""
    if prefixed:
        return "model", f"the model '{body['model']}'"
    if "rlm" in body:
        return "rlm", "the 'rlm' object"
    if header_mode(request.headers.get(MODE_HEADER)) == "on":
        return MODE_HEADER, f"'{MODE_HEADER}: on'"
    return None


def _note_route(request: Request, services: Services, mode: str, model: str) -> None:
    """Tell the metrics middleware what was decided, and count the request as in flight in that mode."""
    info: RouteInfo | None = getattr(request.state, "route_info", None)
    if info is None:
        return
    info.mode, info.model, info.in_flight = mode, services.metrics.model(model), True
    services.metrics.in_flight.labels(mode).inc()


async def complete(request: Request, services: Services, direct: Direct) -> dict[str, Any]:
    """The upstream's chat completion; the call is cancelled if the client goes away."""
    return await until_disconnect(request.receive,
                                  services.upstream.complete(direct.group, direct.chat.body))


async def stream(request: Request, services: Services,
                 direct: Direct) -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
    """The upstream's first chunk (None for an empty stream) and the rest (see `opened`)."""
    return await opened(request, services.upstream.stream(direct.group, direct.chat.body))


async def opened(request: Request, items: AsyncIterator[dict[str, Any]]
                 ) -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
    """A stream's first item (None for an empty stream) and the rest, the first awaited before a response
    starts so that upstream failures still get a status; cancelled if the client goes away meanwhile."""
    first = await until_disconnect(request.receive, anext(items, None))
    return first, items


async def finish(request: Request, run: RLMRun) -> RunFinished:
    """Drive a run to its end for a non-streaming answer; the run is cancelled if the client goes away."""
    return await until_disconnect(request.receive, last_event(run.events))


def rlm_headers(run_id: str, finished: RunFinished | None = None) -> dict[str, str]:
    """The `x-rlm-*` headers; the figures only when the run is over (not on a stream's first bytes)."""
    headers = {"x-rlm-mode": "rlm", "x-rlm-run-id": run_id}
    if finished is not None:
        headers |= {"x-rlm-iterations": str(finished.stats.iterations),
                    "x-rlm-subcalls": str(finished.stats.subcalls),
                    "x-rlm-cost-usd": f"{finished.stats.cost_usd:.6f}"}
        if finished.stopped is not None:
            headers["x-rlm-stopped"] = finished.stopped
    return headers
