"""Does the sandbox run the Python that real models write? Every trajectory of the real-code corpus, run
block by block in plain CPython and in the sandbox, compared.

    .venv/bin/python -m bench.realcode [--show N]

The corpus (REPL blocks that real models wrote during RLM runs, with SOURCES.md saying where they come
from) is read at run time from $RLM_REALCODE_DIR, by default `<repository>/../shared/realcode`; it is never
copied into the repository. Each trajectory runs in order in one REPL, after its `preamble`, with the same
synthetic `context` and the same deterministic stubs for llm_query / llm_query_batched / rlm_query on both
sides: in CPython in a fresh process per trajectory, in the sandbox in a session of a real SandboxPool.
A block compares equal when both sides agree on the outcome (and the exception's type) and print the same
text (object addresses aside). Blocks marked `dup_of` run, for their trajectory's state, but are not
counted. Prints the blocks clean in CPython, how many of those the sandbox runs identically (per source and
model), and every mismatch grouped by cause.
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import collections
import concurrent.futures
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import ExecResult, PoolLimits, Prompt, SandboxLimits, SandboxPool
from sandbox.policy import REFUSALS

CORPUS_VARIABLE = "RLM_REALCODE_DIR"
CORPUS_FILE = "corpus.jsonl"
BLOCK_LIMIT_S = 10  # per block, both sides: code that spins on the synthetic context is not "clean"
SANDBOX_LIMITS = SandboxLimits(cpu_s_per_block=BLOCK_LIMIT_S, wall_s_per_block=6 * BLOCK_LIMIT_S,
                               max_output_chars=10_000_000)
CONCURRENCY = 2
DOCUMENTS = 300
REJECTED = "The code was rejected before running:"
TRACEBACK = "Traceback (most recent call last):\n"
# Run first on both sides: unseeded `random` draws would differ between two processes.
SEED_RANDOM = "import random as seeded_random\nseeded_random.seed(0)\ndel seeded_random"
ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")


@dataclass(frozen=True)
class Block:
    id: str
    source: str  # the log's repository, without the path
    model: str
    code: str
    trajectory: str
    seq: int
    preamble: str
    context_kind: str  # "str" or "docs"
    counted: bool  # False for a repeat of earlier code (kept for its trajectory's state)


@dataclass(frozen=True)
class Observed:
    """What running one block did, as both sides can report it."""

    outcome: str  # "ok", "error" or "timeout" ("killed" in the sandbox)
    error: str  # the exception's type name ("rejected" for a block refused before running); "" when ok
    message: str  # the exception's message (first line)
    stdout: str  # printed text
    final: str | None


@dataclass(frozen=True)
class Comparison:
    block: Block
    cpython: Observed
    sandbox: Observed

    @property
    def clean(self) -> bool:
        return self.cpython.outcome == "ok"

    @property
    def identical(self) -> bool:
        left, right = self.cpython, self.sandbox
        return (left.outcome, left.error, normalized(left.stdout), left.final) == (
            right.outcome, right.error, normalized(right.stdout), right.final)

    @property
    def refused(self) -> bool:
        """The sandbox refused something it must refuse (files, network, processes, threads), saying what
        to do instead."""
        return self.sandbox.outcome == "error" and any(text in self.sandbox.message
                                                       for text in REFUSALS.values())

    @property
    def cause(self) -> str:
        """A short description shared by mismatches with the same cause."""
        observed = self.sandbox
        if observed.outcome == "ok" or observed.error == self.cpython.error:
            return "same outcome, different output" if observed.stdout != self.cpython.stdout else \
                "same outcome and output, different FINAL"
        message = re.sub(r"\bLine \d+: ", "", observed.message)
        message = re.sub(r"\d+", "N", message)
        return f"{observed.outcome}: {observed.error}: {message[:160]}"


def normalized(text: str) -> str:
    return ADDRESS.sub("0x?", text).rstrip("\n")


# The corpus


def corpus_dir() -> Path:
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "realcode"
    return Path(os.environ.get(CORPUS_VARIABLE) or default)


def load_trajectories(directory: Path) -> list[list[Block]]:
    """The corpus's trajectories, each a list of blocks in order."""
    trajectories: dict[str, list[Block]] = collections.defaultdict(list)
    with (directory / CORPUS_FILE).open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            block = Block(id=record["id"], source=record["source"].split("@")[0], model=record["model"],
                          code=record["code"], trajectory=record["trajectory"], seq=record["seq"],
                          preamble=record.get("preamble") or "", context_kind=record["context_kind"],
                          counted=not record.get("dup_of"))
            trajectories[block.trajectory].append(block)
    return [sorted(blocks, key=lambda block: block.seq) for blocks in trajectories.values()]


def synthetic_context(kind: str) -> str | list[str]:
    """A deterministic context shaped like the corpus's tasks: a long text of questions, dated records
    with labels, dialogue and prose; or a list of documents each starting with its `doc_id:`."""
    words = ("the", "model", "reads", "a", "long", "context", "and", "answers", "questions", "about",
             "users", "dates", "labels", "and", "entities", "found", "in", "records", "such", "as", "numeric",
             "values", "locations", "people", "and", "events")

    def sentence(seed: int, length: int = 14) -> str:
        return " ".join(words[(seed * 7 + step * 3) % len(words)] for step in range(length)).capitalize()

    if kind == "docs":
        return [f"doc_id: {number}\ntitle: Document {number}\n---\n{sentence(number)}. "
                f"{sentence(number + 1)}." for number in range(DOCUMENTS)]
    labels = ("entity", "location", "numeric value", "description", "human being", "abbreviation")
    lines = ["Question: Which label is the most common among the records below?", ""]
    for number in range(2000):
        lines.append(f"Date: Jan {number % 28 + 1:02d}, 2023 || User: {10000 + number % 97} || "
                     f"Instance: {sentence(number)}? || Label: {labels[number % len(labels)]}")
    for number in range(400):
        speaker = ("Lex Fridman", "Guest")[number % 2]
        lines.append(f"{speaker}: {sentence(number, 24)}.")
    lines.append("Answer the question above based on the records.")
    return "\n".join(lines)


def stub_answer(prompt: object) -> str:
    """What every sub-call answers, on both sides: deterministic in the prompt."""
    return f"stub answer {hashlib.sha256(str(prompt).encode('utf-8', 'replace')).hexdigest()[:8]}"


# Plain CPython, one fresh process per trajectory


class BlockTimeout(BaseException):
    pass


class CpythonRepl:
    """The REPL functions as sandbox/repl.py defines them, over plain CPython."""

    def __init__(self, context: str | list[str], out: io.StringIO) -> None:
        self.final: str | None = None
        self._out = out
        namespace = dict(vars(builtins))
        namespace.update({"llm_query": self.llm_query, "llm_query_batched": self.llm_query_batched,
                          "rlm_query": self.rlm_query, "FINAL": self.final_answer,
                          "FINAL_VAR": self.final_var, "SHOW_VARS": self.show_vars})
        self.globals: dict[str, Any] = {"__builtins__": namespace, "__name__": "__main__",
                                        "context": context}

    @staticmethod
    def llm_query(prompt: object, model: object = None) -> str:
        if not isinstance(prompt, str):
            return f"Error: the prompt must be a str, not {type(prompt).__name__}"
        return stub_answer(prompt)

    def llm_query_batched(self, prompts: object, model: object = None) -> list[str]:
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
            raise TypeError("llm_query_batched expects a list of str prompts")
        return [self.llm_query(prompt) for prompt in prompts]

    def rlm_query(self, prompt: object, context: object = None) -> str:
        return self.llm_query(prompt)

    def final_answer(self, answer: object) -> None:
        self.final = str(answer)

    def final_var(self, name: object) -> None:
        if not isinstance(name, str):
            raise TypeError("FINAL_VAR expects the variable's name as a str")
        key = name.strip()
        if key.startswith("_") or key not in self.globals:
            raise NameError(f"FINAL_VAR: no variable named {key!r}")
        self.final = str(self.globals[key])

    def show_vars(self) -> None:
        names = [name for name in self.globals if not name.startswith("_")]
        if not names:
            self._out.write("No variables yet.\n")
        for name in names:
            self._out.write(f"{name}: {describe(self.globals[name])}\n")

    def run(self, code: str, filename: str) -> Observed:
        self._out.seek(0)
        self._out.truncate()
        self.final = None
        outcome, error, message = "ok", "", ""
        signal.setitimer(signal.ITIMER_REAL, BLOCK_LIMIT_S)
        try:
            with contextlib.redirect_stdout(self._out), contextlib.redirect_stderr(self._out):
                exec(compile(code, filename, "exec"), self.globals)
        except BlockTimeout:
            outcome, error = "timeout", "CpuTimeExceeded"
        except BaseException as failed:  # whatever the block raised is its result
            outcome, error, message = "error", type(failed).__name__, first_line(failed)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return Observed(outcome, error, message, self._out.getvalue(), self.final)


def describe(value: object) -> str:
    """SHOW_VARS's description of a value (sandbox/repl.py's _describe_value, over real modules)."""
    if isinstance(value, type(os)):
        return "module"
    if isinstance(value, type):
        return "class"
    name = type(value).__name__
    for kinds, unit in ((str, "chars"), (dict, "keys"), ((list, tuple, set, frozenset), "items")):
        if isinstance(value, kinds):
            return f"{name} ({len(value):,} {unit})"  # type: ignore[arg-type]
    return name


def first_line(error: BaseException) -> str:
    try:
        return str(error).split("\n", 1)[0]
    except BaseException:  # an exception whose message cannot be built
        return ""


def _raise_timeout(signum: int, frame: object) -> None:
    raise BlockTimeout


def run_in_cpython(trajectory: list[Block]) -> list[Observed]:
    """Runs in a fresh process (see compare): module state, the working directory and signal handlers
    belong to this trajectory alone."""
    signal.signal(signal.SIGALRM, _raise_timeout)
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # whatever the code writes lands here
        repl = CpythonRepl(synthetic_context(trajectory[0].context_kind), io.StringIO())
        for preamble in (SEED_RANDOM, trajectory[0].preamble):
            repl.run(preamble, "<preamble>")
        return [repl.run(block.code, f"<block {number}>") for number, block in enumerate(trajectory, 1)]


# The sandbox


class StubHandler:
    def prompt_refusals(self, chars: list[int], model: str | None) -> list[str | None]:
        return [None] * len(chars)

    async def llm_query(self, prompts: list[Prompt], model: str | None) -> list[str]:
        return [stub_answer(await prompt.text) for prompt in prompts]

    async def rlm_query(self, prompt: str, context: Any) -> str:
        return stub_answer(prompt)


def observed_in_sandbox(result: ExecResult) -> Observed:
    """Splits the sandbox's output (printed text, then the error report) back into its parts."""
    final = result.final.text if result.final else None
    output = result.output
    if result.outcome == "ok":
        return Observed("ok", "", "", output, final)
    if result.outcome in ("timeout", "killed"):
        return Observed("timeout", "CpuTimeExceeded", output.splitlines()[-1] if output else "", "", final)
    if REJECTED in output:
        printed, report = output.split(REJECTED, 1)
        return Observed("error", "rejected", report.strip().split("\n", 1)[0], printed, final)
    cut = output.rfind(TRACEBACK)
    printed, report = (output[:cut], output[cut + len(TRACEBACK):]) if cut >= 0 else ("", output)
    last = next((line for line in report.splitlines() if not line.startswith("  ")), "")
    error, _, message = last.partition(": ")
    return Observed("error", error, message, printed, final)


async def run_in_sandbox(pool: SandboxPool, trajectory: list[Block]) -> list[Observed]:
    handler = StubHandler()
    session = await pool.session(synthetic_context(trajectory[0].context_kind))  # type: ignore[arg-type]
    try:
        for preamble in (SEED_RANDOM, trajectory[0].preamble):
            await session.execute(preamble, handler)
        return [observed_in_sandbox(await session.execute(block.code, handler)) for block in trajectory]
    finally:
        await session.close()


async def run_all_in_sandbox(trajectories: list[list[Block]]) -> list[list[Observed]]:
    pool = SandboxPool(SANDBOX_LIMITS, PoolLimits(warm_workers=CONCURRENCY, max_workers=CONCURRENCY))
    await pool.start()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(trajectory: list[Block]) -> list[Observed]:
        async with gate:
            return await run_in_sandbox(pool, trajectory)

    try:
        return list(await asyncio.gather(*(one(trajectory) for trajectory in trajectories)))
    finally:
        await pool.aclose()


# Both, compared


def compare(trajectories: list[list[Block]]) -> list[Comparison]:
    """Every block, run both ways."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(CONCURRENCY, mp_context=spawn, max_tasks_per_child=1) as pool:
        in_cpython = list(pool.map(run_in_cpython, trajectories))
    in_sandbox = asyncio.run(run_all_in_sandbox(trajectories))
    return [Comparison(block, left, right)
            for blocks, lefts, rights in zip(trajectories, in_cpython, in_sandbox, strict=True)
            for block, left, right in zip(blocks, lefts, rights, strict=True)]


def counted(comparisons: list[Comparison]) -> list[Comparison]:
    return [comparison for comparison in comparisons if comparison.block.counted]


def report(comparisons: list[Comparison], show: int, write: Callable[[str], None] = print) -> None:
    blocks = counted(comparisons)
    clean = [comparison for comparison in blocks if comparison.clean]
    same = [comparison for comparison in clean if comparison.identical]
    refused = [comparison for comparison in clean if not comparison.identical and comparison.refused]
    trajectories = {comparison.block.trajectory for comparison in comparisons}
    write(f"corpus: {corpus_dir()}: {len(comparisons)} blocks, {len(blocks)} counted (distinct), "
          f"{len(trajectories)} trajectories")
    write(f"clean in CPython: {len(clean)}; identical in the sandbox: {len(same)} ({percent(same, clean)}); "
          f"refused with a message saying what to do instead: {len(refused)}; "
          f"other mismatches: {len(clean) - len(same) - len(refused)}")
    write("\nper source / model (clean in CPython -> identical in the sandbox):")
    groups: dict[tuple[str, str], list[Comparison]] = collections.defaultdict(list)
    for comparison in clean:
        groups[comparison.block.source, comparison.block.model].append(comparison)
    for (source, model), members in sorted(groups.items()):
        identical = [member for member in members if member.identical]
        failing = {member.block.trajectory for member in members if not member.identical}
        write(f"  {source:34} {model[:40]:40} {len(identical):4}/{len(members):<4} "
              f"({percent(identical, members)})  trajectories with a mismatch: {len(failing)}")
    causes: dict[str, list[Comparison]] = collections.defaultdict(list)
    for comparison in clean:
        if not comparison.identical:
            causes[("[refused] " if comparison.refused else "") + comparison.cause].append(comparison)
    write(f"\nmismatches by cause ({sum(map(len, causes.values()))}):")
    for cause, members in sorted(causes.items(), key=lambda item: -len(item[1])):
        write(f"  {len(members):4}  {cause}")
        for member in members[:show]:
            write(f"          {member.block.id}")
            if member.cause.startswith("same outcome"):
                write(f"            cpython: {member.cpython.stdout[:200]!r}")
                write(f"            sandbox: {member.sandbox.stdout[:200]!r}")


def percent(part: list[Any], whole: list[Any]) -> str:
    return f"{100 * len(part) / len(whole):.1f}%" if whole else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--show", type=int, default=3, help="block ids listed per cause of mismatch")
    arguments = parser.parse_args()
    directory = corpus_dir()
    if not (directory / CORPUS_FILE).is_file():
        raise SystemExit(f"no corpus at {directory / CORPUS_FILE}: set {CORPUS_VARIABLE}")
    report(compare(load_trajectories(directory)), arguments.show)


if __name__ == "__main__":
    main()
