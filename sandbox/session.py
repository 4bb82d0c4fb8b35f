"""One RLM run's REPL: a worker holding the context, replaced by a fresh one whenever it dies."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from sandbox.bridge import WorkerDied, WorkerProcess
from sandbox.coverage import read_map, tracked_chars
from sandbox.interface import CallHandler, ExecResult, SandboxLimits, SandboxUnavailableError
from sandbox.transfer import Transfers

RESTART_NOTE = ("[The sandbox worker died during this block: {cause}. A fresh worker with the same `context` "
                "is ready, but every variable, function and import defined so far was lost: recompute "
                "what you still need.]")
STOPPED_NOTE = ("[The previous sandbox worker had been stopped; this block ran in a fresh worker with the "
                "same `context`, and every variable, function and import defined before was lost.]\n")


class WorkerSource(Protocol):
    """Where a session gets its workers (the pool)."""

    async def acquire(self) -> WorkerProcess:
        """A started worker waiting for a context."""
        ...

    async def retire(self, worker: WorkerProcess) -> None:
        """Kills and reaps a worker the session is done with."""
        ...

    def replenish(self) -> None:
        """Called once a worker is loaded: the source decides when to start replacing it."""
        ...

    def forget(self, session: SandboxSession) -> None:
        """The session is closed."""
        ...


class SandboxSession:
    """Created by SandboxPool.session(); blocks run one at a time, in order."""

    def __init__(self, context: str | list[dict[str, Any]], limits: SandboxLimits,
                 source: WorkerSource, transfers: Transfers) -> None:
        self._context = context  # a reference (not a copy) for loading replacement workers
        self._limits = limits
        self._source = source
        self._transfers = transfers
        self._worker: WorkerProcess | None = None  # set by start(); killed ones stay until replaced
        self._coverage = 0.0
        self._reads: list[tuple[int, int]] = []  # what was read, carried over to replacement workers
        self._chars = tracked_chars(context)
        self._lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        await self._replace_worker()

    async def execute(self, code: str, handler: CallHandler) -> ExecResult:
        async with self._lock:
            started = time.monotonic()
            worker = self._worker
            fresh = worker is None or not worker.alive  # stopped by a cancelled execute or a failed lookup
            if worker is None or fresh:
                worker = await self._replace_worker()
            before = worker.usage()
            try:
                done = await worker.execute(code, handler, self._transfers)
            except WorkerDied as death:
                await self._replace_worker()
                return ExecResult(outcome="killed", output=RESTART_NOTE.format(cause=death.cause), final=None,
                                  duration_s=time.monotonic() - started, worker_restarted=True,
                                  coverage=self._coverage)
            self._coverage = done.coverage
            if done.reads is not None:
                self._reads = done.reads
            output = STOPPED_NOTE + done.output if fresh else done.output
            after = worker.usage()
            return ExecResult(outcome=done.outcome, output=output, final=done.final,  # type: ignore[arg-type]
                              duration_s=time.monotonic() - started, worker_restarted=fresh,
                              coverage=self._coverage,
                              cpu_s=None if before is None or after is None else after.cpu_s - before.cpu_s,
                              peak_rss_bytes=None if after is None else after.peak_rss_bytes)

    async def resolve_variable(self, name: str) -> tuple[str | None, str | None]:
        """str() of a variable for FINAL_VAR on its own line, as (value, None); (None, why) when it cannot
        be the answer; (None, None) when there is no such variable."""
        async with self._lock:
            if self._worker is None or not self._worker.alive:
                return None, None
            try:
                found = await self._worker.read_variable(name)
            except WorkerDied as death:
                return None, f"the sandbox worker died: {death.cause}"  # the next execute replaces it
            return found.value, found.problem

    @property
    def coverage(self) -> float:
        return self._coverage

    @property
    def read_map(self) -> tuple[int, ...]:
        """Which parts of the context the code has read: per hundredth of it, the percent read (as of the
        last block whose reads the worker could report in full)."""
        return read_map(self._reads, self._chars)

    @property
    def pid(self) -> int | None:
        """The current worker's process id (for logs and diagnostics)."""
        return self._worker.pid if self._worker is not None else None

    async def close(self) -> None:
        """SIGKILLs the worker; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._source.forget(self)
        if self._worker is not None:
            await self._source.retire(self._worker)

    async def _replace_worker(self) -> WorkerProcess:
        """Reaps the current worker (killed or dead, if any) and loads the context into another."""
        if self._worker is not None:
            await self._source.retire(self._worker)
            self._worker = None
        if self._closed:
            raise SandboxUnavailableError("the sandbox session is closed")
        try:
            worker = await self._load(await self._source.acquire())
        except WorkerDied:  # a warm worker may have died while idle: one more try, with another
            try:
                worker = await self._load(await self._source.acquire())
            except WorkerDied as death:
                raise SandboxUnavailableError(f"a worker could not load the context: {death}") from None
        self._source.replenish()  # not earlier: spawning competes with the load for the CPU
        return worker

    async def _load(self, worker: WorkerProcess) -> WorkerProcess:
        self._worker = worker  # from here on close() reaches it
        try:
            self._coverage = await worker.load(self._context, self._limits, self._reads)
        except BaseException:
            self._worker = None
            await self._source.retire(worker)
            raise
        return worker
