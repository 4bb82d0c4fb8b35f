"""Calls to model providers: litellm for any provider, a direct HTTP fast path (aiohttp) for OpenAI-compatible
ones.

Both backends raise `UpstreamError`; `Upstream` adds load balancing over a model group's deployments
(proxy/balancer.py), bounded retries and fallbacks on top of either.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager, contextmanager
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
import httpx
import orjson
from aiohttp.http_exceptions import LineTooLong

from proxy.balancer import Balancer, Unavailable
from proxy.config import UpstreamSettings
from proxy.errors import ProxyError
from proxy.metrics import upstream_wait
from proxy.model_facts import import_litellm, usage_tokens
from proxy.registry import Deployment, ModelGroup, Target
from proxy.router_config import RouterSettings

T = TypeVar("T")

OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE = "https://api.anthropic.com/v1"
ANTHROPIC_VERSION = "2023-06-01"  # sent when the client named none
# litellm_params the fast path understands; a deployment with any other parameter goes through litellm.
_FAST_PATH_PARAMS = frozenset({"api_base", "api_key", "timeout", "organization"})
# Idle connections are dropped after this long: just under the 5 s idle timeout of uvicorn (vLLM, the mock and
# many other servers), so that a server seldom closes a connection while it is being reused.
KEEPALIVE_S = 4.0
# One SSE line (one chunk) longer than this is a malformed answer, not a reason to buffer without bound.
MAX_STREAM_LINE_BYTES = 16 * 1024 * 1024


class UpstreamError(ProxyError):
    def __init__(self, status: int, message: str, *, code: str, retryable: bool,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, code=code, param=param, headers=headers)
        self.retryable = retryable
        self.retry_after: float | None = None


def error_from_status(status: int, message: str, code: str | None = None, param: str | None = None,
                      retry_after: str | None = None) -> UpstreamError:
    """Translate a provider's HTTP status into what this proxy tells its client."""
    detail = f"Upstream error: {message}"
    if status in (400, 413, 422):
        return UpstreamError(400 if status == 422 else status, message, code=code or "upstream_bad_request",
                             param=param, retryable=False)
    if status in (401, 403):
        # The proxy's provider credentials failed, not the client's key: not an AuthenticationError.
        return UpstreamError(502, detail, code="upstream_auth_failed", retryable=False)
    if status == 404:
        return UpstreamError(404, detail, code=code or "model_not_found", param="model", retryable=False)
    if status == 429:
        error = UpstreamError(429, detail, code="rate_limit_exceeded", retryable=True,
                              headers={"retry-after": _retry_after_header(retry_after)})
        error.retry_after = _parse_seconds(retry_after)
        return error
    if status in (408, 504):
        return UpstreamError(504, detail, code="upstream_timeout", retryable=True)
    return UpstreamError(502, detail, code="upstream_error", retryable=status >= 500)


def timeout_error(timeout_s: float) -> UpstreamError:
    return UpstreamError(504, f"The upstream model did not answer within {timeout_s:g} s.",
                         code="upstream_timeout", retryable=True)


def connection_error(detail: str) -> UpstreamError:
    return UpstreamError(502, f"Could not reach the upstream model: {detail}", code="upstream_unreachable",
                         retryable=True)


def malformed_error(detail: str) -> UpstreamError:
    return UpstreamError(502, f"The upstream model sent a malformed response: {detail}",
                         code="upstream_malformed_response", retryable=False)


def _parse_seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _retry_after_header(value: str | None) -> str:
    seconds = _parse_seconds(value)
    return str(max(1, round(seconds))) if seconds is not None else "1"


class Backend(Protocol):
    async def complete(self, deployment: Deployment, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, deployment: Deployment, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...


class HttpResponse(Protocol):
    """What the fast path reads of an upstream answer, whichever HTTP client produced it."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...  # case-insensitive

    async def read(self) -> bytes: ...

    def lines(self) -> AsyncIterator[bytes]: ...


class HttpClient(Protocol):
    """Sends one POST. Transport failures surface as 502/504 `UpstreamError`s, also while the body is read
    inside the context; leaving it frees the connection (kept when the body was read whole, else closed)."""

    def post(self, url: str, payload: bytes, headers: dict[str, str], timeout_s: float
             ) -> AbstractAsyncContextManager[HttpResponse]: ...

    async def aclose(self) -> None: ...


class AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def read(self) -> bytes:
        return await self._response.read()

    async def lines(self) -> AsyncIterator[bytes]:
        try:
            while line := await self._response.content.readuntil(b"\n", max_size=MAX_STREAM_LINE_BYTES):
                yield line
        except LineTooLong:
            raise malformed_error(f"a stream line is longer than {MAX_STREAM_LINE_BYTES} bytes") from None


class AiohttpClient:
    """The fast path's connection pool. aiohttp takes a connection from its pool and returns it in O(1);
    httpcore's pool (httpx) walks every connection, polling each idle socket, at the start and the end of
    every request, which stalled the event loop once hundreds of connections were open (bench.upstream_pool).
    """

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    def _live_session(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the running event loop, and the app is built before it runs.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=KEEPALIVE_S)
            # Calls for every tenant share the pool, so they must not share cookies. No trust_env: it costs
            # two thread hops per request (netrc, proxy lookup); _proxy_for reads the proxy once per origin.
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def _proxy_for(self, url: str) -> str | None:
        """The proxy that HTTP(S)_PROXY and NO_PROXY name for this URL (httpx honoured them too)."""
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        if origin not in self._proxies:
            bypass = proxy_bypass(parts.hostname or "")
            self._proxies[origin] = None if bypass else getproxies().get(parts.scheme)
        return self._proxies[origin]

    @asynccontextmanager
    async def post(self, url: str, payload: bytes, headers: dict[str, str], timeout_s: float
                   ) -> AsyncIterator[HttpResponse]:
        # connect covers waiting for a pooled connection too; sock_read bounds each wait for bytes, so a
        # stream that keeps sending may last longer than timeout_s, as with httpx's read timeout.
        timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        session, proxy = self._live_session(), self._proxy_for(url)
        try:
            async with session.post(url, data=payload, headers=headers, timeout=timeout, proxy=proxy,
                                    allow_redirects=False) as response:
                yield AiohttpResponse(response)
        except TimeoutError as exc:  # aiohttp's timeouts subclass it (and some subclass ClientError too)
            raise timeout_error(timeout_s) from exc
        except aiohttp.ClientError as exc:
            raise connection_error(type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class OpenAICompatBackend:
    """POSTs the client's body, model renamed, straight to an OpenAI-compatible endpoint."""

    def __init__(self, http: HttpClient, settings: UpstreamSettings) -> None:
        self._http = http
        self._settings = settings
        # The same variables the openai SDK and litellm read, so a config-less proxy behaves like them.
        self._default_base = (os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
                              or OPENAI_DEFAULT_BASE)

    def post(self, deployment: Deployment, path: str, payload: dict[str, Any],
             headers: Mapping[str, str] | None = None) -> AbstractAsyncContextManager[HttpResponse]:
        """POST a body as it is to `path` under the deployment's base URL, with its credentials.

        OpenAI-style bases end in /v1 (`path` follows it); Anthropic's credentials go in `x-api-key`.
        """
        params = deployment.params
        sent = {"content-type": "application/json", **(headers or {})}
        if deployment.provider == "anthropic":
            base = str(params.get("api_base") or ANTHROPIC_DEFAULT_BASE).rstrip("/")
            base = base if base.endswith("/v1") else f"{base}/v1"
            api_key = params.get("api_key") or os.environ.get("ANTHROPIC_API_KEY")
            if api_key:
                sent["x-api-key"] = str(api_key)
            sent.setdefault("anthropic-version", ANTHROPIC_VERSION)
        else:
            base = str(params.get("api_base") or self._default_base).rstrip("/")
            api_key = params.get("api_key") or os.environ.get("OPENAI_API_KEY")
            if api_key:
                sent["authorization"] = f"Bearer {api_key}"
            if params.get("organization"):
                sent["openai-organization"] = str(params["organization"])
        timeout = float(params.get("timeout") or self._settings.timeout_s)
        return self._http.post(f"{base}{path}", orjson.dumps(payload), sent, timeout)

    async def post_json(self, deployment: Deployment, path: str, payload: dict[str, Any],
                        headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A JSON object answered with 200 to a POST; any other answer is an `UpstreamError`."""
        async with self.post(deployment, path, payload, headers) as response:
            content = await response.read()
        if response.status != 200:
            raise _error_from_response(response.status, content, response.headers)
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise malformed_error("body is not JSON") from None
        if not isinstance(data, dict):
            raise malformed_error("body is not a JSON object")
        return data

    async def post_events(self, deployment: Deployment, path: str, payload: dict[str, Any],
                          headers: Mapping[str, str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """The JSON `data` of each server-sent event answering a POST (the Responses and Messages
        streams, whose events carry their `type` in the data too), until the stream ends."""
        async with self.post(deployment, path, payload, headers) as response:
            if response.status != 200:
                raise _error_from_response(response.status, await response.read(), response.headers)
            async with aclosing(response.lines()) as lines:
                async for line in lines:
                    if line.startswith(b"data:") and (data := line[5:].strip()) != b"[DONE]":
                        yield _parse_chunk(data)

    async def complete(self, deployment: Deployment, body: dict[str, Any]) -> dict[str, Any]:
        payload = {**body, "model": deployment.provider_model}
        data = await self.post_json(deployment, "/chat/completions", payload)
        if not isinstance(data.get("choices"), list):
            raise malformed_error("no 'choices' list")
        return data

    async def stream(self, deployment: Deployment, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        payload = {**body, "model": deployment.provider_model}
        # Always ask for usage: the proxy accounts for it even when the client did not ask.
        payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        async with self.post(deployment, "/chat/completions", payload) as response:
            if response.status != 200:
                raise _error_from_response(response.status, await response.read(), response.headers)
            async with aclosing(response.lines()) as lines:
                async for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    yield _parse_chunk(data)
            raise malformed_error("the stream ended without [DONE]")


def _parse_chunk(data: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise malformed_error("a stream chunk is not JSON") from None
    if not isinstance(chunk, dict):
        raise malformed_error("a stream chunk is not an object")
    if "error" in chunk:
        error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
        raise error_from_status(502, str(error.get("message", "error inside the stream")))
    return chunk


def _error_from_response(status: int, content: bytes, headers: Mapping[str, str]) -> UpstreamError:
    message, code, param = f"HTTP {status}", None, None
    try:
        error = orjson.loads(content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        code = error.get("code") if isinstance(error.get("code"), str) else None
        param = error.get("param") if isinstance(error.get("param"), str) else None
    return error_from_status(status, message, code, param, headers.get("retry-after"))


class LiteLLMBackend:
    """Any provider litellm supports; errors arrive as litellm exceptions carrying a status code."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._litellm = import_litellm()
        self._settings = settings

    def _kwargs(self, deployment: Deployment, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, **deployment.params, "model": deployment.model, "max_retries": 0,
                "timeout": float(deployment.params.get("timeout") or self._settings.timeout_s)}

    async def complete(self, deployment: Deployment, body: dict[str, Any]) -> dict[str, Any]:
        return await self._answer(self._litellm.acompletion, deployment, body)

    def stream(self, deployment: Deployment, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._stream(self._litellm.acompletion, deployment, body)

    async def embed(self, deployment: Deployment, body: dict[str, Any]) -> dict[str, Any]:
        if deployment.provider == "openai" and "dimensions" in body:
            # litellm guesses from the model's name (text-embedding-3 only) whether an OpenAI-style server
            # takes `dimensions`; the server judges it itself, as on the fast path.
            body = {**body, "allowed_openai_params": ["dimensions"]}
        return await self._answer(self._litellm.aembedding, deployment, body)

    async def complete_text(self, deployment: Deployment, body: dict[str, Any]) -> dict[str, Any]:
        """A legacy (`/v1/completions`) completion."""
        return await self._answer(self._litellm.atext_completion, deployment, body)

    async def stream_text(self, deployment: Deployment,
                          body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self._stream(self._litellm.atext_completion, deployment, body):
            # litellm leaves a choice's empty fields out; OpenAI's legacy chunks always carry them.
            for choice in chunk.get("choices") or ():
                choice.setdefault("text", "")
                choice.setdefault("logprobs", None)
                choice.setdefault("finish_reason", None)
            yield chunk

    async def _answer(self, call: Callable[..., Awaitable[Any]], deployment: Deployment,
                      body: dict[str, Any]) -> dict[str, Any]:
        kwargs = self._kwargs(deployment, body)
        try:
            response = await call(**kwargs)
        except Exception as exc:
            raise self._translate(exc, kwargs["timeout"]) from exc
        return response.model_dump()

    async def _stream(self, call: Callable[..., Awaitable[Any]], deployment: Deployment,
                      body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        kwargs = self._kwargs(deployment, body)
        kwargs["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            response = await call(**kwargs)
            async for chunk in response:
                yield chunk.model_dump(exclude_none=True)
        except Exception as exc:
            raise self._translate(exc, kwargs["timeout"]) from exc

    def _translate(self, exc: Exception, timeout_s: float) -> Exception:
        exceptions = self._litellm.exceptions
        if isinstance(exc, exceptions.Timeout):
            return timeout_error(timeout_s)
        if isinstance(exc, exceptions.ContextWindowExceededError):
            return UpstreamError(400, str(exc), code="context_length_exceeded", param="messages",
                                 retryable=False)
        if isinstance(exc, exceptions.APIConnectionError):
            return connection_error(str(exc))
        status = getattr(exc, "status_code", None)
        if not isinstance(status, int):
            return malformed_error(f"{type(exc).__name__}: {exc}")
        code = getattr(exc, "code", None)
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if isinstance(response, httpx.Response) else None
        return error_from_status(status, str(exc), code if isinstance(code, str) else None,
                                 getattr(exc, "param", None), retry_after)


# Reads usage, in chat terms (prompt_tokens, completion_tokens), from an answer or a stream's item.
UsageOf = Callable[[dict[str, Any]], dict[str, Any] | None]


def _chat_usage(item: dict[str, Any]) -> dict[str, Any] | None:
    usage = item.get("usage")
    return usage if isinstance(usage, dict) else None


class UpstreamObserver(Protocol):
    """Told about every upstream call's outcome (for metrics), with the deployment that really answered:
    usage of answers, and the error a model group ended with after its retries."""

    def on_usage(self, deployment: Deployment, usage: dict[str, Any]) -> None: ...

    def on_error(self, deployment: Deployment, error: UpstreamError) -> None: ...


def unavailable_error(unavailable: Unavailable) -> UpstreamError:
    error = UpstreamError(429, unavailable.reason, code="deployments_unavailable", retryable=True,
                          headers={"retry-after": _retry_after_header(str(unavailable.retry_after_s))})
    error.retry_after = unavailable.retry_after_s
    return error


def _marks_unwell(error: UpstreamError) -> bool:
    """Whether a failure counts against the deployment (towards its cooldown) rather than the request."""
    return error.status == 404 or error.status >= 429


class Upstream:
    """The single entry point for model calls. Each call goes to a deployment of its model group chosen by
    the balancer, retried on another deployment (or after a backoff, the same one) on 429, 5xx and
    timeouts, then to the group's fallback groups; the backend is picked per deployment."""

    def __init__(self, settings: UpstreamSettings, observer: UpstreamObserver,
                 http: HttpClient | None = None, *, balancer: Balancer | None = None,
                 resolve: Callable[[str], ModelGroup] | None = None) -> None:
        self._settings = settings
        self._observer = observer
        self._http = http or AiohttpClient(settings.max_connections)
        self._fast = OpenAICompatBackend(self._http, settings)
        self._litellm: LiteLLMBackend | None = None
        self._balancer = balancer or Balancer.from_settings(RouterSettings())
        self._resolve = resolve  # fallback groups by name; None: no fallbacks

    def _takes_fast_path(self, deployment: Deployment) -> bool:
        return (self._settings.fast_path and deployment.provider == "openai"
                and _FAST_PATH_PARAMS.issuperset(deployment.params))

    def backend_for(self, deployment: Deployment) -> Backend:
        return self._fast if self._takes_fast_path(deployment) else self._litellm_backend()

    def _litellm_backend(self) -> LiteLLMBackend:
        if self._litellm is None:  # instant: start-up imported litellm off the event loop (ModelFacts.load)
            self._litellm = LiteLLMBackend(self._settings)
        return self._litellm

    async def complete(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        _, completion = await self.complete_routed(target, body)
        return completion

    async def embed(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        """An embeddings answer: sent as it is on the fast path, through `litellm.aembedding` otherwise."""
        return await self._passed_through(target, "/embeddings", body, LiteLLMBackend.embed)

    async def complete_text(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        """A legacy completion (`/v1/completions`): sent as it is on the fast path, else through litellm."""
        return await self._passed_through(target, "/completions", body, LiteLLMBackend.complete_text)

    async def _passed_through(self, target: Target, path: str, body: dict[str, Any],
                              through_litellm: Callable[[LiteLLMBackend, Deployment, dict[str, Any]],
                                                        Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        def attempt(deployment: Deployment) -> Awaitable[dict[str, Any]]:
            if self._takes_fast_path(deployment):
                return self._post(deployment, path, body)
            return through_litellm(self._litellm_backend(), deployment, body)

        _, answer = await self._answer(target, attempt, _chat_usage)
        return answer

    def stream_text(self, target: Target, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Chunks of a streamed legacy completion, usage always asked for; retried only before the first."""
        asked = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}

        def start(deployment: Deployment) -> AsyncIterator[dict[str, Any]]:
            if self._takes_fast_path(deployment):
                return self._post_events(deployment, "/completions", asked)
            return self._litellm_backend().stream_text(deployment, body)

        return self._streamed(target, start, _chat_usage)

    async def complete_routed(self, target: Target,
                              body: dict[str, Any]) -> tuple[Deployment, dict[str, Any]]:
        """`complete`, and the deployment that answered (its prices are the call's)."""
        return await self._answer(target, lambda d: self.backend_for(d).complete(d, body), _chat_usage)

    def stream(self, target: Target, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Chunks of a streamed completion. Retries happen only before the first chunk arrives."""
        return self.stream_routed(target, body, None)

    async def stream_routed(self, target: Target, body: dict[str, Any],
                            answered_by: Callable[[Deployment], None] | None
                            ) -> AsyncIterator[dict[str, Any]]:
        """`stream`, first telling `answered_by` the deployment that answers (its prices are the call's)."""
        async for chunk in self._streamed(target, lambda d: self.backend_for(d).stream(d, body), _chat_usage,
                                          answered_by):
            yield chunk

    async def forward(self, target: Target, path: str, body: dict[str, Any],
                      usage_of: UsageOf, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A request in a dialect the deployment speaks itself (`Deployment.speaks`), sent as it is to
        `path` with the provider's model name, with retries. `usage_of` reads usage in chat terms."""
        _, answer = await self._answer(target, lambda d: self._post(d, path, body, headers), usage_of)
        return answer

    def forward_events(self, target: Target, path: str, body: dict[str, Any], usage_of: UsageOf,
                       headers: Mapping[str, str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """`forward` for a streamed answer: its events' data, retried only before the first one."""
        return self._streamed(target, lambda d: self._post_events(d, path, body, headers), usage_of)

    def _post(self, deployment: Deployment, path: str, body: dict[str, Any],
              headers: Mapping[str, str] | None = None) -> Awaitable[dict[str, Any]]:
        """`body` as it is, with the provider's model name, to the deployment's `path` (fast path only)."""
        return self._fast.post_json(deployment, path, {**body, "model": deployment.provider_model}, headers)

    def _post_events(self, deployment: Deployment, path: str, body: dict[str, Any],
                     headers: Mapping[str, str] | None = None) -> AsyncIterator[dict[str, Any]]:
        return self._fast.post_events(deployment, path, {**body, "model": deployment.provider_model}, headers)

    async def _answer(self, target: Target, attempt: Callable[[Deployment], Awaitable[dict[str, Any]]],
                      usage_of: UsageOf) -> tuple[Deployment, dict[str, Any]]:
        deployment, answer = await self._call(target, attempt)
        self._balancer.ended(deployment)
        if (usage := usage_of(answer)) is not None:
            self._used(deployment, usage)
        return deployment, answer

    async def _streamed(self, target: Target, start: Callable[[Deployment], AsyncIterator[dict[str, Any]]],
                        usage_of: UsageOf, answered_by: Callable[[Deployment], None] | None = None
                        ) -> AsyncIterator[dict[str, Any]]:
        async def open_stream(deployment: Deployment) -> tuple[AsyncIterator[dict[str, Any]],
                                                               dict[str, Any] | None]:
            items = start(deployment)
            try:
                return items, await anext(items)
            except StopAsyncIteration:
                return items, None
            except BaseException:
                await items.aclose()  # type: ignore[attr-defined]
                raise

        deployment, (items, item) = await self._call(target, open_stream)
        if answered_by is not None:
            answered_by(deployment)
        try:
            while item is not None:
                if (usage := usage_of(item)) is not None:
                    self._used(deployment, usage)
                yield item
                with upstream_wait(), self._observed(deployment):
                    item = await anext(items, None)
        finally:
            self._balancer.ended(deployment)  # a stream keeps its deployment busy until it ends
            await items.aclose()  # type: ignore[attr-defined]

    def _used(self, deployment: Deployment, usage: dict[str, Any]) -> None:
        self._observer.on_usage(deployment, usage)
        self._balancer.used(deployment, sum(usage_tokens(usage)))

    @contextmanager
    def _observed(self, deployment: Deployment) -> Iterator[None]:
        try:
            yield
        except UpstreamError as error:
            self._observer.on_error(deployment, error)
            raise

    async def _call(self, target: Target,
                    attempt: Callable[[Deployment], Awaitable[T]]) -> tuple[Deployment, T]:
        """The first answer: from the target's deployments, else from its fallback groups in order.
        The deployment that answered stays counted as busy until the caller calls `ended`."""
        try:
            return await self._on_group(target, attempt)
        except UpstreamError as error:
            last, fallbacks = error, self._fallbacks(target, error)
            if not fallbacks:
                raise
        for group in fallbacks:
            try:
                return await self._on_group(group, attempt)
            except UpstreamError as error:
                last = error
        raise last

    def _fallbacks(self, target: Target, error: UpstreamError) -> list[ModelGroup]:
        if self._resolve is None or not isinstance(target, ModelGroup):
            return []
        if error.code == "context_length_exceeded":
            names = target.context_window_fallbacks
        else:
            names = target.fallbacks if error.status >= 429 else ()
        return [self._resolve(name) for name in names]

    async def _on_group(self, target: Target, attempt: Callable[[Deployment], Awaitable[T]]
                        ) -> tuple[Deployment, T]:
        deployments, failed = target.deployments, []
        with upstream_wait():  # backoff pauses are the upstream's doing too
            for number in range(self._settings.max_retries + 1):
                try:
                    deployment = self._balancer.pick(deployments, failed)
                except Unavailable as unavailable:
                    if not failed:
                        raise unavailable_error(unavailable) from None
                    break  # the last failure says more than "now cooling down"
                self._balancer.started(deployment)
                began = time.monotonic()
                try:
                    answer = await attempt(deployment)
                except UpstreamError as error:
                    self._balancer.ended(deployment)
                    if _marks_unwell(error):
                        self._balancer.failed(deployment, len(deployments))
                    failed.append(deployment.key)
                    last = (deployment, error)
                    if not error.retryable or number == self._settings.max_retries:
                        break
                    # Another deployment is tried at once; the same one only after a pause.
                    if not self._balancer.has_other(deployments, failed):
                        await asyncio.sleep(self._backoff(number, error))
                    continue
                except BaseException:
                    self._balancer.ended(deployment)
                    raise
                self._balancer.answered(deployment, time.monotonic() - began)
                return deployment, answer
        deployment, error = last
        self._observer.on_error(deployment, error)
        raise error

    def _backoff(self, number: int, error: UpstreamError) -> float:
        ceiling = self._settings.retry_backoff_max_s
        if error.retry_after is not None:
            return min(error.retry_after, ceiling)
        # Full jitter keeps many clients that failed together from retrying together.
        return random.uniform(0, min(ceiling, self._settings.retry_backoff_s * 2**number))

    async def aclose(self) -> None:
        await self._http.aclose()
