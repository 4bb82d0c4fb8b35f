"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages dialect over the request core.

Deployments that speak Messages themselves (`Deployment.speaks("messages")`) get the body as it came, with
the client's `anthropic-version` and `anthropic-beta`; the others are bridged to Chat Completions. Errors on
these paths take Anthropic's shape (proxy/errors.py picks it by path).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from proxy.access import check_model
from proxy.api import core
from proxy.api.deps import AnthropicIdentityDep, Services, ServicesDep
from proxy.api.request import ChatRequest
from proxy.api.rlm import ANSWER_DELTA_CHARS, progress_line, summary, with_heartbeats
from proxy.api.streaming import SSEResponse, chained, guard_stream, read_body, until_disconnect
from proxy.dialects import anthropic
from proxy.rlm.events import Event, RunFinished
from proxy.routing import split_model

router = APIRouter()

# Headers that tell an Anthropic upstream which API version and betas the client speaks.
_FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
_JSON = "application/json"


@router.post("/v1/messages")
async def messages(request: Request, services: ServicesDep, identity: AnthropicIdentityDep) -> Response:
    parsed = anthropic.parse_messages_request(await read_body(request))
    chat = parsed.chat
    routed = await core.route(request, services, identity, chat)
    if isinstance(routed, core.RLMRun):
        return await _rlm_answer(request, routed, chat, services.settings.rlm.heartbeat_s)
    if routed.group.speaks("messages"):
        return await _forward(request, services, routed, parsed.body)
    if parsed.reasoning_effort is not None and services.facts.supports_reasoning(routed.group):
        chat.body["reasoning_effort"] = parsed.reasoning_effort
    if chat.stream:
        first, chunks = await core.stream(request, services, routed)
        writer = anthropic.MessageStream(_message_id(first), chat.model)
        events = anthropic.relay_chat_stream(first, chunks, writer)
        return SSEResponse(guard_stream(events, anthropic.error_events), headers=core.DIRECT_HEADERS)
    completion = await core.complete(request, services, routed)
    return _json(anthropic.message_from_completion(completion, chat.model), core.DIRECT_HEADERS)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request, services: ServicesDep, identity: AnthropicIdentityDep) -> Response:
    parsed = anthropic.parse_messages_request(await read_body(request), count_only=True)
    model = split_model(parsed.chat.model)[0]
    check_model(identity, model)
    group = services.registry.resolve(model)
    if group.speaks("messages"):
        counted = await until_disconnect(request.receive, services.upstream.forward(
            group, "/messages/count_tokens", parsed.body, lambda _: None, _forwarded_headers(request)))
        return _json(counted)
    tokens = await asyncio.to_thread(services.facts.count_tokens, group, parsed.chat.messages,
                                     parsed.chat.body.get("tools"))
    return _json({"input_tokens": tokens})


async def _forward(request: Request, services: Services, direct: core.Direct,
                   body: dict[str, Any]) -> Response:
    """The body as the client sent it, to a deployment that speaks Messages itself."""
    upstream, headers = services.upstream, _forwarded_headers(request)
    body = anthropic.without_unsigned_thinking(body)
    if direct.chat.stream:
        events = upstream.forward_events(direct.group, "/messages", body, anthropic.chat_usage, headers)
        first = await until_disconnect(request.receive, anext(events, None))
        encoded = _encoded(chained([first] if first is not None else [], events))
        return SSEResponse(guard_stream(encoded, anthropic.error_events), headers=core.DIRECT_HEADERS)
    answer = await until_disconnect(request.receive, upstream.forward(
        direct.group, "/messages", body, anthropic.chat_usage, headers))
    return _json(answer, core.DIRECT_HEADERS)


def _forwarded_headers(request: Request) -> dict[str, str]:
    return {name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers}


async def _encoded(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for event in events:
        if isinstance(event.get("type"), str):
            yield anthropic.sse_event(event)


def _message_id(first: dict[str, Any] | None) -> str:
    return f"msg_{(first or {}).get('id') or int(time.time() * 1000)}"


def _json(payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), media_type=_JSON, headers=headers)


async def _rlm_answer(request: Request, run: core.RLMRun, chat: ChatRequest, heartbeat_s: float) -> Response:
    model = chat.model
    writer = anthropic.MessageStream(f"msg_rlm_{run.run_id}", model)
    if chat.stream:
        events = _rlm_events(run, writer, heartbeat_s)
        return SSEResponse(guard_stream(events, anthropic.error_events), headers=core.rlm_headers(run.run_id))
    finished = await core.finish(request, run)
    blocks = [{"type": "text", "text": finished.answer}] if finished.answer else []
    blocks += [anthropic.tool_use_block(call) for call in finished.tool_calls]
    body = anthropic.message(writer.message_id, model, blocks, anthropic.STOP_REASONS[finished.finish_reason],
                             anthropic.usage(finished.stats.usage()))
    return _json({**body, "rlm": summary(run.run_id, finished)}, core.rlm_headers(run.run_id, finished))


async def _rlm_events(run: core.RLMRun, writer: anthropic.MessageStream, heartbeat_s: float
                      ) -> AsyncIterator[bytes]:
    """Progress as a thinking block, then the answer as text (and any tool calls as tool_use blocks)."""
    for event in writer.start():
        yield event
    item: Event | None
    async for item in with_heartbeats(run.events, heartbeat_s):
        if item is None:
            yield anthropic.PING
            continue
        if not isinstance(item, RunFinished):
            line = progress_line(item)
            for event in writer.thinking(line) if line is not None else []:
                yield event
            continue
        answer = item.answer
        chunks = [writer.text(answer[start:start + ANSWER_DELTA_CHARS])
                  for start in range(0, len(answer), ANSWER_DELTA_CHARS)]
        chunks += [writer.tool_call({**call, "index": index}) for index, call in enumerate(item.tool_calls)]
        chunks.append(writer.finish(anthropic.STOP_REASONS[item.finish_reason],
                                    anthropic.usage(item.stats.usage()), rlm=summary(run.run_id, item)))
        for events in chunks:
            for event in events:
                yield event
        return
