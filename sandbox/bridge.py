"""The parent's end of one worker process: spawning it, sending the context once, running a block while
answering its llm_query / rlm_query requests through the CallHandler, the wall-clock watchdog, killing.

Nothing from the worker is trusted: frames are size-checked JSON validated message by message, texts are
read only when the parent has agreed to their announced size (sandbox/transfer.py), and any violation,
like any death, ends in WorkerDied with a cause written for the model. The worker's stderr is a pipe only
the parent reads, keeping a short tail for diagnosing crashes: nothing a worker writes reaches the proxy's
own output.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

try:
    from uvloop import Loop as _UVLOOP
except ImportError:  # the standard library's loop: its pipe transports close the file object only
    _UVLOOP = None  # type: ignore[assignment,misc]

from sandbox.framing import FrameError, encode, raw_frame, read_frame, read_message
from sandbox.interface import (
    CallHandler,
    Isolation,
    ProcessUsage,
    Prompt,
    SandboxLimits,
    SandboxUnavailableError,
    WorkerUser,
)
from sandbox.protocol import (
    BlockDone,
    LlmRequest,
    Loaded,
    ProtocolError,
    Ready,
    RlmRequest,
    VariableValue,
    WorkerMessage,
    parse_worker_message,
)
from sandbox.transfer import Transfers

T = TypeVar("T")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
logger = logging.getLogger(__name__)

PACKAGE_DIR = str(Path(__file__).resolve().parent)
# -I leaves the cwd off sys.path, so the package is found from its directory, given explicitly. It is
# registered as a bare package: its __init__ (the parent's side: asyncio, the pool) would only slow the
# worker's start. Tests and benchmarks put their own code between the two (never the configuration).
BOOT_PACKAGE = ("import sys, types; package = types.ModuleType('sandbox'); package.__path__ = [sys.argv[1]]; "
                "sys.modules['sandbox'] = package; ")
BOOT = BOOT_PACKAGE + "from sandbox.worker import main; main()"
WORKER_COMMAND = (sys.executable, "-I", "-c", BOOT, PACKAGE_DIR)
READY_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 120.0
EXIT_WAIT_S = 5.0
PIPE_BYTES = 2**20  # a larger pipe buffer moves a big context in fewer wake-ups
CHUNK_CHARS = 2**20  # a str context is sent in pieces of this many characters
CHUNK_BYTES = 2**20
STREAM_LIMIT = 2**20
STDERR_TAIL_BYTES = 4096  # of a worker's stderr, only this much is kept (to explain a crash)
LOGGED_TAIL_CHARS = 1000
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}
# faulthandler's report of where the interpreter crashed, most recent call first.
SUBCALL_FAILED = "Error: the sub-model call failed inside the proxy"
CRASH_FRAME = re.compile(r'File "(<block \d+>)", line (\d+)')


class WorkerDied(Exception):
    """The worker is gone (or was killed for misbehaving); `cause` says why, for the model."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class StderrTail(asyncio.Protocol):
    """Reads a worker's stderr (its fds 1 and 2) as it comes, keeping only the last few kilobytes."""

    def __init__(self) -> None:
        self._tail = bytearray()

    def data_received(self, data: bytes) -> None:
        self._tail += data
        if len(self._tail) > STDERR_TAIL_BYTES:
            del self._tail[:-STDERR_TAIL_BYTES]

    def text(self) -> str:
        return self._tail.decode("utf-8", "replace")


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[bytes], stdin: asyncio.StreamWriter,
                 stdout: asyncio.StreamReader, stderr: StderrTail, pipes: list[asyncio.BaseTransport],
                 exited: asyncio.Future[int]) -> None:
        self._process = process
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._pipes = pipes  # the read transports, closed with the worker
        self._exited = exited
        self._limits = SandboxLimits()
        self._kill_cause: str | None = None  # why the parent killed it, when it did
        self._wall_left = 0.0  # of the running block's wall-clock allowance
        self.isolation: Isolation = "rlimits only"  # as the worker reported when it was ready

    @classmethod
    async def spawn(cls, command: Sequence[str] = WORKER_COMMAND, user: WorkerUser | None = None
                    ) -> WorkerProcess:
        """A started worker that has imported everything and waits for a context."""
        worker = await cls.start(command, user)
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                message = await worker._receive()
            if not isinstance(message, Ready):
                raise WorkerDied("it did not start properly")
            worker.isolation = message.isolation
        except (TimeoutError, WorkerDied) as error:
            await worker.close()
            raise SandboxUnavailableError(f"a sandbox worker failed to start: {error}") from None
        except BaseException:  # cancelled: still reap it, so no process or transport outlives the loop
            await worker.close()
            raise
        return worker

    @classmethod
    async def start(cls, command: Sequence[str], user: WorkerUser | None = None) -> WorkerProcess:
        """The process, its pipes on the event loop. Popen (vfork, well under a millisecond) rather than
        the loop's own subprocess support: uvloop forks, which copies the whole proxy's page tables and
        stalls every request for tens of milliseconds when the proxy is large. (Under another `user`,
        Popen forks instead: vfork cannot change the child's ids.)"""
        ids: dict[str, Any] = {} if user is None else {"user": user.uid, "group": user.gid,
                                                       "extra_groups": []}
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # noqa: ASYNC220
                                       stderr=subprocess.PIPE, env={}, cwd="/", start_new_session=True,
                                       close_fds=True, **ids)
        except OSError as error:
            raise SandboxUnavailableError(f"cannot start a sandbox worker: {error}") from None
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        loop = asyncio.get_running_loop()
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(process.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            stdout = asyncio.StreamReader(limit=STREAM_LIMIT)
            out_pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout),
                                                       _pipe_for(loop, process.stdout))
            stderr = StderrTail()
            err_pipe, _ = await loop.connect_read_pipe(lambda: stderr, _pipe_for(loop, process.stderr))
            in_pipe, flow = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                          _pipe_for(loop, process.stdin))
        except BaseException:
            process.kill()
            process.wait()
            raise
        stdin = asyncio.StreamWriter(in_pipe, flow, None, loop)  # type: ignore[arg-type]
        return cls(process, stdin, stdout, stderr, [out_pipe, err_pipe], _watch_exit(loop, process))

    @property
    def pid(self) -> int:
        return self._process.pid

    def usage(self) -> ProcessUsage | None:
        """Its CPU time and peak resident memory so far, read by the parent (the worker cannot misreport
        them); None once it is gone."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_bytes()
            status = Path(f"/proc/{self.pid}/status").read_bytes()
        except OSError:
            return None
        # Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
        fields = stat.rsplit(b")", 1)[1].split()
        peak = re.search(rb"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return ProcessUsage(cpu_s=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
                            peak_rss_bytes=int(peak.group(1)) * 1024 if peak else 0)

    @property
    def alive(self) -> bool:
        return not self._exited.done() and self._kill_cause is None

    async def load(self, context: str | list[dict[str, Any]], limits: SandboxLimits,
                   reads: list[tuple[int, int]]) -> float:
        """Sends the context (once, as raw UTF-8 pieces) and the limits; returns the initial coverage."""
        self._limits = limits
        kind = "str" if isinstance(context, str) else "json"
        await self._send({"op": "load", "kind": kind, "reads": reads,
                          "limits": {"memory_mb": limits.memory_mb, "cpu_s_per_block": limits.cpu_s_per_block,
                                     "cpu_s_per_run": limits.cpu_s_per_run,
                                     "max_output_chars": limits.max_output_chars}})
        if isinstance(context, str):  # encoded piece by piece: the parent never holds a full copy
            for start in range(0, len(context), CHUNK_CHARS):
                piece = context[start:start + CHUNK_CHARS].encode("utf-8", "surrogatepass")
                await self._write(raw_frame(piece))
        else:
            data = memoryview(_json_bytes(context))
            for start in range(0, len(data), CHUNK_BYTES):
                await self._write(raw_frame(data[start:start + CHUNK_BYTES]))  # type: ignore[arg-type]
            del data
        await self._write(raw_frame(b""))
        async with asyncio.timeout(LOAD_TIMEOUT_S):
            message = await self._receive()
        if not isinstance(message, Loaded):
            raise self._kill_for("it did not confirm the context")
        return message.coverage

    async def execute(self, code: str, handler: CallHandler, transfers: Transfers) -> BlockDone:
        """Runs one block. Raises WorkerDied if the worker dies or is killed (watchdog, bad message);
        on cancellation the worker is killed at once, which also abandons any handler call in flight."""
        try:
            await self._send({"op": "exec", "code": code})
            self._wall_left = self._limits.wall_s_per_block  # only time the worker spends computing counts
            while True:
                message = await self._within_wall_time(self._receive())
                if isinstance(message, BlockDone):
                    return message
                if isinstance(message, LlmRequest):
                    results = await self._serve_llm(message, handler, transfers)
                elif isinstance(message, RlmRequest):
                    results = [await self._serve_rlm(message, handler, transfers)]
                else:
                    raise self._kill_for("it sent an unexpected message")
                await self._send({"op": "answer", "results": results})
        except WorkerDied:
            raise
        except BaseException:
            self.kill()
            raise

    async def read_variable(self, name: str) -> VariableValue:
        try:
            await self._send({"op": "var", "name": name})
            async with asyncio.timeout(self._limits.wall_s_per_block):
                message = await self._receive()
        except TimeoutError:
            raise self._kill_for("converting a variable to text took too long") from None
        except BaseException:
            if self.alive:
                self.kill()
            raise
        if not isinstance(message, VariableValue):
            raise self._kill_for("it sent an unexpected message")
        return message

    def kill(self, cause: str = "it was stopped") -> None:
        """SIGKILL, at once. Idempotent."""
        if self._kill_cause is None:
            self._kill_cause = cause
        if not self._exited.done():
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def close(self) -> None:
        """Kills the worker, reaps it and closes its pipes."""
        self.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_WAIT_S):
                await asyncio.shield(self._exited)
        self._stdin.close()
        for pipe in self._pipes:
            pipe.close()

    # Model calls

    async def _serve_llm(self, request: LlmRequest, handler: CallHandler, transfers: Transfers) -> list[str]:
        """Refusals decided from the announced sizes alone; the rest read wave by wave, each wave within
        the pool's shared budget and answered by the models before the next is read."""
        results = _refusals(handler, request.chars, request.model)
        for index, size in enumerate(request.sizes):
            if results[index] is None:
                results[index] = transfers.take(size)
        wanted = [index for index, result in enumerate(results) if result is None]
        loop = asyncio.get_running_loop()
        for wave in transfers.waves(wanted, request.sizes):
            async with transfers.shared.hold(sum(request.sizes[index] for index in wave)):
                await self._send({"op": "send", "take": wave})
                # The models are asked at once, and each call starts as its prompt arrives, while the
                # worker writes the next (a wave of 10 MB takes ~15 ms to read).
                prompts = [Prompt(request.chars[i], loop.create_future()) for i in wave]
                asking = asyncio.ensure_future(_ask_models(handler, prompts, request.model))
                try:
                    for prompt, index in zip(prompts, wave, strict=True):
                        text = await self._read_text(request.chars[index], request.sizes[index])
                        prompt.text.set_result(text)
                except BaseException as error:
                    for prompt in prompts:  # the worker is dead or killed: the rest will not come
                        prompt.text.cancel()
                    try:
                        if not isinstance(error, asyncio.CancelledError):
                            await asyncio.wait([asking])  # the calls that had a prompt end, accounted for
                    finally:
                        asking.cancel()  # (a no-op once it is done)
                    raise
                answers = await asking
                del prompts
            for index, answer in zip(wave, answers, strict=True):
                results[index] = answer
        return [result or "" for result in results]  # (every slot holds a str by now)

    async def _serve_rlm(self, request: RlmRequest, handler: CallHandler, transfers: Transfers) -> str:
        refusal = transfers.take(sum(request.sizes), "nested run's prompt and context")
        if refusal is not None:
            return refusal
        async with transfers.shared.hold(sum(request.sizes)):
            await self._send({"op": "send", "take": list(range(len(request.sizes)))})
            prompt, *texts = [await self._read_text(chars, size)
                              for chars, size in zip(request.chars, request.sizes, strict=True)]
        context: Any = None if request.kind == "none" else texts[0] if request.kind == "text" else [
            {"role": role, "content": content} for role, content in zip(texts[::2], texts[1::2], strict=True)]
        return await _ask_nested(handler, prompt, context)

    async def _read_text(self, chars: int, size: int) -> str:
        frame = await self._within_wall_time(self._read_raw(size))
        try:
            text = frame.decode("utf-8")
        except UnicodeDecodeError as error:
            raise self._kill_for(f"it sent a malformed message (a text not UTF-8: {error.reason})") from None
        if len(text) != chars:
            raise self._kill_for("it sent a malformed message (a text's length is not the one announced)")
        return text

    # Helpers

    def _kill_for(self, cause: str) -> WorkerDied:
        self.kill(cause)
        return WorkerDied(cause)

    async def _within_wall_time(self, reading: Awaitable[T]) -> T:
        """Waits for the worker within what is left of the block's wall-clock allowance."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._wall_left):
                return await reading
        except TimeoutError:
            raise self._kill_for(f"the block ran for more than {self._limits.wall_s_per_block:g} s of "
                                 "wall-clock time (time waiting for llm_query is not counted)") from None
        finally:
            self._wall_left -= time.monotonic() - started

    async def _send(self, message: dict[str, Any]) -> None:
        await self._write(encode(message))

    async def _write(self, parts: list[bytes] | list[memoryview]) -> None:
        try:
            self._stdin.writelines(parts)
            await self._stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise WorkerDied(await self._exit_cause()) from None

    async def _receive(self) -> WorkerMessage:
        message = await self._read(read_message(self._stdout))
        try:
            return parse_worker_message(message, self._limits.max_output_chars)
        except ProtocolError as error:
            raise self._kill_for(f"it sent a malformed message ({error})") from None

    async def _read_raw(self, size: int) -> bytearray:
        return await self._read(read_frame(self._stdout, expected=size))

    async def _read(self, reading: Awaitable[T]) -> T:
        """What the worker sends next; a closed pipe or a malformed frame means WorkerDied."""
        try:
            return await reading
        except (asyncio.IncompleteReadError, ConnectionResetError):
            raise WorkerDied(await self._exit_cause()) from None
        except FrameError as error:
            raise self._kill_for(f"it sent a malformed message ({error})") from None

    async def _exit_cause(self) -> str:
        try:
            async with asyncio.timeout(EXIT_WAIT_S):
                code = await asyncio.shield(self._exited)
        except TimeoutError:
            self.kill("it stopped responding")
            code = await asyncio.shield(self._exited)
        if self._kill_cause is not None:
            return self._kill_cause
        if -code in CRASH_SIGNALS:
            logger.warning("sandbox worker %d crashed (%s); the end of its stderr: %s", self.pid,
                           _signal_name(-code), ascii(self._stderr.text()[-LOGGED_TAIL_CHARS:]))
        return describe_exit(code, self._limits, self._stderr.text())


def describe_exit(code: int, limits: SandboxLimits, stderr: str = "") -> str:
    """Why a worker that the parent did not kill ended, from its exit status (and its crash report)."""
    if code == -signal.SIGXCPU:
        return (f"it used more than its CPU time allowance ({limits.cpu_s_per_block:g} s per block, "
                f"{limits.cpu_s_per_run:g} s per run)")
    if code == -signal.SIGKILL:
        return "it was killed by the system (most likely for using too much memory or CPU time)"
    if code == -signal.SIGSYS:  # the seccomp filter's answer to a call through another ABI
        return "it made a system call that the sandbox forbids"
    if -code in CRASH_SIGNALS:
        where = CRASH_FRAME.search(stderr)
        at = f" at {where.group(1)}, line {where.group(2)}" if where else ""
        return (f"the code crashed the Python interpreter ({_signal_name(-code)}){at}. Extremely deep "
                "nesting does this: hashing, comparing or converting a structure nested hundreds of "
                "thousands of levels deep, or a chain of that many iterators; keep structures shallow")
    if code < 0:
        return f"it was ended by signal {_signal_name(-code)}"
    return f"it exited unexpectedly (status {code}); running out of memory can cause this"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _pipe_for(loop: asyncio.AbstractEventLoop, file: IO[bytes]) -> IO[bytes]:
    """`file`'s pipe as a file object for the loop's transport, closed once whatever the loop.

    uvloop's pipe transports close the descriptor they are given and also close the file object it came in
    (uvloop issue #763), and when the garbage collector takes a transport, the two closes are apart: in
    between, the number can be handed to a new descriptor (a new worker's pipe, a socket), which the
    second close then closes. The proxy saw it as EBADF from Popen when a collection ran in another
    thread. So under uvloop the transport gets a file object that does not own the descriptor."""
    owned = _UVLOOP is None or not isinstance(loop, _UVLOOP)
    descriptor = os.dup(file.fileno())
    mode = "wb" if file.writable() else "rb"
    file.close()
    return open(descriptor, mode, buffering=0, closefd=owned)  # the transport closes it


def _watch_exit(loop: asyncio.AbstractEventLoop, process: subprocess.Popen[bytes]) -> asyncio.Future[int]:
    """A future of the exit status, set (and the process reaped) as soon as the process ends."""
    exited: asyncio.Future[int] = loop.create_future()
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd (an old kernel): a thread waits instead
        waiting = asyncio.ensure_future(asyncio.to_thread(process.wait))
        waiting.add_done_callback(lambda done: exited.done() or exited.set_result(done.result()))
        return exited

    def reap() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not exited.done():
            exited.set_result(process.wait())

    loop.add_reader(pidfd, reap)
    return exited


def _json_bytes(context: list[dict[str, Any]]) -> bytes:
    try:
        return orjson.dumps(context)
    except orjson.JSONEncodeError:  # lone surrogates: the stdlib escapes them
        return json.dumps(context).encode()


def _refusals(handler: CallHandler, chars: list[int], model: str | None) -> list[str | None]:
    try:
        refusals = handler.prompt_refusals(chars, model)
        if isinstance(refusals, list) and len(refusals) == len(chars):
            return refusals
        logger.error("the sandbox call handler returned %r for %d prompts", type(refusals), len(chars))
    except Exception:
        logger.exception("the sandbox call handler raised from prompt_refusals")
    return [SUBCALL_FAILED] * len(chars)


async def _ask_models(handler: CallHandler, prompts: list[Prompt], model: str | None) -> list[str]:
    count = len(prompts)
    try:
        answers = await handler.llm_query(prompts, model)
    except Exception:
        logger.exception("the sandbox call handler raised from llm_query")
        return [SUBCALL_FAILED] * count
    if not (isinstance(answers, list) and len(answers) == count and all(isinstance(a, str) for a in answers)):
        logger.error("the sandbox call handler returned %r answers for %d prompts", type(answers), count)
        return ["Error: the sub-model call returned no usable answer"] * count
    return answers


async def _ask_nested(handler: CallHandler, prompt: str, context: Any) -> str:
    try:
        answer = await handler.rlm_query(prompt, context)
    except Exception:
        logger.exception("the sandbox call handler raised from rlm_query")
        return "Error: the nested run failed inside the proxy"
    return answer if isinstance(answer, str) else "Error: the nested run returned no usable answer"
