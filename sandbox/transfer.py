"""What the parent agrees to take from workers: the texts of model calls (prompts, nested contexts) are
announced by size first, and taken only within the session's allowance and the pool's shared budget.

Three bounds keep a worker from making the proxy allocate at will: a text larger than one wave is refused
(and so never read); a session may send at most `max_run_bytes` in all; and the texts held at once for all
workers together stay within `max_inflight_bytes`, a batch waiting its turn when that budget is spent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence

from sandbox.interface import SandboxLimits


class ByteBudget:
    """Bytes held at once across all workers; holders wait in arrival order when the budget is spent."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        await self._acquire(size)
        try:
            yield
        finally:
            self.used -= size
            self._grant()

    async def _acquire(self, size: int) -> None:
        if size > self.total:
            raise ValueError(f"{size:,} bytes exceed the whole budget of {self.total:,}")
        if not self._waiting and self.used + size <= self.total:
            self.used += size
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiting.append((size, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted, then cancelled before it ran
                self.used -= size
            else:
                self._waiting.remove((size, granted))
            self._grant()
            raise

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.total:
            size, granted = self._waiting.popleft()
            self.used += size
            granted.set_result(None)


class Transfers:
    """One session's texts: its allowance over the whole run, and the waves it is taken in."""

    def __init__(self, limits: SandboxLimits, shared: ByteBudget) -> None:
        self.wave_bytes = min(limits.max_batch_bytes, shared.total)
        self.shared = shared
        self._run_bytes = limits.max_run_bytes
        self._left = limits.max_run_bytes

    def take(self, size: int, what: str = "prompt") -> str | None:
        """Why a text (or a nested run's prompt and context together) of `size` bytes will not be taken
        ("Error: ..."), else None, and then it counts against the run's allowance."""
        if size > self.wave_bytes:
            return (f"Error: this {what} is {size:,} bytes; the proxy takes at most {self.wave_bytes:,} "
                    "bytes for one. Split it into smaller pieces.")
        if size > self._left:
            return (f"Error: this run has sent {self._run_bytes - self._left:,} bytes to sub-calls, and this "
                    f"{what} ({size:,} bytes) would pass the run's limit of {self._run_bytes:,}. Send less "
                    "text to sub-calls: filter the context with code first.")
        self._left -= size
        return None

    def waves(self, indices: Sequence[int], sizes: Sequence[int]) -> Iterator[list[int]]:
        """`indices` in consecutive groups of at most wave_bytes (each index fits in one on its own)."""
        wave: list[int] = []
        held = 0
        for index in indices:
            if wave and held + sizes[index] > self.wave_bytes:
                yield wave
                wave, held = [], 0
            wave.append(index)
            held += sizes[index]
        if wave:
            yield wave
