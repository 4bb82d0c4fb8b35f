"""uvicorn's HTTP/1.1 protocols with limits on request heads, which uvicorn reads whole before an ASGI app
sees anything (so no middleware can bound them).

`rlm-proxy serve --http` picks one by name; uvicorn imports it by that path in every worker process, and
each connection takes its limits from the lifespan state the app put them in (`head_limits`)."""

from __future__ import annotations

import importlib.util
from typing import Literal

HttpChoice = Literal["auto", "httptools", "h11"]

PROTOCOLS: dict[str, str] = {
    "httptools": "proxy.http_server.httptools_protocol:LimitedHttpToolsProtocol",
    "h11": "proxy.http_server.h11_protocol:LimitedH11Protocol",
}


def protocol_path(choice: HttpChoice) -> str:
    """The import path of the protocol for `--http`; `auto` is httptools when it is installed (faster)."""
    installed = importlib.util.find_spec("httptools") is not None
    if choice == "auto":
        choice = "httptools" if installed else "h11"
    elif choice == "httptools" and not installed:
        raise ModuleNotFoundError("httptools is not installed; use --http h11")
    return PROTOCOLS[choice]
