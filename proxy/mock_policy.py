"""The mock upstream's scripted model: a competent RLM root and sub model for needle and counting tasks.

It reads what a real model would read: as a root model, the RLM system prompt, the description of
`context` (its type and the sub-model's prompt limit) and the REPL output of its earlier code; as a
sub-model (or a plain model), the prompt. Needle questions follow RULER's single-needle wording:

    One of the special magic numbers for {key} is: {value}.
    What is the special magic number for {key} mentioned in the provided text?

Counting questions ask "How many times does the word 'X' appear ...?". A `[[policy:NAME]]` tag in the
question scripts the failure modes the engine must handle:

    final_var     answer with FINAL_VAR(answer) on its own line
    missing_var   first answer FINAL_VAR of a variable that does not exist, then answer properly
    inline_final  write code and an invented FINAL(...) in the same reply
    prose_final   first mention FINAL(...) inside a sentence, then answer properly
    python_block  first write the code in a ```python block (which does not run), then in ```repl
    never_final   keep writing code until the engine asks for a final answer
    rlm_query     split the context in two and hand each half to a nested run (depth 2)
    early_answer  answer after reading only the start of `context`, then properly once questioned
    explains      after its code, go on writing what it expects the code to show (about 120 tokens),
                  as real models often do; the engine runs the block before that text has arrived
    tool_call     when the request offers tools, find the answer, then call the first tool with it
                  (`CallTool`) instead of answering; once the tool's result is on the context card (a
                  follow-up request), answer with FINAL(<answer>; tool result: <result>)
    infinite_loop, memory_bomb, output_bomb, swallow_timeout
                  first run hostile code of that kind, then search and answer as usual

A `[[exec:BASE64]]` tag (any question) makes the root model's first reply run that code (base64 of UTF-8
Python) in a ```repl block; its second reply is `FINAL(echo:BASE64)` of the engine's feedback, so a test
sees through the API exactly what the model saw (unless the code answered with FINAL itself).
"""

from __future__ import annotations

import ast
import base64
import binascii
import re
from dataclasses import dataclass

ROOT_MARKER = "You are the root model of a Recursive Language Model (RLM)"
# The official `rlms` library's root prompt (bench.peers runs it against this mock): its root model submits
# by setting `answer["content"]` and `answer["ready"] = True` in code rather than with FINAL(...).
RLMS_ROOT_MARKER = "You are a Recursive Language Model (RLM): a language model with a prompt"
FINAL_REQUEST_MARKER = "The run has reached its limit"
COVERAGE_CHECK_MARKER = "Before you answer: your code has read only"
NOT_FOUND = "NOT FOUND"

_NEEDLE_QUESTION = re.compile(r"special magic number for (.+?) mentioned in the provided text")
_COUNT_QUESTION = re.compile(r"How many times does the word '([^']+)' appear")
_COUNT_INSTRUCTION = re.compile(r"Count the occurrences of the word '([^']+)'")
_POLICY_TAG = re.compile(r"\[\[policy:([a-z_]+)\]\]")
_EXEC_TAG = re.compile(r"\[\[exec:([A-Za-z0-9+/=]+)\]\]")
ECHO_PREFIX = "echo:"
_PROMPT_LIMIT = re.compile(r"Sub-model prompt limit: about ([\d,]+) characters")
_FOUND = re.compile(r"found=(\[.*?\])", re.DOTALL)
_TOTAL = re.compile(r"total=(\d+)")
_QUESTION_BLOCK = re.compile(r"<question[^>]*>\n(.*?)\n</question>", re.DOTALL)
_TOOL_RESULT = re.compile(r"<tool_result[^>]*>\n(.*?)\n</tool_result>", re.DOTALL)
_TEXT_MARKER = "\n\nText:\n"
# Room left in each sub-call prompt for the instruction around the chunk.
_INSTRUCTION_ROOM = 1000
_DEFAULT_CHUNK = 100_000


FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"


def needle_prompt(chars: int, key: str, value: str, depth: float = 0.5, question: str | None = None) -> str:
    """A prompt of about `chars` characters this model can answer: filler lines, the needle at `depth` (a
    fraction of the text, on a line of its own), the question at the end. Tests, benchmarks and the demo
    traffic use it."""
    needle = f"One of the special magic numbers for {key} is: {value}.\n"
    question = question or f"What is the special magic number for {key} mentioned in the provided text?"
    body = FILLER * ((chars - len(needle) - len(question)) // len(FILLER) + 1)
    at = body.rfind("\n", 0, int(len(body) * depth)) + 1
    return body[:at] + needle + body[at:] + "\n" + question


def needle_pattern(key: str) -> re.Pattern[str]:
    return re.compile(r"One of the special magic numbers for " + re.escape(key) + r" is: (\S+?)\.?(?:\s|$)")


@dataclass(frozen=True)
class Message:
    role: str
    text: str


@dataclass(frozen=True)
class CallTool:
    """A reply that calls the request's first tool, `value` in its first required string argument."""

    value: str


def is_root_call(messages: list[Message]) -> bool:
    return bool(messages) and messages[0].role == "system" and ROOT_MARKER in messages[0].text


def _is_rlms_root_call(messages: list[Message]) -> bool:
    return bool(messages) and messages[0].role == "system" and RLMS_ROOT_MARKER in messages[0].text


def reply(messages: list[Message], tools: bool = False) -> str | CallTool | None:
    """The scripted answer, or None when the request is neither an RLM root call nor a task question.
    `tools`: the request offers tools the model may call."""
    if is_root_call(messages):
        return _root_reply(messages, tools)
    if _is_rlms_root_call(messages):
        return _as_rlms_answer(_root_reply(messages, tools=False))
    # The last user message holds the question, even when a client sends system text after it (Claude Code).
    users = [m.text for m in messages if m.role == "user"]
    return _plain_reply(users[-1] if users else messages[-1].text if messages else "")


# ---------------------------------------------------------------------------------------------------------
# Sub-model (and plain model): answer from the prompt alone


def _plain_reply(prompt: str) -> str | None:
    needle = _NEEDLE_QUESTION.search(prompt)
    if needle:
        match = needle_pattern(needle.group(1)).search(prompt)
        return match.group(1) if match else NOT_FOUND
    counting = _COUNT_INSTRUCTION.search(prompt) or _COUNT_QUESTION.search(prompt)
    if counting:
        text = prompt.split(_TEXT_MARKER, 1)[1] if _TEXT_MARKER in prompt else prompt.replace(
            counting.group(0), "")
        return str(len(re.findall(r"\b" + re.escape(counting.group(1)) + r"\b", text, re.IGNORECASE)))
    return None


# ---------------------------------------------------------------------------------------------------------
# Root model: write code, read its output, answer


@dataclass(frozen=True)
class _Task:
    kind: str  # needle | count
    subject: str  # the needle's key or the word to count
    question: str
    policy: str | None
    chunk_chars: int
    subcalls: bool  # False in the code-only ablation (no llm_query in the system prompt)


def _root_reply(messages: list[Message], tools: bool) -> str | CallTool:
    task = _task(messages)
    turn = sum(1 for m in messages if m.role == "assistant")
    last = messages[-1].text
    card = _card(messages)
    if (injected := _EXEC_TAG.search(card)) is not None:
        return _exec_then_echo(injected.group(1), turn, last)
    if task is None:
        return "FINAL(I can only answer needle and counting questions.)"
    if FINAL_REQUEST_MARKER in last:
        return f"FINAL({_best_answer(task, messages) or 'no answer found before the limit'})"
    if task.policy == "never_final":
        return f"Still looking.\n```repl\nprint('pass {turn}', len(context))\n```"
    if task.policy == "tool_call":
        return _tool_call(task, turn, messages, tools)
    script = _SCRIPTS.get(task.policy or "", _standard)
    return script(task, turn, messages)


_FINAL_REPLY = re.compile(r"FINAL\((.*)\)", re.DOTALL)
_FINAL_VAR_REPLY = re.compile(r"FINAL_VAR\((\w+)\)")


def _as_rlms_answer(scripted: str | CallTool) -> str | CallTool:
    """A final answer in the `rlms` library's protocol: submitted from code."""
    if not isinstance(scripted, str):
        return scripted
    if (variable := _FINAL_VAR_REPLY.fullmatch(scripted)) is not None:
        content = f"str({variable.group(1)})"
    elif (final := _FINAL_REPLY.fullmatch(scripted)) is not None:
        content = repr(final.group(1))
    else:
        return scripted
    return f'```repl\nanswer["content"] = {content}\nanswer["ready"] = True\n```'


def _card(messages: list[Message]) -> str:
    """The description of `context`: the root conversation's first user message."""
    return next((m.text for m in messages if m.role == "user"), "")


def _task(messages: list[Message]) -> _Task | None:
    card = _card(messages)
    question_block = _QUESTION_BLOCK.search(card)
    question = question_block.group(1) if question_block else card
    policy = _POLICY_TAG.search(question)
    limit = _PROMPT_LIMIT.search(card)
    chunk = int(limit.group(1).replace(",", "")) - _INSTRUCTION_ROOM if limit else _DEFAULT_CHUNK
    subcalls = "llm_query(" in messages[0].text
    needle = _NEEDLE_QUESTION.search(question)
    if needle:
        key = needle.group(1)
        question = f"What is the special magic number for {key} mentioned in the provided text?"
        return _Task("needle", key, question, policy.group(1) if policy else None, chunk, subcalls)
    counting = _COUNT_QUESTION.search(question)
    if counting:
        return _Task("count", counting.group(1), counting.group(0), policy.group(1) if policy else None,
                     chunk, subcalls)
    return None


# The code the scripted root writes; {placeholders} are filled with repr()s of Python values.
_JOINED_TEXT = """\
text = context if isinstance(context, str) else "\\n".join(m["content"] for m in context)
"""
_CHUNKS = _JOINED_TEXT + """\
chunks = []
start = 0
while start < len(text):
    end = min(len(text), start + {chunk})
    if end < len(text):
        cut = text.rfind("\\n", start, end)
        if cut <= start:
            cut = text.rfind(". ", start, end)
        end = cut + 1 if cut > start else end
    chunks.append(text[start:end])
    start = end
"""
_FOUND_FROM_ANSWERS = """\
found = [a.strip() for a in answers if "NOT FOUND" not in a.upper() and not a.startswith("Error")]
answer = found[0] if found else "NOT FOUND"
"""
_NEEDLE_BY_SUBCALLS = _CHUNKS + """\
question = {question} + " If the text does not contain it, answer NOT FOUND."
answers = llm_query_batched([question + "\\n\\nText:\\n" + c for c in chunks])
""" + _FOUND_FROM_ANSWERS + """\
print(f"chunks={{len(chunks)}} found={{found}}")
"""
_NEEDLE_BY_REGEX = "import re\n" + _JOINED_TEXT + """\
match = re.search({pattern}, text)
found = [match.group(1)] if match else []
answer = found[0] if found else "NOT FOUND"
print(f"found={{found}}")
"""
# The question is not part of the text whose words are counted.
_WITHOUT_QUESTION = "text = text.replace({question}, '')\n"
_COUNT_BY_SUBCALLS = ("import re\n" + _JOINED_TEXT + _WITHOUT_QUESTION + _CHUNKS.removeprefix(_JOINED_TEXT)
                      + """\
instruction = {instruction}
answers = llm_query_batched([instruction + "\\n\\nText:\\n" + c for c in chunks])
counts = [int(re.search(r"\\d+", a).group()) if re.search(r"\\d+", a) else 0 for a in answers]
total = sum(counts)
print(f"chunks={{len(chunks)}} counts={{counts}} total={{total}}")
""")
_COUNT_BY_REGEX = "import re\n" + _JOINED_TEXT + _WITHOUT_QUESTION + """\
total = len(re.findall({pattern}, text, re.IGNORECASE))
print(f"total={{total}}")
"""
_HALVES_TO_NESTED_RUNS = """\
question = {question}
half = len(context) // 2
answers = [rlm_query(question, context=part) for part in (context[:half], context[half:])]
""" + _FOUND_FROM_ANSWERS + """\
print(f"halves={{len(answers)}} found={{found}}")
"""


def _search_code(task: _Task) -> str:
    if task.kind == "needle":
        if task.subcalls:
            return _NEEDLE_BY_SUBCALLS.format(chunk=task.chunk_chars, question=repr(task.question))
        return _NEEDLE_BY_REGEX.format(pattern=repr(needle_pattern(task.subject).pattern))
    if task.subcalls:
        instruction = (f"Count the occurrences of the word '{task.subject}' in the text below. "
                       "Answer with a number only.")
        return _COUNT_BY_SUBCALLS.format(chunk=task.chunk_chars, instruction=repr(instruction),
                                         question=repr(task.question))
    return _COUNT_BY_REGEX.format(pattern=repr(r"\b" + re.escape(task.subject) + r"\b"),
                                  question=repr(task.question))


def _best_answer(task: _Task, messages: list[Message]) -> str | None:
    """What the REPL output so far says, newest first."""
    for message in reversed(messages):
        if message.role != "user":
            continue
        if task.kind == "count" and (total := _TOTAL.search(message.text)):
            return total.group(1)
        if task.kind == "needle" and (found := _FOUND.search(message.text)):
            try:
                values = ast.literal_eval(found.group(1))
            except (ValueError, SyntaxError):
                continue
            return str(values[0]) if values else NOT_FOUND
    return None


def _answer_line(task: _Task, messages: list[Message]) -> str:
    if task.kind == "count":
        return "FINAL_VAR(total)"
    return f"FINAL({_best_answer(task, messages) or NOT_FOUND})"


def _code(code: str, lead: str = "Let me search the whole context.") -> str:
    return f"{lead}\n```repl\n{code}```"


def _standard(task: _Task, turn: int, messages: list[Message]) -> str:
    if turn == 0:
        return _code(_search_code(task))
    return _answer_line(task, messages)


def _final_var(task: _Task, turn: int, messages: list[Message]) -> str:
    return _code(_search_code(task)) if turn == 0 else "The value is in `answer`.\nFINAL_VAR(answer)"


def _missing_var(task: _Task, turn: int, messages: list[Message]) -> str:
    if turn == 0:
        return _code(_search_code(task))
    return "FINAL_VAR(result_that_does_not_exist)" if turn == 1 else _answer_line(task, messages)


def _inline_final(task: _Task, turn: int, messages: list[Message]) -> str:
    if turn == 0:
        return _code(_search_code(task)) + "\nThe code will surely print 1111111.\nFINAL(1111111)"
    return _answer_line(task, messages)


def _prose_final(task: _Task, turn: int, messages: list[Message]) -> str:
    if turn == 0:
        return _code(_search_code(task))
    if turn == 1:
        return f"Based on the output, the answer is FINAL({_best_answer(task, messages)}) as shown above."
    return _answer_line(task, messages)


def _python_block(task: _Task, turn: int, messages: list[Message]) -> str:
    if turn == 0:
        return f"```python\n{_search_code(task)}```"
    return _standard(task, turn - 1, messages)


def _rlm_query(task: _Task, turn: int, messages: list[Message]) -> str:
    if turn > 0:
        return _answer_line(task, messages)
    code = _HALVES_TO_NESTED_RUNS.format(question=repr(task.question))
    return _code(code, "Each half goes to a nested run.")


def _early_answer(task: _Task, turn: int, messages: list[Message]) -> str:
    if turn == 0:
        return _code("print(context[:1000])\n", "A first look.")
    if turn == 1:
        return "FINAL(I could not find it)"
    if COVERAGE_CHECK_MARKER in messages[-1].text:
        return _code(_search_code(task), "Right, let me read all of it.")
    return _answer_line(task, messages)


def _exec_then_echo(encoded: str, turn: int, last: str) -> str:
    if turn > 0:
        return f"FINAL({ECHO_PREFIX}{base64.b64encode(last.encode()).decode()})"
    try:
        code = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "FINAL(the [[exec:...]] tag does not hold base64 of UTF-8 code)"
    return _code(code if code.endswith("\n") else code + "\n", "Running the injected code.")


def _tool_call(task: _Task, turn: int, messages: list[Message], tools: bool) -> str | CallTool:
    if turn == 0:
        return _code(_search_code(task))
    found = _best_answer(task, messages) or NOT_FOUND
    result = _TOOL_RESULT.search(_card(messages))
    if result is not None:
        return f"FINAL({found}; tool result: {result.group(1)})"
    return CallTool(found) if tools else f"FINAL({found})"


_BOMBS = {
    "infinite_loop": "while True:\n    pass\n",
    "memory_bomb": "hog = []\nwhile True:\n    hog.append('x' * 10**7)\n",
    "output_bomb": "while True:\n    print('spam' * 1000)\n",
    "swallow_timeout": "while True:\n    try:\n        while True:\n            pass\n"
                       "    except:\n        pass\n",
}


def _bomb_first(task: _Task, turn: int, messages: list[Message]) -> str:
    if turn == 0:
        return _code(_BOMBS[task.policy or ""], "First, something hostile.")
    return _standard(task, turn - 1, messages)


EXPLANATION = ("\n\nThis prints the positions where the key appears and the magic number next to it. "
               "If the needle is split across two chunks, the overlap between the chunks should still "
               "catch it; if nothing is printed, I will widen the search to other spellings of the key "
               "and look at the neighbourhood of each partial match before I give an answer. Once the "
               "number is printed, I will check that it belongs to the key that was asked about, and "
               "not to a similar one elsewhere in the text, and then answer with it.")


def _explains(task: _Task, turn: int, messages: list[Message]) -> str:
    return _code(_search_code(task)) + EXPLANATION if turn == 0 else _answer_line(task, messages)


_SCRIPTS = {
    **dict.fromkeys(_BOMBS, _bomb_first),
    "final_var": _final_var,
    "missing_var": _missing_var,
    "inline_final": _inline_final,
    "prose_final": _prose_final,
    "python_block": _python_block,
    "rlm_query": _rlm_query,
    "early_answer": _early_answer,
    "explains": _explains,
}
