"""OS-level limits the worker puts on itself: memory, CPU, files, processes, and the per-block CPU timer."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import time
from collections.abc import Iterator
from types import FrameType

CPU_GRACE_S = 1.0  # after the catchable interruption, the kernel's SIGXCPU follows within this (+ rounding)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class CpuTimeExceeded(BaseException):
    """Raised into a block that used up its CPU time. A BaseException, so `except Exception` lets it pass;
    code that swallows it anyway is killed by RLIMIT_CPU shortly after."""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def address_space_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[0]) * PAGE_SIZE


def apply_process_limits(memory_bytes: int, cpu_limit_s: int, keep_fds: int) -> None:
    """Irreversible limits for the rest of the worker's life. Call once, after the context is loaded.
    At cpu_limit_s of CPU time the kernel sends SIGXCPU (fatal); the hard limit's SIGKILL is a backstop."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit_s, cpu_limit_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # Python ignores SIGXFSZ: writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.closerange(keep_fds, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    resource.setrlimit(resource.RLIMIT_NOFILE, (keep_fds, keep_fds))  # no new files, sockets or pipes
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork (root is exempt: the worker dropped it)


class BlockTimer:
    """The per-block CPU allowance.

    First an ITIMER_PROF signal raises CpuTimeExceeded into the code; then, in case the code catches it,
    the soft RLIMIT_CPU (lowered for the block to "used so far + allowance + grace") makes the kernel send
    SIGXCPU, whose default action ends the process. While the worker itself is busy on the code's behalf
    (a request/answer exchange with the parent) the exception is held back and raised when that is done.
    """

    def __init__(self, cpu_s_per_block: float, cpu_limit_s: int) -> None:
        self.cpu_s_per_block = cpu_s_per_block
        self._cpu_limit_s = cpu_limit_s  # the soft RLIMIT_CPU between blocks: the run's budget
        self._host_busy = False
        self._expired = False
        self._slept_s = 0.0  # in this block
        signal.signal(signal.SIGPROF, self._on_signal)

    def start(self) -> None:
        self._expired = self._host_busy = False
        self._slept_s = 0.0
        block_limit_s = math.ceil(cpu_seconds() + self.cpu_s_per_block + CPU_GRACE_S)
        self._set_soft_cpu_limit(min(self._cpu_limit_s, block_limit_s))
        signal.setitimer(signal.ITIMER_PROF, self.cpu_s_per_block)

    def stop(self) -> None:
        """Call in a plain `finally`. (A generator context manager could leave its cleanup to garbage
        collection, running it during a later block, if the signal landed in contextlib's code.) If the
        signal lands before this runs, skipping it is harmless: the timer is one-shot and start() resets
        the soft limit."""
        self._host_busy = True  # from here on a late signal is ignored: the block is over
        signal.setitimer(signal.ITIMER_PROF, 0)
        self._set_soft_cpu_limit(self._cpu_limit_s)

    def sleep(self, seconds: float) -> None:
        """time.sleep for sandboxed code. Sleeping uses no CPU, so the CPU timer would not stop it: a block
        may sleep as long as its CPU allowance, in total."""
        if not isinstance(seconds, (int, float)) or seconds != seconds:
            raise TypeError("time.sleep() needs a number of seconds")
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        if self._slept_s + seconds > self.cpu_s_per_block:
            raise ValueError(f"time.sleep: a block may sleep {self.cpu_s_per_block:g} s in total in the "
                             f"sandbox ({self._slept_s:g} s used); llm_query waits for its answer by itself")
        self._slept_s += seconds
        time.sleep(seconds)

    @contextlib.contextmanager
    def host_busy(self) -> Iterator[None]:
        self._host_busy = True
        try:
            yield
        finally:
            self._host_busy = False
        if self._expired:
            raise CpuTimeExceeded(self._message())

    @staticmethod
    def _set_soft_cpu_limit(seconds: int) -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, resource.getrlimit(resource.RLIMIT_CPU)[1]))

    def _message(self) -> str:
        return f"the block used more than its {self.cpu_s_per_block:g} s of CPU time and was stopped"

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._expired = True
        if not self._host_busy:
            raise CpuTimeExceeded(self._message())
