"""Tying work to the client's connection: cancel it on disconnect, and send SSE streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.errors import ClientDisconnected, ProxyError, internal_error

T = TypeVar("T")
log = logging.getLogger("rlm_proxy")

DONE = b"data: [DONE]\n\n"


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it and raising `ClientDisconnected` if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientDisconnected


async def read_body(request: Request) -> bytearray:
    """The whole body, held once: Starlette's `request.body()` keeps the chunks and a joined copy, and
    prompts can be 100 MB. (A growing bytearray is resized in place by the allocator.)"""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return body


async def chained(head: list[T], tail: AsyncIterator[T]) -> AsyncIterator[T]:
    """The items of `head`, then those of `tail` (a stream whose first items were awaited already)."""
    for item in head:
        yield item
    async for item in tail:
        yield item


def sse_data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class SSEResponse(Response):
    """Streams pre-encoded SSE events; a client disconnect cancels the producer (and what it awaits)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        # Not Response.__init__: it would set content-length: 0 for a body it does not know about.
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def pump() -> None:
            async for event in self._events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        with contextlib.suppress(ClientDisconnected, OSError):
            await until_disconnect(receive, pump())


def chat_error_events(error: ProxyError) -> list[bytes]:
    """How an OpenAI-dialect stream ends in an error: the error's data, then [DONE]."""
    return [sse_data(error.payload()), DONE]


async def guard_stream(events: AsyncIterator[bytes],
                       error_events: Callable[[ProxyError], list[bytes]] = chat_error_events
                       ) -> AsyncIterator[bytes]:
    """Once a stream has started, errors travel inside it, as the dialect's `error_events`."""
    try:
        async for event in events:
            yield event
    except ProxyError as error:
        for event in error_events(error):
            yield event
    except Exception:
        log.exception("error inside a started stream")
        for event in error_events(internal_error()):
            yield event
