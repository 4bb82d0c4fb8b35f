"""The sandbox's public data types: its limits, the call handler the engine provides, and block results."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Protocol

from sandbox.framing import MAX_FRAME_BYTES

Outcome = Literal["ok", "error", "timeout", "killed"]
# The strongest wall a worker has on top of RestrictedPython and its rlimits (README: threat model).
Isolation = Literal["seccomp", "namespaces", "rlimits only"]
NestedContext = str | list[dict[str, str]] | None
MIB = 2**20

# The modules code may import (as read-only views of their public functions, classes and constants).
ALLOWED_MODULES = ("base64", "bisect", "collections", "copy", "csv", "dataclasses", "datetime", "difflib",
                   "enum", "functools", "hashlib", "heapq", "io", "itertools", "json", "math", "operator",
                   "random", "re", "statistics", "string", "sys", "textwrap", "time", "traceback", "typing",
                   "unicodedata")


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int = 1024  # address-space allowance on top of what the loaded context needs
    cpu_s_per_block: float = 10.0  # first an exception in the code, then SIGXCPU shortly after
    cpu_s_per_run: float = 300.0  # CPU seconds for a worker's whole life (RLIMIT_CPU)
    wall_s_per_block: float = 60.0  # parent-side watchdog; time waiting for llm_query answers excluded
    max_output_chars: int = 20_000  # printed output of one block as returned
    # Sub-call texts (prompts, nested contexts) the parent takes from one worker at a time: a larger
    # batch is taken in waves, each sent to the models before the next is read.
    max_batch_bytes: int = 64 * MIB
    max_run_bytes: int = 1024 * MIB  # all sub-call texts of one session together

    def __post_init__(self) -> None:
        for name in ("memory_mb", "cpu_s_per_block", "cpu_s_per_run", "wall_s_per_block", "max_output_chars",
                     "max_batch_bytes", "max_run_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive")
        if self.max_batch_bytes > MAX_FRAME_BYTES:
            raise ValueError(f"SandboxLimits.max_batch_bytes must be at most {MAX_FRAME_BYTES:,}")


@dataclass(frozen=True)
class WorkerUser:
    """The ids workers are started under instead of the proxy's own (which needs CAP_SETUID/CAP_SETGID)."""

    uid: int
    gid: int


@dataclass(frozen=True)
class PoolLimits:
    """What all the sessions of a pool share."""

    warm_workers: int = 2  # started ahead of time, ready for a context
    max_workers: int = 32  # live worker processes at once, warm ones included
    worker_wait_s: float = 60.0  # how long a session waits for a worker when all are busy
    max_inflight_bytes: int = 256 * MIB  # sub-call texts held for all workers together
    worker_user: WorkerUser | None = None  # None: workers start as the proxy's user

    def __post_init__(self) -> None:
        if not (0 <= self.warm_workers <= self.max_workers and self.max_workers > 0):
            raise ValueError("PoolLimits: need 0 <= warm_workers <= max_workers and max_workers > 0")
        if not (self.worker_wait_s >= 0 and self.max_inflight_bytes > 0):
            raise ValueError("PoolLimits: worker_wait_s must be >= 0 and max_inflight_bytes positive")


@dataclass(frozen=True)
class Prompt:
    """A prompt of an llm_query batch: its size is known when the batch is announced, its text (`await
    prompt.text`) once it has been read from the worker, so that a call can start while the next prompt is
    still on its way. Awaiting the text raises CancelledError if the block ends before it arrives."""

    chars: int
    text: asyncio.Future[str]

    @classmethod
    def of(cls, text: str) -> Prompt:
        """A prompt whose text is there already."""
        arrived: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        arrived.set_result(text)
        return cls(len(text), arrived)


class CallHandler(Protocol):
    """Implemented by the engine: makes the real model calls that code in the REPL asks for."""

    def prompt_refusals(self, chars: list[int], model: str | None) -> list[str | None]:
        """For prompts of these many characters to `model`, why each would be refused ("Error: ..."), else
        None. Asked once per batch, before any prompt is read from the worker."""
        ...

    async def llm_query(self, prompts: list[Prompt], model: str | None) -> list[str]:
        """One answer per prompt, in order; never raises (failures are "Error: ..." strings). Called as soon
        as a batch's prompts are asked for: each text arrives in turn (`Prompt`)."""
        ...

    async def rlm_query(self, prompt: str, context: NestedContext) -> str:
        """A nested run on `context`: none, a text, or a list of {"role", "content"} messages (the code's
        other JSON data arrives as its JSON text); never raises."""
        ...


@dataclass(frozen=True)
class FinalAnswer:
    text: str  # str() of the value
    variable: str | None  # set when it came from FINAL_VAR


@dataclass(frozen=True)
class ProcessUsage:
    cpu_s: float
    peak_rss_bytes: int


@dataclass(frozen=True)
class ExecResult:
    """What running one block did.

    outcome: "ok"; "error", an exception in the code (compile and policy errors included); "timeout", the
    per-block CPU timer stopped the code and the worker lives on; "killed", the worker died (memory, a
    swallowed timeout ended by SIGXCPU, the run's CPU budget, the wall-clock watchdog, a crash, a malformed
    message) and was replaced. worker_restarted is set with "killed", and also on the first block after a
    cancelled execute, which runs in a fresh worker; either way all variables are lost and the output
    says so.
    """

    outcome: Outcome
    output: str  # printed output, then the error text if any, truncated with a marker
    final: FinalAnswer | None  # the last successful FINAL / FINAL_VAR of the block
    duration_s: float  # wall time of execute()
    worker_restarted: bool  # a fresh worker with the same context is loaded
    coverage: float  # fraction of the context's characters the code has read so far in this session
    cpu_s: float | None = None  # the worker's CPU time for this block; None when the worker died
    peak_rss_bytes: int | None = None  # the worker's peak resident memory so far (context included)


class SandboxUnavailableError(RuntimeError):
    """A worker process could not be started or could not load the context."""
