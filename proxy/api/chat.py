"""POST /v1/chat/completions: routing to direct passthrough or RLM mode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from proxy.api.deps import IdentityDep, Services, ServicesDep, require_api_key
from proxy.api.request import ChatRequest, parse_chat_request
from proxy.api.rlm import run_request, serve_rlm
from proxy.api.streaming import DONE, SSEResponse, guard_stream, read_body, sse_data, until_disconnect
from proxy.cache import CachePolicy
from proxy.middleware import RouteInfo
from proxy.registry import Deployment
from proxy.routing import MODE_HEADER, split_model

router = APIRouter(dependencies=[Depends(require_api_key)])

_DIRECT = {"x-rlm-mode": "direct"}


@router.post("/v1/chat/completions")
@router.post("/chat/completions", include_in_schema=False)
async def chat_completions(request: Request, services: ServicesDep, identity: IdentityDep) -> Response:
    chat = parse_chat_request(await read_body(request))
    model, _ = split_model(chat.model)
    deployment = services.registry.resolve(model)
    decision = await services.router.decide(request.headers.get(MODE_HEADER), chat.model, chat.messages,
                                            deployment)
    _note_route(request, services, decision.mode, decision.model)
    if decision.mode == "rlm":
        cache = CachePolicy.from_header(request.headers.get("cache-control"),
                                        identity.cache_scope(services.settings.cache.scope))
        run = run_request(chat, decision.model, services.settings.rlm, cache)
        # A bad sub-model would turn every sub-call into an error string: refuse the request instead.
        services.registry.resolve(run.sub_model, param="rlm.sub_model")
        return await serve_rlm(request, services, chat, run)
    if decision.model != chat.model:
        chat.body["model"] = decision.model
    if chat.stream:
        return await _stream_direct(request, services, deployment, chat)
    completion = await until_disconnect(request.receive, services.upstream.complete(deployment, chat.body))
    return Response(orjson.dumps(completion), media_type="application/json", headers=_DIRECT)


def _note_route(request: Request, services: Services, mode: str, model: str) -> None:
    """Tell the metrics middleware what was decided, and count the request as in flight in that mode."""
    info: RouteInfo | None = getattr(request.state, "route_info", None)
    if info is None:
        return
    info.mode, info.model, info.in_flight = mode, services.metrics.model(model), True
    services.metrics.in_flight.labels(mode).inc()


async def _stream_direct(request: Request, services: Services, deployment: Deployment,
                         chat: ChatRequest) -> Response:
    chunks = services.upstream.stream(deployment, chat.body)
    # Wait for the first chunk before answering, so that upstream failures still get a real status.
    first = await until_disconnect(request.receive, anext(chunks, None))
    return SSEResponse(guard_stream(_relay(first, chunks, chat.include_usage)), headers=_DIRECT)


async def _relay(first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]],
                 include_usage: bool) -> AsyncIterator[bytes]:
    """Re-emit upstream chunks with usage placed exactly as the OpenAI API does.

    The upstream is always asked for usage; providers differ in where they put it (a trailing
    `choices: []` chunk, or the last content chunk), so it is collected and sent once at the end.
    """
    usage: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    pending = [first] if first is not None else []
    async for chunk in _chain(pending, chunks):
        if chunk.get("usage"):
            usage = chunk["usage"]
        if not chunk.get("choices") or _carries_nothing(chunk):
            continue  # usage-only (re-sent at the end if asked for), or litellm's empty trailer
        chunk.pop("usage", None)
        if include_usage:
            chunk["usage"] = None
        last = chunk
        yield sse_data(chunk)
    if include_usage and usage is not None:
        template = last or {}
        yield sse_data({"id": template.get("id", ""), "object": "chat.completion.chunk",
                        "created": template.get("created", 0), "model": template.get("model", ""),
                        "choices": [], "usage": usage})
    yield DONE


def _carries_nothing(chunk: dict[str, Any]) -> bool:
    return all(not choice.get("delta") and not choice.get("finish_reason") and not choice.get("logprobs")
               for choice in chunk["choices"])


async def _chain(head: list[dict[str, Any]],
                 tail: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in head:
        yield item
    async for item in tail:
        yield item
