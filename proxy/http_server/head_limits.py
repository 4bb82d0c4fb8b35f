"""Counting a request head (request line and header fields) as its bytes arrive, and refusing it with 431
before a parser has buffered more than the limit.

The parsers cannot do this themselves: httptools buffers a header value whole before it reports it, and
h11 limits bytes but not fields. So the bytes are looked at on their way to the parser: while a head is
being read, each read counts up to the blank line that ends the head (body bytes in the same read are not
head bytes) and the line breaks in it, one per field. The protocol says when a head is expected (a new
connection, or the previous request's end) and when a body is. A pipelined request that starts in the
same read as the previous one ends is counted from its next read on: at most one read (256 KiB) more.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from proxy.config import ServerSettings
from proxy.errors import ProxyError, json_error_response_parts

STATE_KEY = "head_limits"  # in the lifespan state, where each connection finds its limits
_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line, with or without CR (as h11 and llhttp accept)
# After a refusal the connection keeps reading (and dropping) what the client still sends, for at most
# this long: a client that writes its whole request before it reads would otherwise get a reset instead
# of the 431.
LINGER_S = 2.0


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int
    max_fields: int

    @classmethod
    def of(cls, server: ServerSettings) -> HeadLimits:
        return cls(max_bytes=server.max_header_bytes, max_fields=server.max_header_count)

    @classmethod
    def from_state(cls, app_state: Mapping[str, Any]) -> HeadLimits:
        """The limits the app put in the lifespan state; the defaults for an app that did not."""
        limits = app_state.get(STATE_KEY)
        return limits if isinstance(limits, HeadLimits) else cls.of(ServerSettings())


def lifespan_state(server: ServerSettings) -> dict[str, object]:
    """What the app's lifespan yields for the protocol to find (uvicorn hands it the lifespan state)."""
    return {STATE_KEY: HeadLimits.of(server)}


class HeadCounter:
    """The bytes and fields of the request head being read on one connection."""

    def __init__(self, limits: HeadLimits) -> None:
        self._limits = limits
        self._in_head = False
        self.expect_head()

    def expect_head(self) -> None:
        """The next bytes begin a request. (Repeating this while a head is read changes nothing.)"""
        if not self._in_head:
            self._in_head, self._started, self._bytes, self._line_breaks, self._tail = True, False, 0, 0, b""

    def expect_body(self) -> None:
        self._in_head = False

    def over_limit(self, data: bytes) -> str | None:
        """Why the head is refused once `data` is added to it; None while it is within the limits."""
        if not self._in_head:
            return None
        window = self._tail + data  # a blank line may straddle two reads once the head has begun
        start = search_from = 0
        if not self._started:  # blank lines before a request line (llhttp skips them) do not end a head
            start = len(data) - len(data.lstrip(b"\r\n"))
            search_from = len(self._tail) + start
            self._started = start < len(data)
        end = _HEAD_END.search(window, search_from)
        head_bytes = len(data) if end is None else end.end() - len(self._tail)
        self._bytes += head_bytes
        self._line_breaks += data.count(b"\n", start, head_bytes)
        # One line break ends the request line, one per field, and the blank line once it has come.
        fields = self._line_breaks - (1 if end is None else 2)
        if self._bytes > self._limits.max_bytes:
            return (f"The request line and header fields exceed the limit of {self._limits.max_bytes} "
                    f"bytes.")
        if fields > self._limits.max_fields:
            return f"The request has more than {self._limits.max_fields} header fields."
        if end is None:
            self._tail = window[-2:]
        else:
            self._in_head = False
        return None


class HeadGuard:
    """A connection's head counter, and what it does with a head over the limits: a 431 in the OpenAI
    error shape, then the connection is closed."""

    def __init__(self, limits: HeadLimits) -> None:
        self.counter = HeadCounter(limits)
        self._refused = False

    def admit(self, data: bytes, transport: asyncio.Transport,
              default_headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether `data` may go to the parser; if not, the client has been answered."""
        if self._refused:
            return False  # lingering: what the client still sends is dropped
        problem = self.counter.over_limit(data)
        if problem is None:
            return True
        self._refused = True
        transport.write(_response(problem, default_headers))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)
        return False


def _response(message: str, default_headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    error = ProxyError(431, message, code="request_header_fields_too_large",
                       error_type="invalid_request_error")
    status, headers, body = json_error_response_parts(error)
    headers = [*default_headers, *headers, (b"x-request-id", uuid.uuid4().hex.encode()),
               (b"connection", b"close")]
    lines = [b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode())]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
