"""POST /v1/embeddings: passed through to the upstream (RLM mode answers chat-like requests only)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from proxy.api import core
from proxy.api.deps import IdentityDep, ServicesDep, require_api_key
from proxy.api.request import check_text_input, model_name, optional, parse_json_body
from proxy.api.streaming import read_body, until_disconnect
from proxy.errors import invalid_request

router = APIRouter(dependencies=[Depends(require_api_key)])

ENCODING_FORMATS = ("float", "base64")


@router.post("/v1/embeddings")
@router.post("/embeddings", include_in_schema=False)
async def embeddings(request: Request, services: ServicesDep, identity: IdentityDep) -> Response:
    body = parse_embeddings_request(await read_body(request))
    group = await core.route_passthrough(request, services, identity, body)
    answer = await until_disconnect(request.receive, services.upstream.embed(group, body))
    return Response(orjson.dumps(answer), media_type="application/json", headers=core.DIRECT_HEADERS)


def parse_embeddings_request(raw: bytes | bytearray) -> dict[str, Any]:
    """The body, checked where the proxy can say what is wrong better than a provider would; other
    parameters go to the upstream untouched."""
    body = parse_json_body(raw)
    model_name(body)
    check_text_input(body, "input")
    encoding = optional(body, "encoding_format", str, "a string")
    if encoding is not None and encoding not in ENCODING_FORMATS:
        raise invalid_request(f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}, got "
                              f"{encoding!r}.", param="encoding_format", code="invalid_value")
    dimensions = optional(body, "dimensions", int, "an integer")
    if dimensions is not None and (isinstance(dimensions, bool) or dimensions < 1):
        raise invalid_request(f"'dimensions' must be a positive integer, got {dimensions!r}.",
                              param="dimensions", code="invalid_value")
    optional(body, "user", str, "a string")
    return body
