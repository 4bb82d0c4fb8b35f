"""The one place that turns failures into error bodies and statuses: OpenAI's envelope, or Anthropic's on
the Messages routes (the dialect is chosen here, by path, for every place an error can arise)."""

from __future__ import annotations

import logging
from typing import Any, Literal

import orjson

log = logging.getLogger("rlm_proxy")

ErrorDialect = Literal["openai", "anthropic"]
MESSAGES_PATH = "/v1/messages"  # and what is under it (count_tokens)

# The status decides which exception the OpenAI SDK raises; `type` mirrors what OpenAI sends.
_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    504: "timeout_error",
}
# Anthropic's error types (its SDK picks the exception by status; clients such as Claude Code read the type).
_ANTHROPIC_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_dialect(path: str) -> ErrorDialect:
    """Which error shape a request's path answers in: Anthropic's for /v1/messages and what is under it."""
    return "anthropic" if path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/") else "openai"


class ProxyError(Exception):
    """An error with everything needed to answer the client in either envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type or _TYPE_FOR_STATUS.get(status, "server_error")
        self.headers = headers or {}

    def payload(self, dialect: ErrorDialect = "openai") -> dict[str, Any]:
        if dialect == "anthropic":
            kind = _ANTHROPIC_TYPE_FOR_STATUS.get(self.status, "api_error")
            return {"type": "error", "error": {"type": kind, "message": self.message}}
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}

    def body(self, dialect: ErrorDialect = "openai") -> bytes:
        return orjson.dumps(self.payload(dialect))


def invalid_request(message: str, param: str | None = None, code: str = "invalid_request") -> ProxyError:
    return ProxyError(400, message, code=code, param=param)


def store_unavailable(store: str, code: str, error: Exception) -> ProxyError:
    """A shared store (Redis) failed where the request cannot go on without it: logged, and a 503."""
    log.warning("%s failed (%s: %s)", store, type(error).__name__, error)
    return ProxyError(503, f"The {store} is unavailable; try again shortly.", code=code,
                      error_type="server_error", headers={"retry-after": "1"})


def internal_error() -> ProxyError:
    return ProxyError(500, "The proxy failed to handle the request; see its logs for the request id.",
                      code="internal_error")


def json_error_response_parts(error: ProxyError, dialect: ErrorDialect = "openai"
                              ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, raw ASGI headers and body for an error, usable from middleware and routes alike."""
    body = error.body(dialect)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    return error.status, headers, body


class ClientDisconnected(Exception):
    """The client went away; the work done for it has been cancelled and nothing is sent."""
