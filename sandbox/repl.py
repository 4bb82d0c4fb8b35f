"""The REPL inside the worker: the namespace blocks share, the functions the RLM protocol gives them
(llm_query, llm_query_batched, rlm_query, FINAL, FINAL_VAR, SHOW_VARS), and running one block."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from sandbox.coverage import Coverage
from sandbox.framing import MAX_FRAME_BYTES
from sandbox.limits import BlockTimer, CpuTimeExceeded
from sandbox.output import Output
from sandbox.policy import Guards, ModuleView, PolicyError, SandboxType, compile_block
from sandbox.protocol import (
    MAX_ANSWER_CHARS,
    MAX_BATCH_PROMPTS,
    MAX_MODEL_NAME_CHARS,
    MAX_NESTED_MESSAGES,
    MAX_REPORTED_INTERVALS,
)

# Offers texts to the parent with a request announcing their sizes, sends those the parent asks for, and
# returns its answer (see sandbox/protocol.py).
Exchange = Callable[[dict[str, Any], Sequence[str | bytes]], dict[str, Any]]
# Removes host details (installation paths) from text shown to the model.
Redact = Callable[[str], str]

TRACEBACK_HEAD, TRACEBACK_TAIL = 2, 4  # frames kept around the cut in a deep traceback
MAX_MESSAGE_CHARS = 2000
MAX_JSON_DEPTH = 100
MAX_IGNORED_NOTES = 5  # per block: exceptions raised where Python can only ignore them (e.g. in __del__)


class Repl:
    def __init__(self, context: Any, coverage: Coverage, max_output_chars: int, exchange: Exchange,
                 timer: BlockTimer, redact: Redact) -> None:
        self._coverage = coverage
        self._exchange = exchange
        self._timer = timer
        self._redact = redact
        self._ignored = 0  # exceptions noted by note_ignored_exception in this block
        self._output = Output(max_output_chars)
        self._final: dict[str, Any] | None = None
        self._sources: dict[str, list[str]] = {}  # block filename -> its lines, for tracebacks
        self._blocks = 0
        self._builtins = Guards(coverage, self._output, self._describe, timer.sleep).builtins
        self._builtins.update({"llm_query": self.llm_query, "llm_query_batched": self.llm_query_batched,
                               "rlm_query": self.rlm_query, "FINAL": self.final, "FINAL_VAR": self.final_var,
                               "SHOW_VARS": self.show_vars})
        self._globals: dict[str, Any] = {"__builtins__": self._builtins, "__name__": "__main__",
                                         "context": context}

    # Running

    def run(self, code: str) -> dict[str, Any]:
        """Runs one block; the `result` message for the parent."""
        self._blocks += 1
        filename = f"<block {self._blocks}>"
        self._sources[filename] = code.splitlines()
        self._output.reset()
        self._final = None
        self._ignored = 0
        outcome, error = "ok", ""
        try:
            self._timer.start()
            try:
                exec(compile_block(code, filename), self._globals)
            finally:
                self._timer.stop()
        except PolicyError as rejected:
            outcome, error = "error", f"The code was rejected before running:\n{rejected}"
        except CpuTimeExceeded as stopped:
            outcome, error = "timeout", self._describe(stopped)
        except MemoryError as failed:
            outcome, error = "error", self._describe(failed) + (
                "\n(The sandbox's memory limit was reached; memory held by your variables counts too.)")
        except BaseException as failed:  # whatever the code raised is reported to the model
            outcome, error = "error", self._describe(failed)
        return {"op": "result", "outcome": outcome, "output": sendable(self._render(error)),
                "final": self._final, "coverage": self._coverage.fraction(), "reads": self.reads()}

    def failed_result(self, error: BaseException) -> dict[str, Any]:
        """The result of a block whose own result could not be sent (e.g. no memory left to encode it)."""
        self._final = None
        return {"op": "result", "outcome": "error", "final": None, "coverage": self._coverage.fraction(),
                "reads": None, "output": sendable(self._redact(
                    f"The block ran, but its result could not be sent back: {type(error).__name__}. "
                    "Print less, or answer with a smaller value."))}

    def variable(self, name: str) -> dict[str, Any]:
        """The `var` message for FINAL_VAR on its own line: str() of the variable, or why there is none."""
        if name.startswith("_") or name not in self._globals:
            return {"op": "var", "value": None, "problem": None}
        try:
            self._timer.start()
            try:
                return {"op": "var", "value": _answer_text(self._globals[name], f"FINAL_VAR({name})"),
                        "problem": None}
            finally:
                self._timer.stop()
        except BaseException as failed:  # too big, too slow or failing to convert: no usable answer
            return {"op": "var", "value": None, "problem": sendable(self._redact(self._describe(failed)))}

    def note_ignored_exception(self, unraisable: Any) -> None:
        """sys.unraisablehook: an exception Python had to ignore (raised in __del__, or while closing a
        generator) becomes a short note in the block's output; it never reaches the worker's stderr."""
        self._ignored += 1
        if self._ignored <= MAX_IGNORED_NOTES:
            error = unraisable.exc_value
            message = self._describe_message(error) if error is not None else ""
            self._output.write(f"[An exception was ignored during cleanup: "
                               f"{getattr(unraisable.exc_type, '__name__', 'Exception')}: {message[:200]}]\n")

    def reads(self) -> list[tuple[int, int]] | None:
        intervals = self._coverage.intervals()
        return intervals if len(intervals) <= MAX_REPORTED_INTERVALS else None

    def _user_variables(self) -> dict[str, Any]:
        return {name: value for name, value in self._globals.items() if not name.startswith("_")}

    # The protocol functions, as the code sees them

    def llm_query(self, prompt: str, model: str | None = None) -> str:
        """Ask a sub-model one prompt; failures come back as a string starting with "Error:"."""
        problem = _prompt_problem(prompt) or _model_problem(model)
        return problem if problem is not None else self._ask_models([prompt], model)[0]

    def llm_query_batched(self, prompts: list[str], model: str | None = None) -> list[str]:
        """Ask a sub-model several prompts concurrently; answers in order, "Error: ..." per failed item."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
            raise TypeError("llm_query_batched expects a list of str prompts")
        if len(prompts) > MAX_BATCH_PROMPTS:
            raise ValueError(f"llm_query_batched takes at most {MAX_BATCH_PROMPTS} prompts per call")
        model_problem = _model_problem(model)
        problems = [_prompt_problem(prompt) or model_problem for prompt in prompts]
        pending = [prompt for prompt, problem in zip(prompts, problems, strict=True) if problem is None]
        answers = iter(self._ask_models(pending, model) if pending else [])
        return [next(answers) if problem is None else problem for problem in problems]

    def rlm_query(self, prompt: str, context: Any = None) -> str:
        """Run a nested RLM on `context` (JSON data: str, list, dict, numbers, None)."""
        problem = _prompt_problem(prompt)
        if problem is not None:
            return problem
        try:
            data = self._json_data(context, 0)
        except (TypeError, ValueError) as error:
            return f"Error: rlm_query context must be JSON data (str, list, dict, numbers, None): {error}"
        self._coverage.note(prompt)
        texts = [sendable(str.__str__(prompt))]
        if data is None:
            kind = "none"
        elif _is_messages(data):
            kind = "messages"
            texts += [text for message in data for text in (message["role"], message["content"])]
        else:
            kind = "text"
            texts.append(data if isinstance(data, str) else orjson.dumps(data).decode())
        sizes = [_utf8_size(text) for text in texts]
        if sum(sizes) > MAX_FRAME_BYTES:
            return f"Error: the prompt and context are too large to send ({sum(sizes):,} bytes)"
        return self._send({"op": "rlm", "kind": kind, "chars": [len(text) for text in texts],
                           "sizes": sizes}, texts)[0]

    def final(self, answer: object) -> None:
        """Record `answer` (as str) as the final answer; the last call in a block wins."""
        self._final = {"text": _answer_text(answer, "FINAL"), "variable": None}

    def final_var(self, name: object) -> None:
        """Record the value of the REPL variable called `name` (as str) as the final answer."""
        if not isinstance(name, str):
            raise TypeError("FINAL_VAR expects the variable's name as a str, e.g. FINAL_VAR('answer'); "
                            "use FINAL(value) to answer with a value")
        key = name.strip()
        if key.startswith("_") or key not in self._globals:
            raise NameError(f"FINAL_VAR: no variable named {key!r}; use FINAL(value) to answer with a value")
        self._final = {"text": _answer_text(self._globals[key], "FINAL_VAR"), "variable": key}

    def show_vars(self) -> None:
        """Print your variables and their types."""
        variables = self._user_variables()
        if not variables:
            self._output.write("No variables yet.\n")
        for name, value in variables.items():
            self._output.write(f"{name}: {_describe_value(value)}\n")

    # Helpers

    def _ask_models(self, prompts: list[str], model: str | None) -> list[str]:
        for prompt in prompts:
            self._coverage.note(prompt)
        texts = [sendable(str.__str__(prompt)) for prompt in prompts]
        request = {"op": "llm", "model": model, "chars": [len(text) for text in texts],
                   "sizes": [_utf8_size(text) for text in texts]}
        return self._send(request, texts)

    def _send(self, request: dict[str, Any], texts: Sequence[str | bytes]) -> list[str]:
        answer = self._exchange(request, texts)
        results = answer.get("results")
        expected = len(request["sizes"]) if request["op"] == "llm" else 1  # an rlm request: one answer
        if not (isinstance(results, list) and len(results) == expected
                and all(isinstance(result, str) for result in results)):
            return ["Error: the sandbox received an invalid answer"] * expected
        return results

    def _json_data(self, value: Any, depth: int) -> Any:
        if depth > MAX_JSON_DEPTH:
            raise ValueError("nested too deeply")
        if isinstance(value, str):
            self._coverage.note(value)
            return sendable(str.__str__(value))
        if type(value) is int and not -(2**63) <= value < 2**64:
            raise ValueError("integers must fit in 64 bits")
        if value is None or type(value) in (bool, int, float):
            return value
        if isinstance(value, (list, tuple)):
            self._coverage.note(value)
            return [self._json_data(item, depth + 1) for item in value]
        if isinstance(value, dict):
            self._coverage.note(value)
            if not all(isinstance(key, str) for key in value):
                raise TypeError("dict keys must be str")
            return {sendable(str.__str__(key)): self._json_data(item, depth + 1)
                    for key, item in value.items()}
        raise TypeError(f"{type(value).__name__} is not JSON data")

    def _describe(self, error: BaseException) -> str:
        """A short traceback through the user's blocks only (no host frames or paths), then the error."""
        frames = [(frame.f_code.co_filename, line, frame.f_code.co_name)
                  for frame, line in traceback.walk_tb(error.__traceback__)
                  if frame.f_code.co_filename in self._sources]
        lines = []
        if len(frames) > TRACEBACK_HEAD + TRACEBACK_TAIL:
            cut = len(frames) - TRACEBACK_HEAD - TRACEBACK_TAIL
            frames = [*frames[:TRACEBACK_HEAD], ("", cut, ""), *frames[-TRACEBACK_TAIL:]]
        for filename, line, function in frames:
            if not filename:
                lines.append(f"  ... {line} more frames ...")
                continue
            where = "" if function == "<module>" else f", in {function}"  # top level: just the block
            lines.append(f'  File "{filename}", line {line}{where}')
            source = self._sources[filename]
            if line is not None and 0 < line <= len(source):
                lines.append(f"    {source[line - 1].strip()[:200]}")
        message = self._describe_message(error)
        head = ["Traceback (most recent call last):", *lines] if lines else []
        return "\n".join([*head, f"{type(error).__name__}: {message}" if message else type(error).__name__])

    @staticmethod
    def _describe_message(error: BaseException) -> str:
        try:
            message = str(error)
        except BaseException:  # an exception whose message cannot be built
            message = "<message unavailable>"
        return message[:MAX_MESSAGE_CHARS] + "..." if len(message) > MAX_MESSAGE_CHARS else message

    def _render(self, error: str) -> str:
        """Printed output then the error, within max_chars; a marker says how much printed text was cut.
        Host paths are redacted from both (an exception the code printed shows them as well)."""
        limit = self._output.max_chars
        error = self._redact(error)
        if len(error) > limit // 2:
            error = "..." + error[-max(limit // 2, 1):]
        printed, total = self._output.text(), self._output.total
        room = max(0, limit - len(error))
        if total > room:
            printed = f"{printed[:room]}\n... [{total - room:,} more characters cut]\n"
        elif printed and error and not printed.endswith("\n"):
            printed += "\n"
        return self._redact(printed) + error


def sendable(text: str) -> str:
    """`text` as valid Unicode: lone surrogates (chr(0xd800)) cannot be encoded and become U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _is_messages(data: Any) -> bool:
    """A list of chat messages: what a nested run takes as a conversation rather than as one text."""
    return (isinstance(data, list) and 0 < len(data) <= MAX_NESTED_MESSAGES
            and all(isinstance(message, dict) and set(message) == {"role", "content"}
                    and isinstance(message["role"], str) and isinstance(message["content"], str)
                    for message in data))


def _utf8_size(text: str) -> int:
    """The size of a sendable `text` in UTF-8."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _answer_text(value: object, what: str) -> str:
    text = str(value)
    if len(text) > MAX_ANSWER_CHARS:
        raise ValueError(f"{what}: the answer has {len(text):,} characters, more than the "
                         f"{MAX_ANSWER_CHARS:,} an answer may have; answer with a summary, or the part that "
                         "was asked for")
    return sendable(text)


def _prompt_problem(prompt: object) -> str | None:
    if not isinstance(prompt, str):
        return f"Error: the prompt must be a str, not {_type_name(prompt)}"
    # Only a prompt of over MAX_FRAME_BYTES / 4 characters can be too large to announce to the parent.
    if len(prompt) * 4 > MAX_FRAME_BYTES and (size := _utf8_size(sendable(prompt))) > MAX_FRAME_BYTES:
        return f"Error: this prompt is too large to send ({size:,} bytes); split it into smaller pieces"
    return None


def _model_problem(model: object) -> str | None:
    if model is not None and not (isinstance(model, str) and 0 < len(model) <= MAX_MODEL_NAME_CHARS):
        return "Error: model must be None or a model name (a non-empty str)"
    return None


def _type_name(value: object) -> str:
    kind = SandboxType(value)
    return "type" if kind is SandboxType else kind.__name__


def _describe_value(value: object) -> str:
    if isinstance(value, ModuleView):
        return "module"
    if isinstance(value, type):
        return "class"
    name = _type_name(value)
    if isinstance(value, str):
        return f"{name} ({len(value):,} chars)"
    if isinstance(value, dict):
        return f"{name} ({len(value):,} keys)"
    if isinstance(value, (list, tuple, set, frozenset)):
        return f"{name} ({len(value):,} items)"
    return name
