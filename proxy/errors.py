"""The one place that turns failures into OpenAI-shaped error bodies and statuses."""

from __future__ import annotations

from typing import Any

import orjson

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


class ProxyError(Exception):
    """An error with everything needed to answer the client in the OpenAI envelope."""

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

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())


def invalid_request(message: str, param: str | None = None, code: str = "invalid_request") -> ProxyError:
    return ProxyError(400, message, code=code, param=param)


def internal_error() -> ProxyError:
    return ProxyError(500, "The proxy failed to handle the request; see its logs for the request id.",
                      code="internal_error")


def json_error_response_parts(error: ProxyError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, raw ASGI headers and body for an error, usable from middleware and routes alike."""
    body = error.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    return error.status, headers, body


class ClientDisconnected(Exception):
    """The client went away; the work done for it has been cancelled and nothing is sent."""
