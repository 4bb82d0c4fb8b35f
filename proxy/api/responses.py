"""POST /v1/responses and the stored-response routes: the Responses API over the request core.

Direct requests are bridged to chat completions (proxy/dialects/responses.py), or forwarded as they are to
a deployment that speaks the Responses API itself. Either way the proxy keeps the stored responses: a
`previous_response_id` is expanded from its own store into input items, so conversations, retrieval and
per-key isolation work alike for every deployment and on every replica.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from proxy.api import core
from proxy.api.deps import IdentityDep, Services, ServicesDep, require_api_key
from proxy.api.request import ChatRequest, parse_json_body
from proxy.api.rlm import ANSWER_DELTA_CHARS, HEARTBEAT, progress_line, summary, with_heartbeats
from proxy.api.streaming import SSEResponse, read_body, until_disconnect
from proxy.auth import Identity
from proxy.dialects.responses import (
    ResponsesRequest,
    chat_body,
    chat_usage,
    finished,
    new_id,
    output_items,
    parse_request,
    response_from_completion,
    response_shell,
)
from proxy.dialects.responses_stream import ResponseEvents, sse_event
from proxy.errors import ProxyError, internal_error, invalid_request
from proxy.rlm.events import RunFinished

router = APIRouter(dependencies=[Depends(require_api_key)])
log = logging.getLogger("rlm_proxy")

NATIVE_PATH = "/responses"


@router.post("/v1/responses")
@router.post("/responses", include_in_schema=False)
async def create_response(request: Request, services: ServicesDep, identity: IdentityDep) -> Response:
    parsed = parse_request(parse_json_body(await read_body(request)))
    history: list[dict[str, Any]] = []
    if parsed.previous_response_id is not None:
        stored = await services.responses.load(identity.key_hash, parsed.previous_response_id,
                                               param="previous_response_id")
        history = stored.conversation
    chat = ChatRequest(body=chat_body(parsed, history), model=parsed.model, stream=parsed.stream,
                       include_usage=True, rlm=parsed.rlm)
    routed = await core.route(request, services, identity, chat)
    keep = _keeper(services, identity, parsed, history)
    if isinstance(routed, core.RLMRun):
        return await _rlm(request, services, routed, parsed, keep)
    if routed.group.speaks("responses"):
        return await _native(request, services, routed, parsed, history, keep)
    if not services.facts.supports_reasoning(routed.group):
        chat.body.pop("reasoning_effort", None)
    shell = response_shell(parsed, new_id("resp"))
    if parsed.stream:
        first, chunks = await core.stream(request, services, routed)
        events = ResponseEvents(shell)
        return SSEResponse(_guarded(events, _bridged(events, first, chunks), keep),
                           headers=core.DIRECT_HEADERS)
    answer = response_from_completion(shell, await core.complete(request, services, routed))
    await keep(answer)
    return _json(answer, core.DIRECT_HEADERS)


Keeper = Callable[[dict[str, Any]], Awaitable[None]]


def _keeper(services: Services, identity: Identity, parsed: ResponsesRequest,
            history: list[dict[str, Any]]) -> Keeper:
    """Stores a finished response with the conversation before it, unless the client said `store: false`."""
    async def keep(response: dict[str, Any]) -> None:
        if parsed.store and isinstance(response.get("id"), str):
            await services.responses.save(identity.key_hash, response, [*history, *parsed.input_items])
    return keep


def _json(payload: dict[str, Any], headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)


async def _bridged(events: ResponseEvents, first: dict[str, Any] | None,
                   chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """An upstream chat stream as Responses events."""
    yield events.start()
    if first is not None:
        yield events.chat_chunk(first)
    async for chunk in chunks:
        if out := events.chat_chunk(chunk):
            yield out
    yield events.finish()


async def _guarded(events: ResponseEvents, stream: AsyncIterator[bytes],
                   keep: Keeper) -> AsyncIterator[bytes]:
    """Once the stream has started, an error ends it with `response.failed`; a finished one is stored."""
    try:
        async for out in stream:
            yield out
    except ProxyError as error:
        yield events.fail(error)
        return
    except Exception:
        log.exception("error inside a started stream")
        yield events.fail(internal_error())
        return
    if events.response is not None:
        await keep(events.response)


# ---------------------------------------------------------------------------------------------------------
# RLM mode


async def _rlm(request: Request, services: Services, run: core.RLMRun, parsed: ResponsesRequest,
               keep: Keeper) -> Response:
    shell = response_shell(parsed, f"resp_rlm_{run.run_id}")
    if parsed.stream:
        events = ResponseEvents(shell)
        stream = _rlm_events(events, run, services.settings.rlm.heartbeat_s)
        return SSEResponse(_guarded(events, stream, keep), headers=core.rlm_headers(run.run_id))
    done = await core.finish(request, run)
    answer = {**finished(shell, output_items(None, done.answer, done.tool_calls), done.finish_reason,
                         done.stats.usage()), "rlm": summary(run.run_id, done)}
    await keep(answer)
    return _json(answer, core.rlm_headers(run.run_id, done))


async def _rlm_events(events: ResponseEvents, run: core.RLMRun, heartbeat_s: float) -> AsyncIterator[bytes]:
    """Progress as a reasoning summary while the run works, then the answer (or tool calls)."""
    yield events.start()
    async for event in with_heartbeats(run.events, heartbeat_s):
        if event is None:
            yield HEARTBEAT
        elif isinstance(event, RunFinished):
            for start in range(0, len(event.answer), ANSWER_DELTA_CHARS):
                yield events.text(event.answer[start:start + ANSWER_DELTA_CHARS])
            for index, call in enumerate(event.tool_calls):
                function = call.get("function") or {}
                yield events.tool_call(index, call.get("id"), function.get("name"),
                                       function.get("arguments", ""))
            yield events.finish(event.finish_reason, event.stats.usage(), rlm=summary(run.run_id, event))
            return
        elif (line := progress_line(event)) is not None:
            yield events.reasoning(line)


# ---------------------------------------------------------------------------------------------------------
# Native forwarding


def native_usage(item: dict[str, Any]) -> dict[str, Any] | None:
    """Usage in chat terms from a Response, or from the stream event that carries the final one."""
    if item.get("object") == "response":
        return chat_usage(item)
    if item.get("type") in ("response.completed", "response.incomplete") and isinstance(item.get("response"),
                                                                                         dict):
        return chat_usage(item["response"])
    return None


async def _native(request: Request, services: Services, direct: core.Direct, parsed: ResponsesRequest,
                  history: list[dict[str, Any]], keep: Keeper) -> Response:
    """The client's body as it came, but a `previous_response_id` becomes the stored conversation."""
    body = {**parsed.body, "model": direct.chat.body["model"]}
    if parsed.previous_response_id is not None:
        del body["previous_response_id"]
        body["input"] = [item for item in [*history, *parsed.input_items] if item.get("type") != "reasoning"]
    upstream = services.upstream
    if not parsed.stream:
        forwarded = upstream.forward(direct.group, NATIVE_PATH, body, native_usage)
        answer = await until_disconnect(request.receive, forwarded)
        await keep(answer)
        return _json(answer, core.DIRECT_HEADERS)
    items = upstream.forward_events(direct.group, NATIVE_PATH, body, native_usage)
    first = await until_disconnect(request.receive, anext(items, None))
    return SSEResponse(_relayed(first, items, keep), headers=core.DIRECT_HEADERS)


async def _relayed(first: dict[str, Any] | None, items: AsyncIterator[dict[str, Any]],
                   keep: Keeper) -> AsyncIterator[bytes]:
    """The upstream's events as they are; the final Response is stored. A break ends with an `error` event."""
    event, sequence = first, 0
    try:
        while event is not None:
            if isinstance(event.get("sequence_number"), int):
                sequence = event["sequence_number"]
            if event.get("type") == "response.completed" and isinstance(event.get("response"), dict):
                await keep(event["response"])
            yield sse_event(event)
            event = await anext(items, None)
    except ProxyError as error:
        yield sse_event({"type": "error", "sequence_number": sequence + 1, "code": error.code,
                         "message": error.message, "param": error.param})


# ---------------------------------------------------------------------------------------------------------
# Stored responses


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, services: ServicesDep, identity: IdentityDep) -> Response:
    return _json((await services.responses.load(identity.key_hash, response_id)).response, {})


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, services: ServicesDep, identity: IdentityDep) -> Response:
    await services.responses.delete(identity.key_hash, response_id)
    return _json({"id": response_id, "object": "response", "deleted": True}, {})


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(response_id: str, services: ServicesDep, identity: IdentityDep,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20,
                           order: Literal["asc", "desc"] = "desc", after: str | None = None) -> Response:
    """The conversation a stored response answered, paged as OpenAI pages it (newest first by default)."""
    items = (await services.responses.load(identity.key_hash, response_id)).input_items
    if order == "desc":
        items = items[::-1]
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise invalid_request(f"'after' names no input item of response '{response_id}'.", param="after",
                                  code="invalid_value")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return _json({"object": "list", "data": page, "first_id": page[0].get("id") if page else None,
                  "last_id": page[-1].get("id") if page else None, "has_more": len(items) > limit}, {})
