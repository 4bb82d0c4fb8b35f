"""uvicorn's httptools protocol with the head limits of `head_limits`."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.http_server.head_limits import HeadGuard, HeadLimits


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = HeadGuard(HeadLimits.from_state(app_state))

    def data_received(self, data: bytes) -> None:
        if self._guard.admit(data, self.transport, self.server_state.default_headers):
            super().data_received(data)
        else:
            self._unset_keepalive_if_required()

    # The parser's callbacks tell where heads and bodies are (also for pipelined requests).
    def on_headers_complete(self) -> None:
        self._guard.counter.expect_body()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._guard.counter.expect_head()
        super().on_message_complete()
