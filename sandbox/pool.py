"""Warm worker processes, handed out as sessions: Python started and everything imported ahead of time.

The pool also holds what all sessions share: a cap on live worker processes (warm ones included), for
which a session waits up to `worker_wait_s` when all are busy, and the byte budget of sub-call texts held
for all workers at once (sandbox/transfer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from sandbox.bridge import WORKER_COMMAND, WorkerProcess
from sandbox.interface import Isolation, PoolLimits, SandboxLimits, SandboxUnavailableError
from sandbox.session import SandboxSession
from sandbox.transfer import ByteBudget, Transfers

logger = logging.getLogger(__name__)


class SandboxPool:
    def __init__(self, limits: SandboxLimits, shared: PoolLimits | None = None,
                 command: Sequence[str] = WORKER_COMMAND) -> None:
        """`command` starts a worker; only tests and benchmarks give another (never the configuration)."""
        self._limits = limits
        self._shared = shared or PoolLimits()
        self._command = command
        self._bytes = ByteBudget(self._shared.max_inflight_bytes)
        self._slots = 0  # live workers and spawns under way: at most max_workers
        self._live: set[WorkerProcess] = set()  # every started worker holding a slot
        self._warm: list[WorkerProcess] = []
        # Sessions waiting for a worker, in arrival order: each gets a warm worker, or a slot to spawn in.
        self._waiting: deque[asyncio.Future[WorkerProcess | None]] = deque()
        self._sessions: set[SandboxSession] = set()
        self._refill: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._spawn_error: str | None = None  # the last failure to start a worker, until one starts
        self._isolation: Isolation | None = None  # as the last worker to start reported it

    async def start(self) -> None:
        """Spawns the warm workers and waits until they are ready."""
        self._started = True
        wanted = min(self._shared.warm_workers - len(self._warm), self._shared.max_workers - self._slots)
        self._slots += wanted
        spawned = await asyncio.gather(*(self._spawn_in_slot() for _ in range(wanted)),
                                       return_exceptions=True)
        self._warm.extend(worker for worker in spawned if isinstance(worker, WorkerProcess))
        for failure in spawned:
            if isinstance(failure, BaseException):
                raise failure

    async def session(self, context: str | list[dict[str, Any]]) -> SandboxSession:
        """A session with `context` loaded in a worker of its own (a warm one when there is one)."""
        if self._closed:
            raise SandboxUnavailableError("the sandbox pool is closed")
        session = SandboxSession(context, self._limits, self, Transfers(self._limits, self._bytes))
        self._sessions.add(session)
        try:
            await session.start()
        except BaseException:
            await session.close()
            raise
        return session

    def status(self) -> dict[str, Any]:
        usable = self._started and not self._closed and (bool(self._warm) or self._spawn_error is None)
        status: dict[str, Any] = {"usable": usable, "warm": len(self._warm), "sessions": len(self._sessions),
                                  "workers": len(self._live), "max_workers": self._shared.max_workers,
                                  "waiting": len(self._waiting)}
        if self._isolation is not None:
            status["isolation"] = self._isolation
        if self._spawn_error is not None:
            status["error"] = self._spawn_error
        return status

    async def aclose(self) -> None:
        """Kills every worker: warm ones and those of open sessions."""
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill
        warm, self._warm = self._warm, []
        await asyncio.gather(*(self.retire(worker) for worker in warm),
                             *(session.close() for session in list(self._sessions)))

    # The WorkerSource of sessions

    async def acquire(self) -> WorkerProcess:
        if self._closed:
            raise SandboxUnavailableError("the sandbox pool is closed")
        while self._warm:
            worker = self._warm.pop()
            if worker.alive:
                return worker
            await self.retire(worker)
        if self._slots < self._shared.max_workers and not self._waiting:
            self._slots += 1
            return await self._spawn_in_slot()
        granted: asyncio.Future[WorkerProcess | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(granted)
        try:
            async with asyncio.timeout(self._shared.worker_wait_s):
                worker = await granted
        except BaseException as error:
            if granted.done() and not granted.cancelled():  # granted, but too late: pass it on
                if (late := granted.result()) is not None:
                    self._offer(late)
                else:
                    self._release_slot()
            elif granted in self._waiting:
                self._waiting.remove(granted)
            if isinstance(error, TimeoutError):
                raise SandboxUnavailableError(
                    f"all {self._shared.max_workers} sandbox workers are busy (waited "
                    f"{self._shared.worker_wait_s:g} s); try again later") from None
            raise
        return worker if worker is not None else await self._spawn_in_slot()

    async def retire(self, worker: WorkerProcess) -> None:
        await worker.close()
        if worker in self._live:  # once per worker, however often it is retired
            self._live.discard(worker)
            self._release_slot()

    def replenish(self) -> None:
        """A session has loaded its worker: refill now if no warm worker is left; else the refill waits for
        a session to end (`retire`), since starting a worker takes ~80 ms of CPU that the runs under way
        would lose."""
        if not self._warm:
            self._start_refill()

    def forget(self, session: SandboxSession) -> None:
        self._sessions.discard(session)

    # Helpers

    def _offer(self, worker: WorkerProcess) -> None:
        """A ready worker goes to the first waiting session, else to the warm ones."""
        if (waiter := self._next_waiter()) is not None:
            waiter.set_result(worker)
        else:
            self._warm.append(worker)

    def _release_slot(self) -> None:
        """A slot is free: it goes to the first waiting session (which spawns in it), else to a refill."""
        if (waiter := self._next_waiter()) is not None:
            waiter.set_result(None)
        else:
            self._slots -= 1
            self._start_refill()

    def _next_waiter(self) -> asyncio.Future[WorkerProcess | None] | None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # (one cancelled a moment ago is still queued until it cleans up)
                return waiter
        return None

    def _start_refill(self) -> None:
        """Refills the warm workers in the background, one at a time (the machine may have few cores)."""
        if not self._closed and (self._refill is None or self._refill.done()):
            self._refill = asyncio.create_task(self._refill_warm())

    async def _refill_warm(self) -> None:
        while (not self._closed and len(self._warm) < self._shared.warm_workers and not self._waiting
               and self._slots < self._shared.max_workers):
            self._slots += 1
            try:
                worker = await self._spawn_in_slot()
            except SandboxUnavailableError:
                logger.exception("could not refill the sandbox pool")
                return
            if self._closed:
                await self.retire(worker)
                return
            self._offer(worker)

    async def _spawn_in_slot(self) -> WorkerProcess:
        """A new worker, in a slot counted for it (and given back if it fails to start)."""
        try:
            worker = await WorkerProcess.spawn(self._command, self._shared.worker_user)
        except BaseException as error:
            self._release_slot()
            if isinstance(error, SandboxUnavailableError):
                self._spawn_error = str(error)
            raise
        self._spawn_error = None
        self._live.add(worker)
        self._note_isolation(worker.isolation)
        return worker

    def _note_isolation(self, isolation: Isolation) -> None:
        """Warns once per pool (not per worker) when workers run behind fewer walls than they could."""
        if isolation != "seccomp" and self._isolation in (None, "seccomp"):
            logger.warning("sandbox workers run without a seccomp filter (isolation: %s): install "
                           "libseccomp2 and allow seccomp in the container runtime (README: threat model)",
                           isolation)
        self._isolation = isolation
