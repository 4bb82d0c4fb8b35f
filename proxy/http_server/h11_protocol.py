"""uvicorn's h11 protocol with the head limits of `head_limits`."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from proxy.http_server.head_limits import HeadGuard, HeadLimits

# h11 states in which the peer's next bytes are (part of) a request head.
_AWAITING_HEAD = frozenset({h11.IDLE, h11.DONE})


class LimitedH11Protocol(H11Protocol):
    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = HeadLimits.from_state(app_state)
        # h11's own bound on what it buffers (16 KiB by default, answered with a plain 400) follows ours,
        # so that the counter decides, with a 431.
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_bytes)
        self._guard = HeadGuard(limits)

    def data_received(self, data: bytes) -> None:
        counter = self._guard.counter
        if self.conn.their_state in _AWAITING_HEAD:
            counter.expect_head()
        else:
            counter.expect_body()
        if self._guard.admit(data, self.transport, self.server_state.default_headers):
            super().data_received(data)
        else:
            self._unset_keepalive_if_required()
