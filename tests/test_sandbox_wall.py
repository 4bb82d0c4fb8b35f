"""The walls behind RestrictedPython, each shown stopping what gets past the wall above it.

A model's code that got past RestrictedPython is simulated by tests/raw_worker.py: a real worker, started
and hardened by the production code, whose blocks run as raw Python. The parent (this process) holds a
secret in its environment and in a world-readable config file, as a proxy holds provider keys:
  - the rlimits alone stop raw code from opening files, sockets and processes;
  - code freeing a descriptor gets past them; the namespaces and the change of user then keep it from the
    network, the parent's environment and memory; but it still reads the config file and the parent's
    command line, creates files, and replaces itself with another program;
  - the seccomp filter stops all of those.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from sandbox import ExecResult, PoolLimits, SandboxLimits, SandboxPool
from sandbox.bridge import PACKAGE_DIR
from sandbox.interface import WorkerUser
from tests import raw_worker
from tests.test_sandbox_limits import Handler, proc_file

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = SandboxLimits(memory_mb=256, cpu_s_per_block=5, wall_s_per_block=20, max_output_chars=4000)
SECRET = "sk-wall-canary-7f3a9c"
AS_ROOT = os.geteuid() == 0
OTHER_UID = 54321  # a user id with no account: nothing on the machine is its own
# Raw code's tools: libc through ctypes (imported by the worker itself), errno names for results.
PRELUDE = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    return 'ok' if getattr(libc, name)(*args) != -1 else errno.errorcode[ctypes.get_errno()]
"""
FREE_A_DESCRIPTOR = "os.close(1)\n"  # fd 1 is a copy of stderr: closing it gets under RLIMIT_NOFILE


@pytest.fixture(scope="module")
def secrets() -> Iterator[Path]:
    """The parent's secret in its environment and in a config file readable by anyone (as a Kubernetes
    Secret volume is by default), in a directory anyone may enter."""
    folder = Path(tempfile.mkdtemp(prefix="rlm-wall-"))
    folder.chmod(0o755)
    config = folder / "config.yaml"
    config.write_text(f"model_list:\n- model_name: m\n  litellm_params: {{api_key: {SECRET}}}\n")
    config.chmod(0o644)
    os.environ["RLM_WALL_PROVIDER_KEY"] = SECRET
    yield config
    del os.environ["RLM_WALL_PROVIDER_KEY"]
    shutil.rmtree(folder)


@contextlib.asynccontextmanager
async def raw_workers(seccomp: bool, warm_workers: int = 1) -> AsyncIterator[SandboxPool]:
    pool = SandboxPool(LIMITS, PoolLimits(warm_workers=warm_workers), command=raw_worker.command(seccomp))
    await pool.start()
    try:
        yield pool
    finally:
        await pool.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def filtered(secrets: Path) -> AsyncIterator[SandboxPool]:
    """Raw code in workers with every wall, seccomp included."""
    async with raw_workers(seccomp=True) as pool:
        yield pool


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def unfiltered(secrets: Path) -> AsyncIterator[SandboxPool]:
    """Raw code in workers on a host without libseccomp: rlimits, namespaces and the change of user."""
    async with raw_workers(seccomp=False) as pool:
        yield pool


async def run(pool: SandboxPool, code: str) -> ExecResult:
    """Runs `code` (after PRELUDE) in a fresh session; the secret must never be in what comes back."""
    session = await pool.session("context")
    try:
        result = await session.execute(PRELUDE + code, Handler())
    finally:
        await session.close()
    assert SECRET not in result.output
    return result


def answer(result: ExecResult) -> str:
    assert result.outcome == "ok", result.output
    assert result.final is not None
    return result.final.text


def refused(result: ExecResult, error: str) -> bool:
    return result.outcome == "error" and error in result.output.splitlines()[-1]


async def test_raw_workers_are_hardened_like_production_ones(filtered: SandboxPool) -> None:
    production = SandboxPool(LIMITS, PoolLimits(warm_workers=0))
    await production.start()
    sessions = [await production.session("context"), await filtered.session("context")]
    try:
        unrestricted = [await session.execute("import os\nFINAL(os.getpid())", Handler())
                        for session in sessions]
        assert unrestricted[0].outcome == "error" and "os" in unrestricted[0].output  # RestrictedPython
        assert answer(unrestricted[1]) == str(sessions[1].pid)  # raw Python
        walls = []
        for session in sessions:
            assert session.pid is not None
            status, limits = proc_file(session.pid, "status"), proc_file(session.pid, "limits")
            walls.append([line for line in (*status.splitlines(), *limits.splitlines()) if line.startswith((
                "Uid:", "Gid:", "Groups:", "NoNewPrivs:", "Seccomp", "Max file size", "Max open files",
                "Max processes", "Max core"))])
            assert os.readlink(f"/proc/{session.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert walls[0] == walls[1]
        assert "Seccomp:\t2" in walls[0] and "Seccomp_filters:\t2" in walls[0]  # both stages loaded
        assert production.status()["isolation"] == filtered.status()["isolation"] == "seccomp"
    finally:
        for session in sessions:
            await session.close()
        await production.aclose()


async def test_the_rlimits_stop_raw_code_from_opening_anything(unfiltered: SandboxPool) -> None:
    assert refused(await run(unfiltered, "open('/etc/hostname')"), "Too many open files")
    assert answer(await run(unfiltered, "FINAL(call('socket', 2, 1, 0))")) == "EMFILE"
    assert refused(await run(unfiltered, "os.fork()"), "Resource temporarily unavailable")  # RLIMIT_NPROC


@pytest.mark.skipif(not AS_ROOT, reason="the change of user needs a root parent (or sandbox.worker_user)")
async def test_namespaces_and_the_change_of_user_stop_what_gets_past_the_rlimits(
        unfiltered: SandboxPool) -> None:
    parent = f"/proc/{os.getpid()}"
    for name in ("environ", "mem"):
        assert refused(await run(unfiltered, FREE_A_DESCRIPTOR + f"open('{parent}/{name}', 'rb').read()"),
                       "Permission denied")
    assert answer(await run(unfiltered, f"FINAL(call('ptrace', 16, {os.getpid()}, 0, 0))")) == "EPERM"
    assert answer(await run(unfiltered, f"FINAL(call('kill', {os.getpid()}, 0))")) == "EPERM"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        connect = FREE_A_DESCRIPTOR + f"""
fd = libc.socket(2, 1, 0)
address = bytes([2, 0, {port >> 8}, {port & 255}, 127, 0, 0, 1]) + bytes(8)
FINAL((fd, call('connect', fd, address, 16)))
"""
        assert answer(await run(unfiltered, connect)) == "(1, 'ENETUNREACH')"  # a socket, but no network
        with pytest.raises(TimeoutError):
            listener.accept()


async def test_without_seccomp_code_past_the_rlimits_reaches_files_and_programs(
        unfiltered: SandboxPool, secrets: Path) -> None:
    """What the next wall has to stop: this test fails the day the walls above stop these themselves."""
    leaked = await unfiltered.session("context")
    try:
        result = await leaked.execute(PRELUDE + FREE_A_DESCRIPTOR + f"FINAL(open('{secrets}').read())",
                                      Handler())
        assert SECRET in answer(result)
    finally:
        await leaked.close()
    command_line = answer(await run(unfiltered, FREE_A_DESCRIPTOR +
                                    f"FINAL(open('/proc/{os.getpid()}/cmdline', 'rb').read())"))
    assert "pytest" in command_line
    probe = secrets.parent / "created-by-the-worker"
    secrets.parent.chmod(0o777)
    try:
        await run(unfiltered, FREE_A_DESCRIPTOR + f"open('{probe}', 'w')")
        assert probe.exists()
    finally:
        secrets.parent.chmod(0o755)
        probe.unlink(missing_ok=True)
    replaced = await run(unfiltered, "os.execv('/bin/true', ['true'])")  # the worker became another program
    assert replaced.outcome == "killed" and "exited unexpectedly (status 0)" in replaced.output


ESCAPES = {
    "the config file": FREE_A_DESCRIPTOR + "open({config!r}).read()",
    "the parent's environment": FREE_A_DESCRIPTOR + "open('/proc/{parent}/environ', 'rb').read()",
    "the parent's command line": FREE_A_DESCRIPTOR + "open('/proc/{parent}/cmdline', 'rb').read()",
    "the parent's memory": FREE_A_DESCRIPTOR + "open('/proc/{parent}/mem', 'rb').read()",
    "a file to create": FREE_A_DESCRIPTOR + "open({probe!r}, 'w')",
    "a file to delete": "os.unlink({config!r})",
    "a program to run": "os.execv('/bin/true', ['true'])",
    "a process to start": "os.fork()",
}
SYSCALL_ESCAPES = {
    "a socket": "call('socket', 2, 1, 0)",
    "a Unix socket pair": "call('socketpair', 1, 1, 0, (ctypes.c_int * 2)())",
    "tracing the parent": "call('ptrace', 16, {parent}, 0, 0)",
    "reading the parent's memory": "call('process_vm_readv', {parent}, 0, 0, 0, 0, 0)",
    "signalling the parent": "call('kill', {parent}, 0)",
    "signalling a thread of the parent": "call('tgkill', {parent}, {parent}, 0)",
    "a new namespace": "call('unshare', 0x20000)",
    "a mount": "call('mount', b'none', b'/tmp', b'tmpfs', 0, None)",
    "the limits of another process": "call('prlimit', {parent}, 7, None, (ctypes.c_long * 2)())",
    "surviving the parent": "call('prctl', 1, 0, 0, 0, 0)",
    "a memory file": "call('memfd_create', b'x', 0)",
    "io_uring": "syscall('io_uring_setup', 1, (ctypes.c_char * 120)())",
    "bpf": "syscall('bpf', 0, None, 0)",
    "perf events": "syscall('perf_event_open', (ctypes.c_char * 128)(), 0, -1, -1, 0)",
    "userfaultfd": "syscall('userfaultfd', 0)",
    "keyrings": "syscall('keyctl', 0, 0, 0, 0, 0)",
    "a file by handle": "syscall('open_by_handle_at', 0, None, 0)",
    "openat2": "syscall('openat2', -100, b'/etc/hostname', (ctypes.c_uint64 * 3)(), 24)",
    "another process's descriptor": "syscall('pidfd_open', {parent}, 0)",
}
# System calls that glibc has no function for, by their number on this machine (pyseccomp is loaded).
SYSCALL = """
import pyseccomp
def syscall(name, *args):
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    return 'ok' if libc.syscall(number, *args) != -1 else errno.errorcode[ctypes.get_errno()]
"""


def placeholders(secrets: Path) -> dict[str, object]:
    return {"config": str(secrets), "parent": os.getpid(), "probe": str(secrets.parent / "probe")}


def left_alone(secrets: Path) -> bool:
    """The config file is still there, and no file was created beside it."""
    return secrets.exists() and not (secrets.parent / "probe").exists()


@pytest.mark.parametrize("target", list(ESCAPES))
async def test_seccomp_stops_what_gets_past_the_other_walls(filtered: SandboxPool, secrets: Path,
                                                            target: str) -> None:
    result = await run(filtered, ESCAPES[target].format(**placeholders(secrets)))
    assert refused(result, "Operation not permitted"), result.output
    assert left_alone(secrets)


@pytest.mark.parametrize("target", list(SYSCALL_ESCAPES))
async def test_seccomp_refuses_the_system_calls_of_an_escape(filtered: SandboxPool, secrets: Path,
                                                             target: str) -> None:
    code = FREE_A_DESCRIPTOR + SYSCALL + f"FINAL({SYSCALL_ESCAPES[target].format(**placeholders(secrets))})"
    assert answer(await run(filtered, code)) == "EPERM"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 system calls exist on x86_64 only")
async def test_a_system_call_through_another_abi_kills_the_worker(filtered: SandboxPool,
                                                                  unfiltered: SandboxPool) -> None:
    """x32 numbers (bit 30 set) would slip past rules written for native numbers: the filter kills."""
    x32_getpid = "FINAL(libc.syscall(0x40000000 + 39))"
    answer(await run(unfiltered, x32_getpid))  # without the filter: ENOSYS, or a pid on a kernel with x32
    killed = await run(filtered, x32_getpid)
    assert killed.outcome == "killed" and "a system call that the sandbox forbids" in killed.output


async def test_what_the_worker_needs_still_works_under_the_filter(filtered: SandboxPool) -> None:
    code = """
import signal
signal.raise_signal(signal.SIGWINCH)  # a signal to itself (ignored by default)
FINAL((len(os.urandom(16)), os.getpid() > 0, call('getrlimit', 7, (ctypes.c_long * 2)())))
"""
    assert answer(await run(filtered, code)) == "(16, True, 'ok')"


async def test_the_worker_sees_no_inherited_descriptors(filtered: SandboxPool, secrets: Path) -> None:
    held = os.open(secrets, os.O_RDONLY)  # an inheritable descriptor of the parent's, open while spawning
    os.set_inheritable(held, True)
    try:
        async with raw_workers(seccomp=True) as fresh:
            code = """
import stat
def kind(fd):
    try:
        return 'pipe' if stat.S_ISFIFO(os.fstat(fd).st_mode) else 'other'
    except OSError:
        return None
FINAL({fd: kind(fd) for fd in range(1024) if kind(fd)})
"""
            assert answer(await run(fresh, code)) == "{0: 'pipe', 1: 'pipe', 2: 'pipe', 3: 'pipe'}"
    finally:
        os.close(held)


async def test_without_seccomp_the_worker_starts_and_the_pool_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sandbox.pool")
    async with raw_workers(seccomp=False, warm_workers=2) as pool:
        session = await pool.session("context")
        assert answer(await session.execute("FINAL(1 + 1)", Handler())) == "2"
        await session.close()
        assert pool.status()["isolation"] == "namespaces"
        assert pool.status()["usable"] is True
    warnings = [record for record in caplog.records if "without a seccomp filter" in record.getMessage()]
    assert len(warnings) == 1 and "isolation: namespaces" in warnings[0].getMessage()


def interpreter_for_others() -> list[str] | None:
    """A command prefix running Python with this environment's packages that any user can run
    (sys.executable, else the system's python3 of the same version), or None."""
    site_packages = next(path for path in sys.path if path.endswith("site-packages"))

    def reachable(path: str | os.PathLike[str], mode: int) -> bool:
        """Every folder on the way can be entered by others, and `path` has `mode` for them."""
        resolved = Path(path).resolve()
        return (all(folder.stat().st_mode & 0o001 for folder in resolved.parents)
                and resolved.stat().st_mode & mode == mode)

    if not (reachable(site_packages, 0o005) and reachable(PACKAGE_DIR, 0o005)
            and reachable(raw_worker.__file__, 0o004)):
        return None
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for executable in (sys.executable, shutil.which(version) or "", f"/usr/bin/{version}"):
        if executable and reachable(executable, 0o005):
            return [executable, "-I", "-c", f"import sys; sys.path.append({site_packages!r}); "]
    return None


@pytest.mark.skipif(not AS_ROOT, reason="starting workers under another user needs CAP_SETUID/CAP_SETGID")
async def test_workers_started_under_another_user_cannot_read_the_parents_files(secrets: Path) -> None:
    prefix = interpreter_for_others()
    if prefix is None:
        pytest.skip("no Python interpreter with this environment's packages is reachable by another user")
    executable, isolated, flag, boot = prefix
    for seccomp, isolation in ((False, "namespaces"), (True, "seccomp")):
        command = list(raw_worker.command(seccomp))
        command[0:4] = [executable, isolated, flag, boot + command[3]]
        pool = SandboxPool(LIMITS, PoolLimits(warm_workers=0, worker_user=WorkerUser(OTHER_UID, OTHER_UID)),
                           command=command)
        await pool.start()
        os.chmod(secrets, 0o600)
        try:
            session = await pool.session("context")
            assert session.pid is not None
            status = proc_file(session.pid, "status")  # its ids as the machine sees them
            await session.close()
            assert f"\nUid:\t{OTHER_UID}\t{OTHER_UID}\t{OTHER_UID}\t{OTHER_UID}\n" in status
            assert f"\nGid:\t{OTHER_UID}\t{OTHER_UID}\t{OTHER_UID}\t{OTHER_UID}\n" in status
            assert "\nGroups:\t \n" in status  # none: not root's supplementary groups
            assert pool.status()["isolation"] == isolation
            if not seccomp:  # the user's own wall: past the rlimits, refused by the file's owner
                result = await run(pool, FREE_A_DESCRIPTOR + f"open('{secrets}').read()")
                assert refused(result, "Permission denied")
        finally:
            os.chmod(secrets, 0o644)
            await pool.aclose()

