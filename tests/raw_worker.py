"""Test-only worker: the production worker's start-up and hardening (sandbox.worker.main, unchanged), but
its blocks run as raw, unrestricted Python, as if the model's code had got past RestrictedPython.

Run only by tests, as a script after the worker's usual boot (see `command`): nothing in the proxy's
configuration, API or environment can start it. With --no-seccomp, libseccomp's binding cannot be imported,
as on a host without libseccomp: the worker stands behind its rlimits and namespaces only.
"""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from types import CodeType
from typing import Any

PROTOCOL_FUNCTIONS = ("llm_query", "llm_query_batched", "rlm_query", "FINAL", "FINAL_VAR", "SHOW_VARS")


def command(seccomp: bool = True) -> tuple[str, ...]:
    """The command starting this worker, booted like a production one (sandbox.bridge.BOOT_PACKAGE)."""
    from sandbox.bridge import BOOT_PACKAGE, PACKAGE_DIR

    run_script = "import runpy; runpy.run_path(sys.argv[2], run_name='__main__')"
    flags = () if seccomp else ("--no-seccomp",)
    return (sys.executable, "-I", "-c", BOOT_PACKAGE + run_script, PACKAGE_DIR, str(Path(__file__)), *flags)


def _raw_compile(code: str, filename: str) -> CodeType:
    return compile(code, filename, "exec")


def _start() -> None:
    import sandbox.repl
    import sandbox.worker

    class RawRepl(sandbox.repl.Repl):
        """The REPL with the real builtins (open, __import__, ...) next to the protocol functions."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            protocol = {name: self._builtins[name] for name in PROTOCOL_FUNCTIONS}
            self._globals["__builtins__"] = {**vars(builtins), **protocol}

    if "--no-seccomp" in sys.argv:
        sys.modules["pyseccomp"] = None  # type: ignore[assignment]  # `import pyseccomp` fails
    sandbox.repl.compile_block = _raw_compile  # type: ignore[assignment]
    sandbox.worker.Repl = RawRepl  # type: ignore[misc]
    sandbox.worker.main()


if __name__ == "__main__":
    _start()
