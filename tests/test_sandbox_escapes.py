"""Escape attempts (tests/sandbox_attacks.py), each in a fresh real worker: every one must fail with an
error, leak nothing (no canary secret, no module object, no host path, no file) and leave the sandbox
intact for the next block."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from sandbox import PoolLimits, Prompt, SandboxLimits, SandboxPool
from tests.sandbox_attacks import ATTACKS, CANARY_VARIABLE, PROBE_PATH

pytestmark = pytest.mark.asyncio(loop_scope="module")

CANARY = "canary-3f9c1e7a-do-not-leak"
PROJECT_DIR = str(Path(__file__).resolve().parent.parent)
INTEGRITY_CHECK = ("import re\nprint(re.findall('a', 'banana'), type(context) is str, len(context))\n"
                   "try:\n    getattr((), '__reduce__')\nexcept AttributeError:\n    print('guarded')")


class Handler:
    def prompt_refusals(self, chars: list[int], model: str | None) -> list[str | None]:
        return [None] * len(chars)

    async def llm_query(self, prompts: list[Prompt], model: str | None) -> list[str]:
        return ["sub-model answer"] * len(prompts)

    async def rlm_query(self, prompt: str, context: Any) -> str:
        return "nested answer"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    os.environ[CANARY_VARIABLE] = CANARY  # in the parent's environment when the workers are spawned
    pool = SandboxPool(SandboxLimits(cpu_s_per_block=5, wall_s_per_block=20), PoolLimits(warm_workers=2))
    try:
        await pool.start()
        yield pool
    finally:
        await pool.aclose()
        os.environ.pop(CANARY_VARIABLE, None)


async def test_the_corpus_covers_at_least_forty_attacks() -> None:
    assert len(ATTACKS) >= 40


def probe_file_exists() -> bool:
    return os.path.exists(PROBE_PATH)


@pytest.mark.parametrize("name", ATTACKS)
async def test_attack_fails_and_leaks_nothing(pool: SandboxPool, name: str) -> None:
    assert not probe_file_exists()
    session = await pool.session("the context")
    try:
        result = await session.execute(ATTACKS[name], Handler())
        after = await session.execute(INTEGRITY_CHECK, Handler())
    finally:
        await session.close()
    seen = result.output + (result.final.text if result.final else "")
    assert result.outcome == "error", seen
    assert not any(line.startswith("ESCAPED") for line in seen.splitlines())  # (tracebacks quote the code)
    for leak in (CANARY, "<module", PROJECT_DIR, sys.prefix, sys.base_prefix):
        assert leak not in seen
    assert not probe_file_exists()
    assert after.outcome == "ok" and after.output == "['a', 'a', 'a'] True 11\nguarded\n", after.output
