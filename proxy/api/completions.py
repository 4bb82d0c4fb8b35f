"""POST /v1/completions (legacy completions): passed through to the upstream, streaming and not (RLM mode
answers chat-like requests only)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from proxy.api import core
from proxy.api.deps import IdentityDep, ServicesDep, require_api_key
from proxy.api.relay import relay
from proxy.api.request import check_text_input, model_name, parse_json_body, stream_flags
from proxy.api.streaming import SSEResponse, guard_stream, read_body, until_disconnect

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/completions")
@router.post("/completions", include_in_schema=False)
async def completions(request: Request, services: ServicesDep, identity: IdentityDep) -> Response:
    body = parse_json_body(await read_body(request))
    model_name(body)
    check_text_input(body, "prompt")
    stream, include_usage = stream_flags(body)
    group = await core.route_passthrough(request, services, identity, body)
    if stream:
        first, chunks = await core.opened(request, services.upstream.stream_text(group, body))
        relayed = relay(first, chunks, include_usage, "text_completion")
        return SSEResponse(guard_stream(relayed), headers=core.DIRECT_HEADERS)
    answer = await until_disconnect(request.receive, services.upstream.complete_text(group, body))
    return Response(orjson.dumps(answer), media_type="application/json", headers=core.DIRECT_HEADERS)
