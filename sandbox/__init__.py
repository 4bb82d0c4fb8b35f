"""The sandboxed Python REPL of the RLM loop: code written by a model runs in a separate, limited worker
process per run, under a RestrictedPython policy, with `context` loaded and llm_query bridged out.

    pool = SandboxPool(SandboxLimits(), PoolLimits(warm_workers=2, max_workers=32))
    await pool.start()
    session = await pool.session(context)
    try:
        result = await session.execute(code, handler)   # handler: a CallHandler making the model calls
    finally:
        await session.close()
"""

from sandbox.interface import (
    ALLOWED_MODULES,
    MIB,
    CallHandler,
    ExecResult,
    FinalAnswer,
    NestedContext,
    Outcome,
    PoolLimits,
    Prompt,
    SandboxLimits,
    SandboxUnavailableError,
    WorkerUser,
)
from sandbox.pool import SandboxPool
from sandbox.session import SandboxSession

__all__ = [
    "ALLOWED_MODULES",
    "MIB",
    "CallHandler",
    "ExecResult",
    "FinalAnswer",
    "NestedContext",
    "Outcome",
    "PoolLimits",
    "Prompt",
    "SandboxLimits",
    "SandboxPool",
    "SandboxSession",
    "SandboxUnavailableError",
    "WorkerUser",
]
