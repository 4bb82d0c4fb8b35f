"""The mock upstream's /v1/responses: a Responses request is answered by the mock's chat handler (markers,
faults, tool calls and the RLM policy included) and its answer rendered back as the Responses API does,
with the proxy's own translation (proxy/dialects). It lets tests drive the proxy's native forwarding.

Responses are not stored: `previous_response_id` is refused, as an upstream without that response would.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from proxy.dialects.responses import (
    ResponsesRequest,
    chat_body,
    parse_request,
    response_from_completion,
    response_shell,
)
from proxy.dialects.responses_stream import ResponseEvents
from proxy.errors import ProxyError

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ChatHandler = Callable[[Receive, Send], Awaitable[None]]


class ResponsesOverChat:
    """ASGI handler (receive, send) wrapping the chat handler: it hears the chat body, the client hears a
    Response (or its events)."""

    def __init__(self, chat: ChatHandler) -> None:
        self._chat = chat
        self._ids = itertools.count(1)

    async def __call__(self, receive: Receive, send: Send) -> None:
        raw = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            request = _parse(bytes(raw))
        except ProxyError as error:
            await _send(send, error.status, error.body(), b"application/json")
            return
        chat = orjson.dumps(chat_body(request, []))
        sent_body = False

        async def chat_receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": chat, "more_body": False}
            return await receive()

        shell = response_shell(request, f"resp_mock_{next(self._ids)}")
        await self._chat(chat_receive, _Translator(send, shell))


def _parse(raw: bytes) -> ResponsesRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProxyError(400, "The body is not JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ProxyError(400, "The body must be a JSON object.", code="invalid_json")
    request = parse_request(body)
    if request.previous_response_id is not None:
        raise ProxyError(404, f"No response '{request.previous_response_id}' (the mock stores none).",
                         code="response_not_found", param="previous_response_id")
    return request


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Translator:
    """An ASGI `send` that turns the chat handler's answer into the Responses API's: errors pass as they
    are, a completion becomes a Response, a chunk stream becomes Responses events (as it arrives)."""

    def __init__(self, send: Send, shell: dict[str, Any]) -> None:
        self._send = send
        self._shell = shell
        self._status = 200
        self._streaming = False
        self._buffer = bytearray()
        self._events = ResponseEvents(shell)

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._status = message["status"]
            headers = dict(message.get("headers", []))
            self._streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            if self._streaming:
                await self._send(message)
                await self._body(self._events.start())
            return
        self._buffer += message.get("body", b"")
        if self._streaming:
            await self._relay_lines(more=message.get("more_body", False))
        elif not message.get("more_body", False):
            body = bytes(self._buffer)
            if self._status == 200:
                with contextlib.suppress(orjson.JSONDecodeError):  # [[mock:malformed]] stays malformed
                    body = orjson.dumps(response_from_completion(self._shell, orjson.loads(body)))
            await _send(self._send, self._status, body, b"application/json")

    async def _relay_lines(self, more: bool) -> None:
        *lines, rest = bytes(self._buffer).split(b"\n\n")
        self._buffer = bytearray(rest)
        for line in lines:
            data = line.removeprefix(b"data: ")
            if data == b"[DONE]":
                await self._body(self._events.finish())
            elif data.startswith(b"{"):
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    await self._body(line + b"\n\n")  # malformed stays malformed
                    continue
                await self._body(self._events.chat_chunk(chunk))
        if not more:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _body(self, data: bytes) -> None:
        if data:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
