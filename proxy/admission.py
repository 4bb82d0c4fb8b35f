"""Admission control for RLM runs: a cap on runs at once per server process, a bounded wait queue with a
timeout, and fairness between keys.

An RLM run holds a sandbox worker (hundreds of MB) and makes model calls for minutes, so a burst of runs
must wait for a slot rather than start and starve each other. Short passthrough requests never come here.
When a slot frees, it goes to the waiting key that has the fewest runs going; on a tie, to the key whose
last run started longest ago (keys take turns); then to the longest waiting. So one key's burst cannot hold
every slot while another key waits, and a key's own runs start in arrival order.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from proxy.errors import ProxyError

MIB = 1024 * 1024
# What the proxy process itself needs besides its workers (event loop, prompts held while they are sent).
PROXY_RESERVE_MB = 512
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
                 Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))  # cgroup v1
NO_CGROUP_LIMIT = 1 << 60  # v1 reports "no limit" as a huge number
PROCESSES_ENV = "RLM_PROXY_SERVER_PROCESSES"


def memory_limit_bytes() -> int:
    """The container's memory limit, else the machine's memory."""
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < NO_CGROUP_LIMIT:
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def workers_memory_holds(worker_memory_mb: int, memory_bytes: int, processes: int = 1) -> int:
    """Sandbox workers (and so RLM runs) of one server process when the config does not say: its share of
    what the memory holds besides the server processes, each worker allowed `sandbox.memory_mb` on top of
    its context; at least one."""
    usable_mb = memory_bytes // MIB - processes * PROXY_RESERVE_MB
    return max(1, usable_mb // processes // worker_memory_mb)


def server_processes() -> int:
    """How many server processes share this machine's (or container's) memory: `rlm-proxy serve --workers`
    says so to the processes it starts."""
    value = os.environ.get(PROCESSES_ENV, "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


class AdmissionObserver(Protocol):
    def admission_changed(self, running: int, queued: int) -> None: ...

    def admission_rejected(self, reason: str) -> None: ...


class _Unobserved:
    def admission_changed(self, running: int, queued: int) -> None:
        pass

    def admission_rejected(self, reason: str) -> None:
        pass


@dataclass(eq=False)
class _Waiter:
    key: str
    order: int
    granted: asyncio.Future[None]


class RunAdmission:
    """Slots for RLM runs. `enter` waits for one (or refuses with 503 `server_overloaded`); the slot is the
    caller's until it calls `leave`."""

    def __init__(self, capacity: int, max_queued: int, queue_timeout_s: float,
                 observer: AdmissionObserver | None = None) -> None:
        self.capacity = capacity
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self._running: dict[str, int] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        self._last_start: dict[str, int] = {}  # of keys with runs going or waiting
        self._order = itertools.count()
        self._observer = observer or _Unobserved()

    @property
    def running(self) -> int:
        return sum(self._running.values())

    @property
    def queued(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def status(self) -> dict[str, int | float]:
        return {"running": self.running, "queued": self.queued, "capacity": self.capacity,
                "max_queued": self.max_queued, "queue_timeout_s": self.queue_timeout_s}

    async def enter(self, key: str) -> None:
        """Take a slot for a run of `key`, waiting in the queue if all are taken."""
        if self.running < self.capacity and not self._queues:
            self._start(key)
            return
        if self.queued >= self.max_queued:
            self._observer.admission_rejected("queue_full")
            raise _overloaded(f"{self.running} RLM runs are going and {self.queued} are waiting, the most "
                              f"this server takes")
        waiter = _Waiter(key, next(self._order), asyncio.get_running_loop().create_future())
        self._queues.setdefault(key, deque()).append(waiter)
        self._changed()
        try:
            # asyncio.wait, not wait_for: on 3.11 wait_for may swallow a cancellation that races a grant.
            await asyncio.wait((waiter.granted,), timeout=self.queue_timeout_s)
        except asyncio.CancelledError:  # the client went away
            if waiter.granted.done():
                self.leave(key)
            else:
                self._drop(waiter)
            raise
        if not waiter.granted.done():
            self._drop(waiter)
            self._observer.admission_rejected("queue_timeout")
            raise _overloaded(f"no RLM run slot freed within {self.queue_timeout_s:g} s")

    def leave(self, key: str) -> None:
        """Give back a slot of `key`, to the next waiter if there is one."""
        left = self._running.get(key, 0) - 1
        if left > 0:
            self._running[key] = left
        else:
            self._running.pop(key, None)
            self._forget(key)
        self._grant()
        self._changed()

    def _grant(self) -> None:
        while self._queues and self.running < self.capacity:
            key = min(self._queues, key=lambda k: (self._running.get(k, 0), self._last_start.get(k, -1),
                                                   self._queues[k][0].order))
            waiter = self._queues[key].popleft()
            if not self._queues[key]:
                del self._queues[key]
            self._start(key)
            waiter.granted.set_result(None)

    def _start(self, key: str) -> None:
        self._running[key] = self._running.get(key, 0) + 1
        self._last_start[key] = next(self._order)
        self._changed()

    def _drop(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.key)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._queues[waiter.key]
                self._forget(waiter.key)
        self._changed()

    def _forget(self, key: str) -> None:
        """A key with nothing going or waiting leaves the turn order (keys can be many)."""
        if key not in self._running and key not in self._queues:
            self._last_start.pop(key, None)

    def _changed(self) -> None:
        self._observer.admission_changed(self.running, self.queued)


def _overloaded(why: str) -> ProxyError:
    return ProxyError(503, f"The server is overloaded: {why}. Retry later.", code="server_overloaded",
                      error_type="server_error", headers={"retry-after": "5"})
