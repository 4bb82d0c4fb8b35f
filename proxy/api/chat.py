"""POST /v1/chat/completions: the Chat Completions dialect over the request core."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from proxy.api import core
from proxy.api.deps import IdentityDep, ServicesDep, require_api_key
from proxy.api.relay import relay
from proxy.api.request import ChatRequest, parse_chat_request
from proxy.api.rlm import ANSWER_DELTA_CHARS, HEARTBEAT, progress_line, summary, with_heartbeats
from proxy.api.streaming import DONE, SSEResponse, guard_stream, read_body, sse_data
from proxy.rlm.events import Event, RunFinished

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/chat/completions")
@router.post("/chat/completions", include_in_schema=False)
async def chat_completions(request: Request, services: ServicesDep, identity: IdentityDep) -> Response:
    chat = parse_chat_request(await read_body(request))
    routed = await core.route(request, services, identity, chat)
    if isinstance(routed, core.RLMRun):
        if chat.stream:
            sse = _rlm_chunks(routed, chat, services.settings.rlm.heartbeat_s)
            return SSEResponse(guard_stream(sse), headers=core.rlm_headers(routed.run_id))
        finished = await core.finish(request, routed)
        return Response(orjson.dumps(_rlm_completion(routed.run_id, chat.model, finished)),
                        media_type="application/json", headers=core.rlm_headers(routed.run_id, finished))
    if chat.stream:
        first, chunks = await core.stream(request, services, routed)
        relayed = relay(first, chunks, chat.include_usage, "chat.completion.chunk")
        return SSEResponse(guard_stream(relayed), headers=core.DIRECT_HEADERS)
    completion = await core.complete(request, services, routed)
    return Response(orjson.dumps(completion), media_type="application/json", headers=core.DIRECT_HEADERS)


def _rlm_completion(run_id: str, model: str, finished: RunFinished) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": finished.answer}
    if finished.tool_calls:  # as OpenAI answers a call: content null unless the model also wrote text
        message = {"role": "assistant", "content": finished.answer or None, "tool_calls": finished.tool_calls}
    return {"id": f"chatcmpl-rlm-{run_id}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finished.finish_reason}],
            "usage": finished.stats.usage(), "rlm": summary(run_id, finished)}


def _pieces(text: str) -> list[str]:
    return [text[start:start + ANSWER_DELTA_CHARS] for start in range(0, len(text), ANSWER_DELTA_CHARS)]


def _tool_call_deltas(calls: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """Calls streamed as OpenAI streams them: each one's id, type and name with empty arguments, then its
    arguments in pieces."""
    deltas = []
    for index, call in enumerate(calls):
        function = call["function"]
        deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                       "function": {"name": function["name"], "arguments": ""}}]})
        deltas.extend({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                      for piece in _pieces(function["arguments"]))
    return deltas


async def _rlm_chunks(run: core.RLMRun, chat: ChatRequest, heartbeat_s: float) -> AsyncIterator[bytes]:
    base = {"id": f"chatcmpl-rlm-{run.run_id}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": chat.model}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        body: dict[str, Any] = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                      "finish_reason": finish_reason}]}
        if chat.include_usage:
            body["usage"] = None
        return sse_data(body)

    yield chunk({"role": "assistant", "content": ""})
    event: Event | None
    async for event in with_heartbeats(run.events, heartbeat_s):
        if event is None:
            yield HEARTBEAT
        elif isinstance(event, RunFinished):
            for delta in [{"content": piece} for piece in _pieces(event.answer)] + _tool_call_deltas(
                    event.tool_calls):
                yield chunk(delta)
            yield chunk({}, event.finish_reason)
            if chat.include_usage:
                yield sse_data({**base, "choices": [], "usage": event.stats.usage(),
                                "rlm": summary(run.run_id, event)})
            yield DONE
            return
        elif (line := progress_line(event)) is not None:
            yield chunk({"reasoning_content": line})
