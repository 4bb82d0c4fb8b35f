"""Pure ASGI middleware: request ids, the last-resort error guard, the body size limit, and request
metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.auth import Identity
from proxy.errors import (
    ClientDisconnected,
    ProxyError,
    error_dialect,
    internal_error,
    json_error_response_parts,
)
from proxy.limits import GRANT_STATE, SPENDER_STATE, Grant, KeyLimits
from proxy.metering import REQUEST_METERING, Metering
from proxy.metrics import OTHER, REQUEST_CLOCK, Metrics, UpstreamClock
from proxy.spend import SpendLedger

log = logging.getLogger("rlm_proxy")

# A caller's id is echoed only when it cannot smuggle anything into headers or logs.
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


async def send_error(send: Send, error: ProxyError, scope: Scope) -> None:
    """An error response in the shape of the request's path (OpenAI's, or Anthropic's on /v1/messages)."""
    status, headers, body = json_error_response_parts(error, error_dialect(scope["path"]))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Stamps `x-request-id` on every response and answers any unhandled exception as an error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnected:
            return  # nobody is left to answer; the work was cancelled where it was detected
        except ProxyError as error:
            # Raised outside a route (e.g. the body limit while Starlette reads the body).
            if not started:
                await send_error(send_with_id, error, scope)
        except Exception:
            log.exception("unhandled error, request id %s", request_id.decode())
            if not started:
                await send_error(send_with_id, internal_error(), scope)


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _SAFE_REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex.encode()


class BodyLimitMiddleware:
    """Rejects bodies over the limit with 413 without ever holding more than the limit in memory."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await send_error(send, self._too_large(), scope)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> ProxyError:
        return ProxyError(413, f"Request body exceeds the limit of {self.max_body_bytes} bytes.",
                          code="request_too_large")


# The routes that call models; each is counted in the request metrics.
MODEL_PATHS = frozenset({"/v1/chat/completions", "/chat/completions", "/v1/responses", "/responses",
                         "/v1/messages", "/v1/embeddings", "/embeddings", "/v1/completions", "/completions"})
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer


@dataclass
class RouteInfo:
    """What a model route decided, for the metrics recorded when the response is done."""

    mode: str = "direct"
    model: str = OTHER
    in_flight: bool = False


class MetricsMiddleware:
    """Request count, duration and overhead (time not spent waiting on upstream) of model requests."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in MODEL_PATHS:
            await self.app(scope, receive, send)
            return
        info = RouteInfo()
        scope.setdefault("state", {})["route_info"] = info
        clock = UpstreamClock()
        token = REQUEST_CLOCK.set(clock)
        status = 500
        started = time.perf_counter()

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except ClientDisconnected:
            status = CLIENT_CLOSED
            raise
        except ProxyError as error:
            status = error.status
            raise
        finally:
            REQUEST_CLOCK.reset(token)
            elapsed = time.perf_counter() - started
            metrics = self.metrics
            if info.in_flight:
                metrics.in_flight.labels(info.mode).dec()
            metrics.requests.labels(info.mode, info.model, f"{status // 100}xx").inc()
            metrics.duration.labels(info.mode, info.model).observe(elapsed)
            metrics.overhead.labels(info.mode).observe(max(0.0, elapsed - clock.waited_s))


class LimitsMiddleware:
    """Meters a model request's upstream usage (its RLM sub-calls too), adds its key's `x-ratelimit-*`
    headers, and when the response is done settles its limits (slots back, tokens and dollars charged) and
    adds its spend to the ledger."""

    def __init__(self, app: ASGIApp, limits: KeyLimits, spend: SpendLedger) -> None:
        self.app = app
        self.limits = limits
        self.spend = spend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in MODEL_PATHS:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        metering = Metering()
        token = REQUEST_METERING.set(metering)

        async def send_with_headers(message: Message) -> None:
            grant: Grant | None = state.get(GRANT_STATE)
            if message["type"] == "http.response.start" and grant is not None and grant.headers:
                added = [(name.encode(), value.encode()) for name, value in grant.headers.items()]
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            REQUEST_METERING.reset(token)
            grant = state.get(GRANT_STATE)
            if grant is not None:  # settled even when the request was cancelled (its client went away)
                await asyncio.shield(self.limits.settle(grant, metering))
            spender: Identity | None = state.get(SPENDER_STATE)
            if spender is not None:
                await asyncio.shield(self.spend.record(spender, metering))
