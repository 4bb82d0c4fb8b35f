"""The run viewer's pages and assets (proxy/ui/static), and the highlighter its run page calls.

The pages hold no data and need no key: their script asks the runs API with the key the user typed, kept in
the tab's sessionStorage. Everything is served from the package with a Content-Security-Policy that allows
this origin only, so that a page can neither load nor send anything elsewhere, nor run inline script.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Annotated

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from proxy.api.deps import IdentityDep
from proxy.errors import ProxyError
from proxy.ui.highlight import python_tokens

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"content-security-policy": CONTENT_SECURITY_POLICY, "x-content-type-options": "nosniff",
           "referrer-policy": "no-referrer", "cache-control": "no-cache"}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".js": "text/javascript; charset=utf-8"}
MAX_BLOCKS = 500
MAX_BLOCK_CHARS = 200_000


class HighlightRequest(BaseModel):
    code: Annotated[list[Annotated[str, Field(max_length=MAX_BLOCK_CHARS)]], Field(max_length=MAX_BLOCKS)]


def build_router() -> APIRouter:
    """The routes, with the assets read from the package once."""
    static = resources.files("proxy.ui") / "static"
    assets = {item.name: item.read_bytes() for item in static.iterdir()
              if item.is_file() and any(item.name.endswith(suffix) for suffix in MEDIA_TYPES)}
    router = APIRouter()

    def asset(name: str) -> Response:
        if name not in assets:
            raise ProxyError(404, f"The viewer has no file '{name}'.", code="not_found")
        media_type = MEDIA_TYPES[name[name.rindex("."):]]
        return Response(assets[name], media_type=media_type, headers=HEADERS)

    @router.get("/ui/runs", include_in_schema=False)
    async def runs_page() -> Response:
        return asset("runs.html")

    @router.get("/ui/runs/{run_id}", include_in_schema=False)
    async def run_page(run_id: str) -> Response:
        return asset("run.html")  # the script reads the id from the address

    @router.get("/ui/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        return asset(name)

    @router.post("/ui/highlight", include_in_schema=False)
    async def highlight(body: HighlightRequest, identity: IdentityDep) -> Response:
        """Each piece of Python as [class, text] runs; a key is needed, as the work is the server's."""
        tokens = await asyncio.to_thread(lambda: [python_tokens(code) for code in body.code])
        return Response(orjson.dumps({"object": "list", "data": tokens}), media_type="application/json",
                        headers=HEADERS)

    return router
