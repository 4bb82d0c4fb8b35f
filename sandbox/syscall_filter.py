"""The worker's seccomp-bpf filter: the system calls that code escaping RestrictedPython would need to reach
anything outside the worker fail with EPERM, for the rest of the worker's life.

Default-allow with a deny list, not default-deny with an allow list. What CPython and glibc call to run
ordinary code (memory, futexes, signals, timers, rlimits, clocks, getrandom, reads and writes on the pipes)
differs between their versions and the kernel's, and an allow list missing one call turns into rare, hard
to explain failures of legitimate code. What the worker must never do is a short, stable list: create a
process or run a program, touch the network, open, create or change a file, reach another process (signals,
ptrace, its memory, its file descriptors), gain or change privileges or namespaces, and use the kernel
interfaces behind most privilege escalations (bpf, io_uring, keyrings, perf, userfaultfd, modules). The
rlimits (no new file descriptors, no processes) and the namespaces stay underneath as further walls.

libseccomp makes the filter check the architecture: a call made through another ABI (32-bit int 0x80,
x32) kills the worker instead of slipping past rules written for native numbers.

Two stages: the first is loaded at start-up, before the worker says it is ready; the second, which also
refuses opening files for reading, once the context is loaded (loading reads /proc/self/statm). No code
from a model runs before both are in place.
"""

from __future__ import annotations

import errno
import os
from types import ModuleType
from typing import Any

CLONE_THREAD = 0x00010000
WRITE_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC)  # open(2) flags that create or change a file

DENIED = (
    # processes and programs (threads, clone with CLONE_THREAD, stay possible: RLIMIT_NPROC refuses them)
    "fork", "vfork", "execve", "execveat",
    # the network, and sockets of any kind (an AF_UNIX socket could receive file descriptors)
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # other processes: debugging, their memory, their descriptors, their signals
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "kill", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "process_madvise",
    "move_pages", "migrate_pages", "set_mempolicy_home_node", "setpriority", "sched_setaffinity",
    "sched_setscheduler", "sched_setparam", "sched_setattr", "ioprio_set",
    # changing files and the file system (opening for writing is refused by the rules below)
    "creat", "truncate", "ftruncate", "unlink", "unlinkat", "rename", "renameat", "renameat2", "link",
    "linkat", "symlink", "symlinkat", "mkdir", "mkdirat", "rmdir", "mknod", "mknodat", "chmod", "fchmod",
    "fchmodat", "chown", "fchown", "lchown", "fchownat", "utime", "utimes", "utimensat", "futimesat",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "fallocate",
    "open_by_handle_at", "name_to_handle_at", "openat2", "memfd_create", "memfd_secret", "fanotify_init",
    "inotify_init", "inotify_init1", "chroot", "pivot_root", "acct", "swapon", "swapoff", "quotactl",
    "quotactl_fd",
    # mounts and namespaces
    "mount", "umount2", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr", "unshare", "setns",
    # identities and privileges
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
    "setgroups", "capset", "personality", "landlock_create_ruleset", "landlock_add_rule",
    "landlock_restrict_self",
    # shared memory and message queues shared with other processes
    "shmget", "shmat", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
    "semctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # kernel interfaces behind most privilege escalations, and the machine's own settings
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "syslog", "iopl", "ioperm", "sethostname", "setdomainname",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "vhangup", "lookup_dcookie",
)
OPENING = ("open", "openat")  # refused outright in the second stage
# prctl options that would let another process trace the worker or let it outlive its parent.
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_PTRACER = 1, 4, 0x59616D61


def load_library() -> ModuleType | None:
    """libseccomp's binding, or None where it is missing. Call while processes can still be started (the
    binding runs ldconfig to find the library)."""
    try:
        import pyseccomp  # ctypes over libseccomp.so.2
    except (ImportError, OSError, RuntimeError):
        return None
    return pyseccomp


def install_start_filter(seccomp: Any) -> bool:
    """Loads the first stage; False when the kernel refuses it (built without seccomp, or a container
    runtime forbidding it), in which case the worker runs behind its rlimits and namespaces only."""
    rules = _Rules(seccomp)
    for name in DENIED:
        rules.deny(name)
    # clone3 passes its flags in memory the filter cannot read: ENOSYS makes glibc fall back to clone.
    rules.deny("clone3", error=errno.ENOSYS)
    rules.deny("clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))  # a process, not a thread
    rules.deny("tgkill", seccomp.Arg(0, seccomp.NE, os.getpid()))  # raise() on itself still works
    rules.deny("prlimit64", seccomp.Arg(0, seccomp.NE, 0))  # its own limits (pid 0) only
    for option in (PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_PTRACER):
        rules.deny("prctl", seccomp.Arg(0, seccomp.EQ, option))
    for flag in WRITE_FLAGS:
        rules.deny("open", seccomp.Arg(1, seccomp.MASKED_EQ, flag, flag))
        rules.deny("openat", seccomp.Arg(2, seccomp.MASKED_EQ, flag, flag))
    try:
        rules.load()
    except OSError:
        return False
    return True


def forbid_opening_files(seccomp: Any) -> None:
    """The second stage: no file can be opened any more, not even for reading. Raises OSError if the
    kernel refuses the filter (it accepted the first: practically never), so the worker fails closed."""
    rules = _Rules(seccomp)
    for name in OPENING:
        rules.deny(name)
    rules.load()


class _Rules:
    """A default-allow filter being built; denied calls fail with EPERM unless told otherwise."""

    def __init__(self, seccomp: Any) -> None:
        self._seccomp = seccomp
        self._filter = seccomp.SyscallFilter(seccomp.ALLOW)

    def deny(self, name: str, *conditions: Any, error: int = errno.EPERM) -> None:
        """Denies `name` (when all `conditions`, pyseccomp.Arg comparisons of its arguments, hold)."""
        seccomp = self._seccomp
        number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
        if number == -1:  # unknown to this libseccomp (older than the call): the other walls still stand
            return
        self._filter.add_rule(seccomp.ERRNO(error), number, *conditions)

    def load(self) -> None:
        self._filter.load()
