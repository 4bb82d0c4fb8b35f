"""The worker process: imports everything, isolates itself, loads one context, then runs blocks.

Started by the parent as `python -I -c <boot> <dir holding the sandbox package>` with an empty environment.
It talks to the parent over stdin (fd 0) and a copy of its original stdout; fd 1 is pointed at stderr,
a pipe the parent drains and bounds, so that nothing printed by accident can corrupt a frame or reach the
proxy's own output. Python-level writers (sys.stdout, sys.stderr, warnings, ignored exceptions) write
nothing at all; only the interpreter's fatal-error report (faulthandler) reaches that pipe. Its limits,
once the context is loaded, are irreversible: address space, CPU per run and per block, no file writes,
no new file descriptors. Before it says it is ready it drops root (or enters a user namespace) and its
network, and installs a seccomp filter (sandbox/syscall_filter.py), tightened once the context is loaded.
"""

from __future__ import annotations

import codecs
import ctypes
import datetime
import encodings
import faulthandler
import hashlib
import io
import json
import math
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from sandbox.coverage import track_context
from sandbox.framing import BlockingChannel
from sandbox.limits import BlockTimer, address_space_bytes, apply_process_limits, cpu_seconds
from sandbox.policy import guard_stdlib_formatting
from sandbox.protocol import ProtocolError
from sandbox.repl import Repl
from sandbox.syscall_filter import forbid_opening_files, install_start_filter, load_library

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534
WORKER_NICENESS = 5
MIB = 2**20
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
HEAP_REUSE_BYTES = 32 * MIB  # glibc's largest mmap threshold on 64-bit
CONTEXT_HEADROOM = 2  # the address space allows this many more copies of the context (lower(), split(), ...)
CODECS = ("ascii", "latin-1", "utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "cp1252",
          "cp1250", "cp1251", "cp437", "iso8859-2", "iso8859-15", "koi8-r", "mac-roman", "unicode_escape",
          "raw_unicode_escape", "idna", "punycode", "hex", "base64", "rot13")
HOST_PATH_MARK = "<python>"


def main() -> None:
    # Below the server's priority for life: booting a replacement worker, or model code spinning, must not
    # take CPU from the event loop that serves every other request.
    os.nice(WORKER_NICENESS)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a dying parent takes its workers along
    _keep_freed_memory(libc)
    parent = os.getppid()
    warnings.simplefilter("ignore")  # user code's SyntaxWarnings must not reach the server's log
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    # A crash's report (with the block's line) goes to fd 2, which the parent reads; nothing else does.
    faulthandler.enable(all_threads=False)
    sys.stdout = sys.stderr = _Sink()
    channel = BlockingChannel(0, protocol_fd)
    _warm_lazy_imports()
    guard_stdlib_formatting()
    redact = _host_path_redactor()
    seccomp = load_library()
    namespaces = _isolate(libc, parent)
    filtered = seccomp is not None and install_start_filter(seccomp)
    os.environ.clear()
    try:
        channel.send({"op": "ready", "namespaces": namespaces, "seccomp": filtered})
        _serve(channel, keep_fds=protocol_fd + 1, redact=redact, seccomp=seccomp if filtered else None)
    except (EOFError, BrokenPipeError):
        pass  # the parent is gone or closed the session


def _keep_freed_memory(libc: ctypes.CDLL) -> None:
    """A worker serves one run and gives all its memory back when it exits: blocks it frees stay in its
    heap for its next allocations, instead of going back to the system and faulting in again (cutting a
    10 MB context into prompts and sending them: about 5-10 ms less here, and steadier). glibc only."""
    if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_REUSE_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * HEAP_REUSE_BYTES)


class _Sink(io.TextIOBase):
    """sys.stdout and sys.stderr: host code that prints on the sandbox's behalf (re.DEBUG's dump, a
    warning) writes nowhere."""

    def write(self, text: str) -> int:
        return len(text)


def _serve(channel: BlockingChannel, keep_fds: int, redact: Callable[[str], str], seccomp: Any) -> None:
    load = channel.receive()
    if load.get("op") != "load":
        raise ProtocolError("expected a load message")
    limits = load["limits"]
    context, received = _receive_context(channel, load["kind"])
    tracked, coverage = track_context(context)
    del context
    for start, end in load["reads"]:
        coverage.mark(start, end)
    cpu_limit_s = math.ceil(cpu_seconds() + limits["cpu_s_per_run"])
    timer = BlockTimer(limits["cpu_s_per_block"], cpu_limit_s)
    memory = address_space_bytes() + limits["memory_mb"] * MIB + CONTEXT_HEADROOM * received
    apply_process_limits(memory, cpu_limit_s, keep_fds)
    if seccomp is not None:
        forbid_opening_files(seccomp)

    def exchange(request: dict[str, Any], texts: Sequence[str | bytes]) -> dict[str, Any]:
        with timer.host_busy():
            channel.send(request)
            while (message := channel.receive()).get("op") == "send":
                for index in message["take"]:  # encoded one at a time: never a second copy of the batch
                    text = texts[index]
                    channel.send_raw(text if isinstance(text, bytes) else text.encode("utf-8"))
        if message.get("op") != "answer":
            raise ProtocolError("expected an answer")
        return message

    repl = Repl(tracked, coverage, limits["max_output_chars"], exchange, timer, redact)
    del tracked
    sys.unraisablehook = repl.note_ignored_exception
    channel.send({"op": "loaded", "coverage": coverage.fraction()})
    while True:
        message = channel.receive()
        if message.get("op") == "exec":
            result = repl.run(message["code"])
            try:
                channel.send(result)
            except (MemoryError, ValueError, TypeError) as failed:  # e.g. no memory left to encode it
                del result
                channel.send(repl.failed_result(failed))
        elif message.get("op") == "var":
            channel.send(repl.variable(message["name"]))
        else:
            raise ProtocolError(f"unexpected message {message.get('op')!r}")


def _receive_context(channel: BlockingChannel, kind: str) -> tuple[Any, int]:
    """The context from the raw frames following `load`, and how many bytes they held. A str arrives in
    pieces cut at character boundaries, decoded as they come; JSON is parsed once complete."""
    pieces: list[Any] = []
    received = 0
    while chunk := channel.receive_raw():
        received += len(chunk)
        pieces.append(chunk.decode("utf-8", "surrogatepass") if kind == "str" else chunk)
    if kind == "str":
        return "".join(pieces), received
    data = b"".join(pieces)
    del pieces
    try:
        return orjson.loads(data), received
    except orjson.JSONDecodeError:  # e.g. lone surrogates, which the parent escapes with the stdlib
        return json.loads(data), received


def _warm_lazy_imports() -> None:
    """Run what imports or reads files lazily, while files can still be opened."""
    import _strptime  # noqa: F401 - datetime.strptime imports it on first use

    datetime.datetime.strptime("2024-01-02 03:04", "%Y-%m-%d %H:%M")
    time.localtime()  # reads the local timezone once
    for name in sorted(hashlib.algorithms_guaranteed):  # OpenSSL loads its providers on first use
        hashlib.new(name, b"")
    hashlib.pbkdf2_hmac("sha256", b"", b"", 1)
    for name in CODECS:
        codecs.lookup(name)
    # Any other codec would be imported on first use, which fails once no file can be opened, with an
    # OSError naming the installation's directory: it is an unknown encoding instead.
    codecs.unregister(encodings.search_function)
    codecs.register(_warmed_codecs_only)


def _warmed_codecs_only(name: str) -> codecs.CodecInfo | None:
    try:
        return encodings.search_function(name)
    except OSError:
        return None


def _host_path_redactor() -> Callable[[str], str]:
    """Replaces the paths of the Python installation and of this package in text shown to the model (a
    codec lookup or an import error can name them) with a neutral mark."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, package_dir,
             os.path.dirname(sys.executable), *sys.path}
    paths |= {os.path.realpath(path) for path in paths if path}
    # Two components at least: "/usr" alone is too common in documents to be worth redacting.
    candidates = {path.rstrip("/") for path in paths if path.startswith("/") and path.count("/") >= 2}
    alternatives = "|".join(re.escape(path) for path in sorted(candidates, key=len, reverse=True))
    pattern = re.compile(f"(?:{alternatives})(?![\\w.-])")
    return lambda text: pattern.sub(HOST_PATH_MARK, text) if "/" in text else text


def _isolate(libc: ctypes.CDLL, parent: int) -> bool:
    """Best-effort isolation on top of the rlimits: no network namespace, no root, no privilege gain.
    True when the network namespace (and, as root, the change to nobody) took effect."""
    if os.geteuid() == 0:
        isolated = libc.unshare(CLONE_NEWNET) == 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except OSError:
            isolated = False
    else:
        isolated = libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a change of user clears it
    if os.getppid() != parent:
        os._exit(0)
    return isolated

