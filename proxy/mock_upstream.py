"""OpenAI-compatible mock model server for tests, benchmarks and local runs (chat completions, and the
Responses API over the same answers: proxy/mock_responses.py).

A hand-written ASGI app (no framework) so that it is never the bottleneck of a benchmark. Faults are
injected either by settings (random error rate, context window) or by a marker in the last user message,
so a test can target a single request::

    [[mock:status=500 times=2 id=abc]]   fail the first 2 attempts carrying id "abc", then answer normally
    [[mock:status=429]]                  answer 429 (OpenAI error shape, retry-after: 0)
    [[mock:timeout]]                     never answer, until the client disconnects
    [[mock:latency_ms=500]]              per-request latency override
    [[mock:malformed]]                   HTTP 200 with a body (or a stream line) that is not JSON
    [[mock:stream_error]]                streaming: two content chunks, then the connection is dropped
    [[mock:tool_call]]                   answer with a call of the request's first function tool (its
                                         required arguments filled with placeholders of their types),
                                         unless the last message is a tool result

`POST /v1/messages` (and `/v1/messages/count_tokens`) answer the same way in the Anthropic Messages
dialect, markers and scripted policy included; the `anthropic-*` and `x-api-key` headers of the last such
request are kept in the stats, so a test can see what a proxy forwarded.

A request whose last message is a tool result is answered with ``tool result: <its start>``, so a test can
see a tool call's round trip. The scripted RLM root model (``mock_policy``, policy ``tool_call``) may call
the request's first tool too; ``/mock/stats`` counts the root calls and the other calls that carried tools.

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
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import orjson
import uvicorn

from proxy import mock_embeddings, mock_policy
from proxy.dialects import anthropic
from proxy.errors import ProxyError
from proxy.mock_responses import ResponsesOverChat
from proxy.model_facts import CHARS_PER_TOKEN

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
_FLAG_OPTIONS = frozenset({"timeout", "malformed", "stream_error", "tool_call"})
# What a mock tool call puts in each required argument, by JSON schema type.
_PLACEHOLDERS: dict[str, Any] = {"string": "mock", "integer": 1, "number": 1, "boolean": True, "array": [],
                                 "object": {}}
_VALUE_OPTIONS = frozenset({"status", "times", "id", "latency_ms"})


@dataclass
class MockSettings:
    latency_ms: float = 0.0  # from a request's arrival to its response (its first byte when streaming)
    stream_deltas: int = 4  # a streamed reply is split into this many content deltas
    # Generation speed: None answers at once; else a reply takes its tokens (4 characters each) at this
    # rate, streamed one token per delta (overrides stream_deltas), as a real model writes.
    tokens_per_second: float | None = None
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
    anthropic_headers: dict[str, str] = field(default_factory=dict)  # of the last /v1/messages request
    root_calls_with_tools: int = 0  # RLM root-model calls that offered tools
    other_calls_with_tools: int = 0  # any other call that offered tools


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
    tool_call: bool = False

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
    tools: list[dict[str, Any]] = field(default_factory=list)  # function definitions
    tool_result: str | None = None  # the content of a last message from a tool
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
    tools = payload.get("tools")
    functions = [tool["function"] for tool in tools if isinstance(tool, dict) and isinstance(
        tool.get("function"), dict)] if isinstance(tools, list) else []
    last = messages[-1] if messages else {}
    return _ChatRequest(
        model=_model(payload, default_model),
        stream=payload.get("stream") is True,
        include_usage=_include_usage(payload),
        prompt_tokens=prompt_tokens,
        last_user_text=last_user_text,
        messages=texts,
        tools=functions,
        tool_result=_content_text(last.get("content")) if last.get("role") == "tool" else None,
    )


def _tool_call(request: _ChatRequest, call_id: str, value: str | None = None) -> dict[str, Any] | None:
    """A call of the request's first function tool, or None when it has none or the conversation is already
    answering one (so a marked question may stay in the history of a tool round trip). `value` goes in its
    first required string argument; the other required arguments hold placeholders of their types."""
    if not request.tools or request.tool_result is not None:
        return None
    function = request.tools[0]
    schema = function.get("parameters") if isinstance(function.get("parameters"), dict) else {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    arguments = {}
    for name in required:
        spec = properties.get(name)
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind == "string" and value is not None:
            arguments[str(name)], value = value, None
        else:
            arguments[str(name)] = _PLACEHOLDERS.get(kind) if isinstance(kind, str) else None
    return {"id": call_id, "type": "function",
            "function": {"name": str(function.get("name")), "arguments": orjson.dumps(arguments).decode()}}


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
            tool_call="tool_call" in options,
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


def _completion_body(completion_id: str, model: str, reply: str, prompt_tokens: int,
                     tool_call: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": reply}
    if tool_call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [tool_call]}
    return _dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "stop" if tool_call is None else "tool_calls",
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

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
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
        chat = self._model_route(_parse_chat)
        legacy = self._model_route(_parse_text_completion)
        embeddings = self._model_route(_parse_embeddings)
        self._routes: dict[tuple[str, str], Callable[[Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): chat,
            ("POST", "/chat/completions"): chat,
            ("POST", "/v1/responses"): ResponsesOverChat(chat),
            ("POST", "/responses"): ResponsesOverChat(chat),
            ("POST", "/v1/completions"): legacy,
            ("POST", "/completions"): legacy,
            ("POST", "/v1/embeddings"): embeddings,
            ("POST", "/embeddings"): embeddings,
            ("GET", "/v1/models"): self._models,
            ("GET", "/models"): self._models,
            ("GET", "/mock/stats"): self._stats,
            ("POST", "/mock/reset"): self._reset,
        }
        # Routes that read request headers.
        self._scoped_routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/messages"): self._messages,
            ("POST", "/v1/messages/count_tokens"): self._count_tokens,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            scoped = self._scoped_routes.get((scope["method"], scope["path"]))
            if scoped is not None:
                await scoped(scope, receive, send)
            elif handler is None:
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

    def _model_route(self, parse: _Parser) -> Callable[[Receive, Send], Awaitable[None]]:
        """The handler of an OpenAI model route whose requests `parse` reads."""

        async def handler(receive: Receive, send: Send) -> None:
            await self._counted(self._serve(parse, receive, send))

        return handler

    async def _counted(self, serving: Awaitable[bool]) -> None:
        self.stats.requests += 1
        self.stats.in_flight += 1
        finished = False
        try:
            finished = await serving
        finally:
            stats = self.stats  # re-read: a reset may have replaced it while this request was running
            stats.in_flight -= 1
            if finished:
                stats.completed += 1
            else:
                stats.cancelled += 1

    async def _serve(self, parse: _Parser, receive: Receive, send: Send) -> bool:
        """Answer one model request; True if the whole response was sent."""
        arrived = asyncio.get_running_loop().time()
        body = await _read_body(receive)
        if body is None:
            return False
        try:
            request = parse(body, self.settings.model_name)
            marker = self._armed_marker(_parse_marker(request.last_user_text))
        except _BadRequest as exc:
            await _send_bytes(send, 400, _error_body(str(exc), "invalid_request_error", None), _JSON_HEADERS)
            return True
        return await self._after_delay(receive, marker, arrived,
                                       lambda watch: self._respond(request, marker, send, watch))

    async def _after_delay(self, receive: Receive, marker: _Marker | None, arrived: float,
                           answer: Callable[[_DisconnectWatch], Awaitable[bool]]) -> bool:
        """Answer once the request's latency has passed since it `arrived` (loop time), as a model's latency
        runs from the request: reading and parsing it is part of that time, not added to it, so that under
        load a benchmark's critical path is the latency it set. False if the client went away first."""
        watch = _DisconnectWatch(receive)
        try:
            delay = self._delay_seconds(marker) - (asyncio.get_running_loop().time() - arrived)
            if delay > 0 and await watch.sleep(delay):
                return False
            return await answer(watch)
        finally:
            watch.close()

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.anthropic_headers = {
            name.decode(): value.decode() for name, value in scope["headers"]
            if name.startswith(b"anthropic-") or name == b"x-api-key"}
        await self._counted(self._serve_messages(receive, send))

    async def _serve_messages(self, receive: Receive, send: Send) -> bool:
        """A chat request in the Messages dialect, answered as `_respond` would, in Anthropic's shapes."""
        arrived = asyncio.get_running_loop().time()
        body = await _read_body(receive)
        if body is None:
            return False
        try:
            request = _anthropic_chat(body, self.settings.model_name)
            marker = self._armed_marker(_parse_marker(request.last_user_text)) or _Marker()
        except (_BadRequest, ProxyError) as exc:
            await _send_anthropic_error(send, exc if isinstance(exc, ProxyError) else ProxyError(
                400, str(exc), code="invalid_request"))
            return True
        return await self._after_delay(receive, marker, arrived,
                                       lambda watch: self._answer_messages(request, marker, send, watch))

    async def _answer_messages(self, request: _ChatRequest, marker: _Marker, send: Send,
                               watch: _DisconnectWatch) -> bool:
        status, window = self._injected_status(marker), self.settings.context_window_tokens
        if status is not None:
            self.stats.errors_injected += 1
            await _send_anthropic_error(send, ProxyError(status, f"Injected error {status}.", code="mock",
                                                         headers={"retry-after": "0"}))
            return True
        if window is not None and request.prompt_tokens > window:
            message = orjson.loads(_context_error(window, request.prompt_tokens))["error"]["message"]
            await _send_anthropic_error(send, ProxyError(400, message, code="context_length_exceeded"))
            return True
        completion_id = f"mock-{next(self._ids)}"
        reply, tool_call = self._reply(request, marker, f"toolu_mock_{completion_id}")
        if not request.stream:
            completion = orjson.loads(_completion_body(completion_id, request.model, reply,
                                                       request.prompt_tokens, tool_call))
            await _send_json(send, 200, anthropic.message_from_completion(completion, request.model))
            return True
        chunks = [orjson.loads(event[6:]) for event in self._stream_events(
            request, marker, reply, completion_id, tool_call) if event != _SSE_DONE]
        writer = anthropic.MessageStream(f"msg_{completion_id}", request.model)
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        async for event in anthropic.relay_chat_stream(None, _items(chunks), writer):
            if await watch.disconnected():
                return False
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def _count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            return
        try:
            request = _anthropic_chat(body, self.settings.model_name, count_only=True)
        except (_BadRequest, ProxyError) as exc:
            await _send_anthropic_error(send, exc if isinstance(exc, ProxyError) else ProxyError(
                400, str(exc), code="invalid_request"))
            return
        await _send_json(send, 200, {"input_tokens": request.prompt_tokens})

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
        completion_id = f"{'cmpl' if request.legacy else 'chatcmpl'}-mock-{next(self._ids)}"
        reply, tool_call = self._reply(request, marker, f"call_mock_{completion_id}")
        if request.stream:
            return await self._stream(request, marker, reply, completion_id, send, watch, tool_call)
        rate = self.settings.tokens_per_second
        if rate is not None and await watch.sleep(self._deltas(reply) / rate):  # the time to write it
            return False
        if request.legacy:
            body = _text_completion_body(completion_id, request.model, reply, request.prompt_tokens)
        else:
            body = _completion_body(completion_id, request.model, reply, request.prompt_tokens, tool_call)
        await _send_bytes(send, 200, body, _JSON_HEADERS)
        return True

    def _deltas(self, reply: str) -> int:
        if self.settings.tokens_per_second is None:
            return self.settings.stream_deltas
        return max(1, -(-len(reply) // CHARS_PER_TOKEN))

    def _reply(self, request: _ChatRequest, marker: _Marker,
               call_id: str) -> tuple[str, dict[str, Any] | None]:
        """The answer's text and tool call, in either dialect."""
        if request.tools:
            if mock_policy.is_root_call(request.messages):
                self.stats.root_calls_with_tools += 1
            else:
                self.stats.other_calls_with_tools += 1
        scripted = self.settings.reply if self.settings.reply is not None else self._default_reply(request)
        if isinstance(scripted, mock_policy.CallTool):
            return "", _tool_call(request, call_id, scripted.value)
        return scripted, _tool_call(request, call_id) if marker.tool_call else None

    @staticmethod
    def _default_reply(request: _ChatRequest) -> str | mock_policy.CallTool:
        if request.tool_result is not None:
            return "tool result: " + request.tool_result[:60]
        scripted = mock_policy.reply(request.messages, tools=bool(request.tools))
        return scripted if scripted is not None else "mock reply: " + request.last_user_text[:60]

    def _stream_events(
        self, request: _ChatRequest, marker: _Marker, reply: str, completion_id: str,
        tool_call: dict[str, Any] | None
    ) -> list[bytes]:
        chunks = _ChunkFactory(completion_id, request.model, request.include_usage, request.legacy)
        # A legacy stream has no role to announce: its first chunk carries text.
        first = [] if request.legacy else [chunks.delta({"role": "assistant", "content": ""})]
        if marker.malformed:
            return [*first, _MALFORMED_SSE_LINE]
        if tool_call is not None:  # as OpenAI streams one: the name first, then the arguments in pieces
            head = {"index": 0, "id": tool_call["id"], "type": "function",
                    "function": {"name": tool_call["function"]["name"], "arguments": ""}}
            pieces = _split(tool_call["function"]["arguments"], 2)
            contents = [chunks.delta({"tool_calls": [head]}),
                        *(chunks.delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                          for piece in pieces)]
        else:
            contents = [chunks.delta({"content": piece})
                        for piece in _split(reply, self._deltas(reply))]
        if marker.stream_error:
            return [*first, *contents[:_STREAM_ERROR_CONTENT_CHUNKS]]
        finish = "stop" if tool_call is None else "tool_calls"
        events = [*first, *contents, chunks.delta({}, finish_reason=finish)]
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
        tool_call: dict[str, Any] | None,
    ) -> bool:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        rate = self.settings.tokens_per_second
        for number, event in enumerate(self._stream_events(request, marker, reply, completion_id, tool_call)):
            paced = rate is not None and number > 0  # the role chunk comes at once, the tokens at the rate
            if await (watch.sleep(1 / rate) if paced else watch.disconnected()):
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


def _anthropic_chat(body: bytes, default_model: str, count_only: bool = False) -> _ChatRequest:
    """A Messages body as the mock's chat request (through the proxy's own translation)."""
    chat = anthropic.parse_messages_request(body, count_only=count_only).chat
    if chat.stream:
        chat.body["stream_options"] = {"include_usage": True}
    return _parse_chat(orjson.dumps(chat.body), default_model)


async def _send_anthropic_error(send: Send, error: ProxyError) -> None:
    headers = [*_JSON_HEADERS, *((k.encode(), v.encode()) for k, v in error.headers.items())]
    await _send_bytes(send, error.status, error.body("anthropic"), headers)


async def _items(items: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


def build_mock_app(settings: MockSettings) -> MockApp:
    """A fresh mock upstream ASGI app; nothing is shared between apps."""
    return MockApp(settings)


def run_mock(settings: MockSettings, host: str = "127.0.0.1", port: int = 8001) -> None:
    uvicorn.run(build_mock_app(settings), host=host, port=port, log_level="warning", access_log=False)
