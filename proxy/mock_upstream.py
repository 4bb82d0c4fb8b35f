"""OpenAI-compatible mock model server for tests, benchmarks and local runs.

A hand-written ASGI app (no framework) so that it is never the bottleneck of a benchmark. Faults are
injected either by settings (random error rate, context window) or by a marker in the last user message,
so a test can target a single request::

    [[mock:status=500 times=2 id=abc]]   fail the first 2 attempts carrying id "abc", then answer normally
    [[mock:status=429]]                  answer 429 (OpenAI error shape, retry-after: 0)
    [[mock:timeout]]                     never answer, until the client disconnects
    [[mock:latency_ms=500]]              per-request latency override
    [[mock:malformed]]                   HTTP 200 with a body (or a stream line) that is not JSON
    [[mock:stream_error]]                streaming: two content chunks, then the connection is dropped

It also serves legacy completions (`/v1/completions`, the marker in the prompt) and embeddings
(`/v1/embeddings`, deterministic vectors from `proxy.mock_embeddings`; the status, timeout, latency and
malformed markers in any input).

Every model request ends up either ``completed`` (its whole response was sent) or ``cancelled`` (the client
disconnected first), so ``requests == completed + cancelled + in_flight`` between resets.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import orjson
import uvicorn

from proxy import mock_embeddings, mock_policy

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_T = TypeVar("_T")

_JSON_HEADERS: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
_RATE_LIMIT_HEADERS: list[tuple[bytes, bytes]] = [*_JSON_HEADERS, (b"retry-after", b"0")]
_SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_SSE_DONE = b"data: [DONE]\n\n"
_MALFORMED_BODY = b'{"id": "chatcmpl-broken", "choices": ['
_MALFORMED_SSE_LINE = b"data: {not json\n\n"
_TIMEOUT_MARKER_SECONDS = 3600.0
_STREAM_ERROR_CONTENT_CHUNKS = 2
_MARKER_PREFIX = "[[mock:"
_MARKER_RE = re.compile(r"\[\[mock:([^\]]*)\]\]")
_FLAG_OPTIONS = frozenset({"timeout", "malformed", "stream_error"})
_VALUE_OPTIONS = frozenset({"status", "times", "id", "latency_ms"})


@dataclass
class MockSettings:
    latency_ms: float = 0.0  # fixed delay before the response (before the first byte when streaming)
    stream_deltas: int = 4  # a streamed reply is split into this many content deltas
    context_window_tokens: int | None = None  # None = unlimited
    error_rate: float = 0.0  # fraction of requests answered with error_status (random, seeded)
    error_status: int = 500
    seed: int = 0
    reply: str | None = None  # fixed reply text; None = default deterministic reply
    model_name: str = "mock-model"  # listed by GET /v1/models


@dataclass
class MockStats:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    in_flight: int = 0
    errors_injected: int = 0
    by_marker: dict[str, int] = field(default_factory=dict)


class _BadRequest(Exception):
    """The request cannot be served; its message goes to the client as a 400."""


@dataclass(frozen=True)
class _Marker:
    status: int | None = None
    times: int | None = None
    marker_id: str | None = None
    latency_ms: float | None = None
    timeout: bool = False
    malformed: bool = False
    stream_error: bool = False

    def disarmed(self) -> _Marker:
        """The marker once its `times` budget is spent: only the latency override survives."""
        return _Marker(latency_ms=self.latency_ms)


@dataclass(frozen=True)
class _Embedding:
    texts: list[str]
    dimensions: int
    base64: bool


@dataclass(frozen=True)
class _ChatRequest:
    """A chat request, or a legacy completion (`legacy`), or an embeddings request (`embedding` set)."""

    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    last_user_text: str
    messages: list[mock_policy.Message]
    legacy: bool = False
    embedding: _Embedding | None = None


_Parser = Callable[[bytes, str], _ChatRequest]  # a request body and the default model name


# ---------------------------------------------------------------------------------------------------------
# Request parsing


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""  # None (assistant tool calls) or unsupported part types carry no text


def _parse_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # also covers invalid UTF-8
        raise _BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(payload, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return payload


def _model(payload: dict[str, Any], default_model: str) -> str:
    model = payload.get("model")
    return model if isinstance(model, str) else default_model


def _include_usage(payload: dict[str, Any]) -> bool:
    stream_options = payload.get("stream_options")
    return isinstance(stream_options, dict) and stream_options.get("include_usage") is True


def _parse_chat(body: bytes, default_model: str) -> _ChatRequest:
    payload = _parse_object(body)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("'messages' must be a list of message objects.")
    prompt_tokens = 0
    last_user_text = ""
    texts = []
    for message in messages:
        text = _content_text(message.get("content"))
        texts.append(mock_policy.Message(str(message.get("role")), text))
        prompt_tokens += len(text) // 4 + 4
        if message.get("role") == "user":
            last_user_text = text
    return _ChatRequest(
        model=_model(payload, default_model),
        stream=payload.get("stream") is True,
        include_usage=_include_usage(payload),
        prompt_tokens=prompt_tokens,
        last_user_text=last_user_text,
        messages=texts,
    )


def _parse_text_completion(body: bytes, default_model: str) -> _ChatRequest:
    """A legacy completion, answered as the chat model answers its prompt as one user message."""
    payload = _parse_object(body)
    try:
        text = "\n".join(mock_embeddings.input_texts(payload.get("prompt")))
    except ValueError:
        raise _BadRequest("'prompt' must be a string, an array of strings, or token arrays.") from None
    return _ChatRequest(
        model=_model(payload, default_model),
        stream=payload.get("stream") is True,
        include_usage=_include_usage(payload),
        prompt_tokens=len(text) // 4 + 4,
        last_user_text=text,
        messages=[mock_policy.Message("user", text)],
        legacy=True,
    )


def _parse_embeddings(body: bytes, default_model: str) -> _ChatRequest:
    payload = _parse_object(body)
    try:
        texts = mock_embeddings.input_texts(payload.get("input"))
    except ValueError as exc:
        raise _BadRequest(str(exc)) from None
    dimensions = payload.get("dimensions", mock_embeddings.DEFAULT_DIMENSIONS)
    if type(dimensions) is not int or not 1 <= dimensions <= mock_embeddings.MAX_DIMENSIONS:
        raise _BadRequest(f"'dimensions' must be an integer from 1 to {mock_embeddings.MAX_DIMENSIONS}.")
    encoding = payload.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _BadRequest("'encoding_format' must be 'float' or 'base64'.")
    text = "\n".join(texts)
    return _ChatRequest(
        model=_model(payload, default_model),
        stream=False,
        include_usage=False,
        prompt_tokens=sum(mock_embeddings.prompt_tokens(t) for t in texts),
        last_user_text=text,
        messages=[],
        embedding=_Embedding(texts, dimensions, encoding == "base64"),
    )


def _parse_marker(text: str) -> _Marker | None:
    if _MARKER_PREFIX not in text:  # cheap pre-check: prompts can be tens of MB
        return None
    options: dict[str, str | None] = {}
    for spec in _MARKER_RE.findall(text):
        for token in spec.split():
            key, sep, value = token.partition("=")
            if (key in _FLAG_OPTIONS and sep) or (key in _VALUE_OPTIONS and not sep):
                raise _BadRequest(f"Bad mock marker option {token!r}.")
            if key not in _FLAG_OPTIONS and key not in _VALUE_OPTIONS:
                raise _BadRequest(f"Unknown mock marker option {token!r}.")
            options[key] = value if sep else None
    if not options:
        return None
    try:
        marker = _Marker(
            status=_opt(options, "status", int),
            times=_opt(options, "times", int),
            marker_id=options.get("id"),
            latency_ms=_opt(options, "latency_ms", float),
            timeout="timeout" in options,
            malformed="malformed" in options,
            stream_error="stream_error" in options,
        )
    except ValueError as exc:
        raise _BadRequest(f"Bad mock marker value: {exc}") from None
    if marker.status is not None and not 400 <= marker.status <= 599:
        raise _BadRequest("Mock marker option 'status' must be an HTTP error status (400-599).")
    if marker.times is not None and marker.marker_id is None:
        raise _BadRequest("Mock marker option 'times' needs an 'id' to count attempts by.")
    return marker


def _opt(options: dict[str, str | None], key: str, convert: Callable[[str], _T]) -> _T | None:
    value = options.get(key)
    return None if value is None else convert(value)


# ---------------------------------------------------------------------------------------------------------
# Response bodies


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _error_body(message: str, err_type: str, code: str | None, param: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": err_type, "param": param, "code": code}})


def _injected_error(status: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    if status == 429:
        body = _error_body(
            "Rate limit reached (injected by mock upstream).", "requests", "rate_limit_exceeded"
        )
        return body, _RATE_LIMIT_HEADERS
    if status >= 500:
        message = "The server had an error while processing your request (injected by mock upstream)."
        return _error_body(message, "server_error", "server_error"), _JSON_HEADERS
    return _error_body(f"Injected error {status}.", "invalid_request_error", None), _JSON_HEADERS


def _context_error(window: int, prompt_tokens: int) -> bytes:
    message = (
        f"This model's maximum context length is {window} tokens. However, your messages resulted in "
        f"{prompt_tokens} tokens. Please reduce the length of the messages."
    )
    return _error_body(message, "invalid_request_error", "context_length_exceeded", "messages")


def _usage(prompt_tokens: int, reply: str) -> dict[str, int]:
    completion_tokens = len(reply) // 4 + 1
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _text_completion_body(completion_id: str, model: str, reply: str, prompt_tokens: int) -> bytes:
    return _dumps(
        {
            "id": completion_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "text": reply, "logprobs": None, "finish_reason": "stop"}],
            "usage": _usage(prompt_tokens, reply),
        }
    )


def _completion_body(completion_id: str, model: str, reply: str, prompt_tokens: int) -> bytes:
    return _dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(prompt_tokens, reply),
        }
    )


def _split(text: str, parts: int) -> list[str]:
    """Split into exactly `parts` pieces (some empty when the text is short) that concatenate to `text`."""
    parts = max(1, parts)
    bounds = [len(text) * i // parts for i in range(parts + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(parts)]


class _ChunkFactory:
    """Builds the SSE events of one streamed completion (chat, or `legacy`), mirroring the OpenAI wire
    format."""

    def __init__(self, completion_id: str, model: str, include_usage: bool, legacy: bool = False) -> None:
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion" if legacy else "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self._include_usage = include_usage
        self._legacy = legacy

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk = {**self._base, "choices": choices}
        if self._include_usage:
            chunk["usage"] = usage  # OpenAI sends an explicit null on every chunk but the last
        return b"data: " + _dumps(chunk) + b"\n\n"

    def delta(self, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        content: dict[str, Any] = {"text": delta.get("content", "")} if self._legacy else {"delta": delta}
        return self._event([{"index": 0, **content, "logprobs": None, "finish_reason": finish_reason}])

    def usage(self, usage: dict[str, int]) -> bytes:
        return self._event([], usage)


# ---------------------------------------------------------------------------------------------------------
# ASGI plumbing


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client went away while uploading it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_bytes(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, obj: Any) -> None:
    await _send_bytes(send, status, _dumps(obj), _JSON_HEADERS)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _DisconnectWatch:
    """Listens for `http.disconnect` in the background so that sleeps and streams stop early.

    Started lazily: the common zero-latency, non-streaming path never pays for the extra task.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None

    async def _wait_for_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    def _started(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._wait_for_disconnect())
        return self._task

    async def sleep(self, seconds: float) -> bool:
        """Sleep; True if the client disconnected meanwhile (which ends the sleep)."""
        done, _ = await asyncio.wait({self._started()}, timeout=seconds)
        return bool(done)

    async def disconnected(self) -> bool:
        # Yielding once lets the event loop process a pending connection loss before we look.
        task = self._started()
        await asyncio.sleep(0)
        return task.done()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


# ---------------------------------------------------------------------------------------------------------
# The app


class MockApp:
    """ASGI callable; all state (counters, RNG) lives on the instance."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.stats = MockStats()
        self._rng = random.Random(settings.seed)
        self._ids = itertools.count(1)
        chat = self._counted(_parse_chat)
        legacy = self._counted(_parse_text_completion)
        embeddings = self._counted(_parse_embeddings)
        self._routes: dict[tuple[str, str], Callable[[Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): chat,
            ("POST", "/chat/completions"): chat,
            ("POST", "/v1/completions"): legacy,
            ("POST", "/completions"): legacy,
            ("POST", "/v1/embeddings"): embeddings,
            ("POST", "/embeddings"): embeddings,
            ("GET", "/v1/models"): self._models,
            ("GET", "/models"): self._models,
            ("GET", "/mock/stats"): self._stats,
            ("POST", "/mock/reset"): self._reset,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is None:
                message = f"Unknown request URL: {scope['method']} {scope['path']}."
                body = _error_body(message, "invalid_request_error", "unknown_url")
                await _send_bytes(send, 404, body, _JSON_HEADERS)
            else:
                await handler(receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _models(self, receive: Receive, send: Send) -> None:
        model = {"id": self.settings.model_name, "object": "model", "created": 0, "owned_by": "mock"}
        await _send_json(send, 200, {"object": "list", "data": [model]})

    async def _stats(self, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, asdict(self.stats))

    async def _reset(self, receive: Receive, send: Send) -> None:
        # in_flight is a gauge of live requests, not a counter: zeroing it would drive it negative.
        self.stats = MockStats(in_flight=self.stats.in_flight)
        self._rng = random.Random(self.settings.seed)
        self._ids = itertools.count(1)
        await _send_json(send, 200, {"status": "reset"})

    def _counted(self, parse: _Parser) -> Callable[[Receive, Send], Awaitable[None]]:
        """The handler of a model route whose requests `parse` reads, counted in the stats."""

        async def handler(receive: Receive, send: Send) -> None:
            self.stats.requests += 1
            self.stats.in_flight += 1
            finished = False
            try:
                finished = await self._serve(parse, receive, send)
            finally:
                stats = self.stats  # re-read: a reset may have replaced it while this request was running
                stats.in_flight -= 1
                if finished:
                    stats.completed += 1
                else:
                    stats.cancelled += 1

        return handler

    async def _serve(self, parse: _Parser, receive: Receive, send: Send) -> bool:
        """Answer one model request; True if the whole response was sent."""
        body = await _read_body(receive)
        if body is None:
            return False
        try:
            request = parse(body, self.settings.model_name)
            marker = self._armed_marker(_parse_marker(request.last_user_text))
        except _BadRequest as exc:
            await _send_bytes(send, 400, _error_body(str(exc), "invalid_request_error", None), _JSON_HEADERS)
            return True
        watch = _DisconnectWatch(receive)
        try:
            delay = self._delay_seconds(marker)
            if delay > 0 and await watch.sleep(delay):
                return False
            return await self._respond(request, marker, send, watch)
        finally:
            watch.close()

    def _armed_marker(self, marker: _Marker | None) -> _Marker | None:
        if marker is None or marker.marker_id is None:
            return marker
        attempts = self.stats.by_marker.get(marker.marker_id, 0) + 1
        self.stats.by_marker[marker.marker_id] = attempts
        if marker.times is not None and attempts > marker.times:
            return marker.disarmed()
        return marker

    def _delay_seconds(self, marker: _Marker | None) -> float:
        if marker is not None and marker.timeout:
            return _TIMEOUT_MARKER_SECONDS
        if marker is not None and marker.latency_ms is not None:
            return marker.latency_ms / 1000
        return self.settings.latency_ms / 1000

    def _injected_status(self, marker: _Marker | None) -> int | None:
        if marker is not None and marker.status is not None:
            return marker.status
        # Only draw when enabled, so that a zero error rate leaves the seeded sequence untouched.
        if self.settings.error_rate > 0 and self._rng.random() < self.settings.error_rate:
            return self.settings.error_status
        return None

    async def _respond(
        self, request: _ChatRequest, marker: _Marker | None, send: Send, watch: _DisconnectWatch
    ) -> bool:
        status = self._injected_status(marker)
        if status is not None:
            self.stats.errors_injected += 1
            body, headers = _injected_error(status)
            await _send_bytes(send, status, body, headers)
            return True
        window = self.settings.context_window_tokens
        if window is not None and request.prompt_tokens > window:
            await _send_bytes(send, 400, _context_error(window, request.prompt_tokens), _JSON_HEADERS)
            return True
        marker = marker or _Marker()
        if marker.malformed or (marker.stream_error and request.stream):
            self.stats.errors_injected += 1
        if marker.malformed and not request.stream:
            await _send_bytes(send, 200, _MALFORMED_BODY, _JSON_HEADERS)
            return True
        if (embedding := request.embedding) is not None:
            answer = mock_embeddings.embeddings_body(request.model, embedding.texts, embedding.dimensions,
                                                     embedding.base64)
            await _send_json(send, 200, answer)
            return True
        reply = self.settings.reply if self.settings.reply is not None else self._default_reply(request)
        completion_id = f"{'cmpl' if request.legacy else 'chatcmpl'}-mock-{next(self._ids)}"
        if request.stream:
            return await self._stream(request, marker, reply, completion_id, send, watch)
        render = _text_completion_body if request.legacy else _completion_body
        await _send_bytes(send, 200, render(completion_id, request.model, reply, request.prompt_tokens),
                          _JSON_HEADERS)
        return True

    @staticmethod
    def _default_reply(request: _ChatRequest) -> str:
        scripted = mock_policy.reply(request.messages)
        return scripted if scripted is not None else "mock reply: " + request.last_user_text[:60]

    def _stream_events(
        self, request: _ChatRequest, marker: _Marker, reply: str, completion_id: str
    ) -> list[bytes]:
        chunks = _ChunkFactory(completion_id, request.model, request.include_usage, request.legacy)
        # A legacy stream has no role to announce: its first chunk carries text.
        first = [] if request.legacy else [chunks.delta({"role": "assistant", "content": ""})]
        if marker.malformed:
            return [*first, _MALFORMED_SSE_LINE]
        contents = [chunks.delta({"content": piece}) for piece in _split(reply, self.settings.stream_deltas)]
        if marker.stream_error:
            return [*first, *contents[:_STREAM_ERROR_CONTENT_CHUNKS]]
        events = [*first, *contents, chunks.delta({}, finish_reason="stop")]
        if request.include_usage:
            events.append(chunks.usage(_usage(request.prompt_tokens, reply)))
        events.append(_SSE_DONE)
        return events

    async def _stream(
        self,
        request: _ChatRequest,
        marker: _Marker,
        reply: str,
        completion_id: str,
        send: Send,
        watch: _DisconnectWatch,
    ) -> bool:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for event in self._stream_events(request, marker, reply, completion_id):
            if await watch.disconnected():
                return False
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if await watch.disconnected():
            return False
        if marker.stream_error:
            # Returning without the final body message makes the server drop the connection mid-body,
            # so the client sees a truncated chunked stream rather than a clean end without [DONE].
            return True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True


def build_mock_app(settings: MockSettings) -> MockApp:
    """A fresh mock upstream ASGI app; nothing is shared between apps."""
    return MockApp(settings)


def run_mock(settings: MockSettings, host: str = "127.0.0.1", port: int = 8001) -> None:
    uvicorn.run(build_mock_app(settings), host=host, port=port, log_level="warning", access_log=False)
