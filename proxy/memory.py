"""Giving memory back to the system after bursts.

Measured with bench/load.py: after 50 concurrent 1 MB RLM runs the proxy kept 130-150 MiB more than
before, and little of it was live data:
- glibc raises its mmap threshold to the size of any mmapped block that is freed (up to 32 MiB), so once
  the first request body is freed, later bodies, decoded prompts and sub-call prompts come from the heap,
  and free memory inside the heap (or a thread's arena) is never returned: `free` only trims its top;
- reference cycles (HTTP client responses, pipe transports of finished sandbox workers) keep their
  buffers until a full garbage collection, which an idle process does not run; and a full collection over
  the ~400,000 objects that imports leave behind takes 0.3-0.4 s, during which the event loop stands still.
Hence: a fixed mmap threshold (glibc's own initial 128 KiB, no longer raised), so big buffers are mmapped
and go back to the system when freed; the objects that exist once start-up is done are frozen out of the
collector's way (gc.freeze), which makes a full collection take milliseconds; and once the proxy has been
idle for a moment after requests, a full collection and `malloc_trim(0)`, which returns the free pages
inside the heap and the arenas.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("rlm_proxy")

M_MMAP_THRESHOLD = -3  # <malloc.h>; setting it also turns off the dynamic threshold
MMAP_THRESHOLD_BYTES = 128 * 1024


def load_glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (musl and others have neither call, or not these semantics)."""
    libc = ctypes.CDLL(None)
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


class MemoryReleaser:
    """Pins the mmap threshold at start, freezes the start-up objects, and collects and trims once no
    request has been in flight for `idle_s` after some were. Without glibc: only the collector's part."""

    def __init__(self, libc: ctypes.CDLL | None, idle_s: float) -> None:
        self._libc = libc
        self._idle_s = idle_s
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._trimming: asyncio.Task[int] | None = None

    def start(self) -> None:
        if self._libc is not None and not self._libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
            log.warning("mallopt(M_MMAP_THRESHOLD) failed; large buffers may stay in the heap")

    def started_up(self) -> None:
        """Imports and warm-up are done: what exists now lives as long as the process."""
        gc.collect()
        gc.freeze()

    def request_started(self) -> None:
        self._in_flight += 1

    def request_finished(self) -> None:
        self._in_flight -= 1
        # Armed once, not pushed back by every request: steady probes would otherwise postpone it forever.
        if self._in_flight == 0 and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._idle_s, self._on_idle)

    def _on_idle(self) -> None:
        self._timer = None
        if self._in_flight or (self._trimming is not None and not self._trimming.done()):
            return  # busy again: the next time the proxy goes idle arms another check
        gc.collect()  # milliseconds, once start-up objects are frozen
        if self._libc is not None:
            # In a thread: trimming a large heap takes milliseconds, which the event loop need not wait.
            self._trimming = asyncio.create_task(asyncio.to_thread(self._libc.malloc_trim, 0))

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._trimming is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._trimming


class IdleMemoryMiddleware:
    """Tells the releaser when HTTP requests start and end (streaming bodies included)."""

    def __init__(self, app: ASGIApp, releaser: MemoryReleaser) -> None:
        self.app = app
        self.releaser = releaser

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.releaser.request_started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.releaser.request_finished()
