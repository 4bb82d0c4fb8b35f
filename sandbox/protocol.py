"""The messages between the parent and a worker, and the parent's strict reading of what a worker sends.

Parent -> worker: load (then the raw context bytes), exec, var, send, answer.
Worker -> parent: ready, loaded, llm, rlm, result, var, and raw frames when asked.

A request for model calls (`llm`: prompts; `rlm`: a prompt and a nested run's context) announces the
size of each text it would send, in characters and UTF-8 bytes, and nothing more. The parent decides from
the sizes alone what it will take (the sub-model's window, its byte budgets), asks for those texts with
`send` (in waves, when a batch is larger than it holds at once), reads exactly the announced sizes, and
ends the exchange with `answer`, one result per prompt (one for a nested run). A worker can thus never make
the parent read, let alone hold, more than the parent agreed to. Only texts cross: a nested run's context
is a text, or a list of messages sent as role and content texts (anything else goes as its JSON text), so
the parent never parses a structure whose size in memory its bytes do not bound.

Everything a worker sends is untrusted: anything that is not exactly one of the expected messages, with
the expected types and sizes, is a ProtocolError and the parent kills the worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sandbox.framing import MAX_FRAME_BYTES
from sandbox.interface import FinalAnswer, Isolation

MAX_BATCH_PROMPTS = 4096
MAX_NESTED_MESSAGES = 4096  # a nested run's context as a list of messages
NESTED_KINDS = ("none", "text", "messages")
MAX_MODEL_NAME_CHARS = 256
MAX_ANSWER_CHARS = 2**22  # FINAL's text: far more than a model's reply can carry, far less than a frame
UTF8_MAX_BYTES_PER_CHAR = 4
MAX_REPORTED_INTERVALS = 1000  # read intervals sent with a result; beyond this only the fraction is sent
OUTPUT_SLACK_CHARS = 200  # the cut marker and separators on top of max_output_chars
BLOCK_OUTCOMES = ("ok", "error", "timeout")  # "killed" is the parent's verdict, never the worker's


class ProtocolError(Exception):
    """A worker sent something that is not a valid message."""


@dataclass(frozen=True)
class Ready:
    """The walls the worker stands behind besides its rlimits (which it always has)."""

    namespaces: bool  # its own network namespace, and no root (nobody, or a user namespace)
    seccomp: bool  # the system-call filter

    @property
    def isolation(self) -> Isolation:
        return "seccomp" if self.seccomp else "namespaces" if self.namespaces else "rlimits only"


@dataclass(frozen=True)
class Loaded:
    coverage: float


@dataclass(frozen=True)
class LlmRequest:
    """Prompts on offer: prompt i has chars[i] characters in sizes[i] UTF-8 bytes."""

    model: str | None
    chars: list[int]
    sizes: list[int]


@dataclass(frozen=True)
class RlmRequest:
    """A nested run on offer, as texts (chars[i] characters, sizes[i] UTF-8 bytes): its prompt, then its
    context: nothing ("none"), one text ("text"), or a role and a content text per message ("messages")."""

    kind: str
    chars: list[int]
    sizes: list[int]


@dataclass(frozen=True)
class BlockDone:
    outcome: str
    output: str
    final: FinalAnswer | None
    coverage: float
    reads: list[tuple[int, int]] | None


@dataclass(frozen=True)
class VariableValue:
    value: str | None  # None: no such variable, or `problem` says why it cannot be the answer
    problem: str | None


WorkerMessage = Ready | Loaded | LlmRequest | RlmRequest | BlockDone | VariableValue


def parse_worker_message(message: dict[str, Any], max_output_chars: int) -> WorkerMessage:
    op = message.get("op")
    if op == "ready":
        _expect_keys(message, "op", "namespaces", "seccomp")
        namespaces, seccomp = message["namespaces"], message["seccomp"]
        if not (isinstance(namespaces, bool) and isinstance(seccomp, bool)):
            raise ProtocolError("ready: namespaces and seccomp must be booleans")
        return Ready(namespaces, seccomp)
    if op == "loaded":
        _expect_keys(message, "op", "coverage")
        return Loaded(_fraction(message["coverage"]))
    if op == "llm":
        _expect_keys(message, "op", "model", "chars", "sizes")
        model, chars, sizes = message["model"], message["chars"], message["sizes"]
        if model is not None and not (isinstance(model, str) and 0 < len(model) <= MAX_MODEL_NAME_CHARS):
            raise ProtocolError("llm: bad model name")
        if not (isinstance(chars, list) and isinstance(sizes, list) and 0 < len(chars) == len(sizes)
                <= MAX_BATCH_PROMPTS):
            raise ProtocolError("llm: chars and sizes must be lists of equal length within the batch limit")
        for count, size in zip(chars, sizes, strict=True):
            _check_text_size(count, size)
        return LlmRequest(model, chars, sizes)
    if op == "rlm":
        _expect_keys(message, "op", "kind", "chars", "sizes")
        kind, chars, sizes = message["kind"], message["chars"], message["sizes"]
        if kind not in NESTED_KINDS or not (isinstance(chars, list) and isinstance(sizes, list)
                                            and len(chars) == len(sizes)):
            raise ProtocolError("rlm: a kind of context, and chars and sizes of equal length")
        count = len(chars)
        if not (count == 1 if kind == "none" else count == 2 if kind == "text"
                else count % 2 == 1 and 1 < count <= 1 + 2 * MAX_NESTED_MESSAGES):
            raise ProtocolError("rlm: the number of texts does not fit the kind of context")
        for count, size in zip(chars, sizes, strict=True):
            _check_text_size(count, size)
        if sum(sizes) > MAX_FRAME_BYTES:
            raise ProtocolError("rlm: the texts exceed the frame limit together")
        return RlmRequest(kind, chars, sizes)
    if op == "result":
        return _parse_result(message, max_output_chars)
    if op == "var":
        _expect_keys(message, "op", "value", "problem")
        value, problem = message["value"], message["problem"]
        if not (value is None or (isinstance(value, str) and len(value) <= MAX_ANSWER_CHARS)):
            raise ProtocolError("var: value must be a str within the answer limit, or null")
        if not (problem is None or (isinstance(problem, str) and len(problem) <= max_output_chars)):
            raise ProtocolError("var: problem must be a short str or null")
        return VariableValue(value, problem)
    raise ProtocolError(f"unknown message {str(op)[:40]!r}")


def _check_text_size(chars: object, size: object) -> None:
    """A text's announced size: UTF-8 takes one to four bytes a character."""
    if not (type(chars) is int and type(size) is int and 0 <= chars <= size <= UTF8_MAX_BYTES_PER_CHAR * chars
            and size <= MAX_FRAME_BYTES):
        raise ProtocolError("a text's size must be its characters and UTF-8 bytes, within the frame limit")


def _parse_result(message: dict[str, Any], max_output_chars: int) -> BlockDone:
    _expect_keys(message, "op", "outcome", "output", "final", "coverage", "reads")
    outcome, output, final = message["outcome"], message["output"], message["final"]
    if outcome not in BLOCK_OUTCOMES:
        raise ProtocolError("result: bad outcome")
    if not (isinstance(output, str) and len(output) <= max_output_chars + OUTPUT_SLACK_CHARS):
        raise ProtocolError("result: output must be a str within the output limit")
    answer = None
    if final is not None:
        if not (isinstance(final, dict) and set(final) == {"text", "variable"}
                and isinstance(final["text"], str) and len(final["text"]) <= MAX_ANSWER_CHARS
                and isinstance(final["variable"], (str, type(None)))):
            raise ProtocolError("result: bad final answer")
        answer = FinalAnswer(final["text"], final["variable"])
    return BlockDone(outcome, output, answer, _fraction(message["coverage"]), _intervals(message["reads"]))


def _expect_keys(message: dict[str, Any], *keys: str) -> None:
    if set(message) != set(keys):
        raise ProtocolError(f"{message.get('op')!s:.40}: expected exactly the keys {', '.join(keys)}")


def _fraction(value: object) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value <= 1):
        raise ProtocolError("coverage must be a number between 0 and 1")
    return float(value)


def _intervals(value: object) -> list[tuple[int, int]] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) <= MAX_REPORTED_INTERVALS):
        raise ProtocolError("reads must be a short list of intervals")
    intervals = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and all(type(bound) is int for bound in item)
                and 0 <= item[0] < item[1]):
            raise ProtocolError("reads: each interval must be [start, end) with 0 <= start < end")
        intervals.append((item[0], item[1]))
    return intervals
