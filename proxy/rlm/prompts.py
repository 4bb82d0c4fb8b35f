"""Everything the root model reads: the system prompt, the description of `context`, and the feedback
after each reply. The wording counters the failure modes seen in published reproductions: answering
before reading the end of the context, never saying "not found", eyeballing numbers, FINAL in prose, and
sub-call prompts larger than the sub-model's window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.model_facts import message_text
from sandbox import ALLOWED_MODULES

# Heads and tails of the question and any system message, as shown to the root model.
PREVIEW_CHARS = 1500
MAX_SYSTEM_CHARS = 4000

SYSTEM_PROMPT = """\
You are the root model of a Recursive Language Model (RLM). You answer a request about an input that is \
too long to read at once. The input is loaded in a Python REPL as the variable `context`; you see only \
its description and a preview of the question. You work by writing Python in ```repl blocks: the REPL \
runs them and shows you what they print. Variables persist between blocks and replies.

In the REPL you have:
- `context`: the whole input.
{subcall_tools}\
- `FINAL(answer)`: call it in code to answer with a computed value.
- `FINAL_VAR(name)`: answer with the value of the REPL variable called `name` (pass the name as a string).
- `SHOW_VARS()`: lists your variables and their types.
- `print(...)`: the only way to see anything. Each block's output is cut after {max_output_chars:,} \
characters, so print summaries, counts and short excerpts, not whole chunks.
- `import` works for these modules only: {modules}.

How to work:
1. Look before you answer: print the length, a few slices and the structure (how records or sections \
are delimited) of `context`.
2. Cover the whole input. {coverage_advice} Answers are often near the end; do not stop after the start.
3. Let code do the bookkeeping: parse numbers and structured text (json.loads, int(), re) in Python, keep \
results in variables, never add up or compare numbers in your head.
{subcall_advice}\
5. Write one or more ```repl blocks in a reply, then stop and wait for their output. Never write the \
output yourself, and never answer in the same reply as code whose output you have not seen.
6. When you know the answer, reply with FINAL(your answer) on a line of its own, outside code blocks, or \
FINAL_VAR(variable_name). If the input does not contain what was asked, say so: "FINAL(Not found: ...)" \
is the right answer when that is the truth.

Only ```repl blocks run. You have at most {max_iterations} replies.
"""

SUBCALL_TOOLS = """\
- `llm_query(prompt, model=None) -> str`: asks a sub-model and returns its answer. The sub-model sees \
only the prompt you pass, so put the text it needs in the prompt. {prompt_limit}
- `llm_query_batched(prompts, model=None) -> list[str]`: many llm_query calls at once, answers in the \
same order; much faster than calling llm_query in a loop.
"""

RLM_QUERY_TOOL = """\
- `rlm_query(prompt, context=None) -> str`: hands a sub-task to a nested RLM that gets its own REPL \
with `context` (or the prompt itself when no context is given); use it for sub-inputs too long for one \
llm_query prompt.
"""

SUBCALL_ADVICE = """\
4. Sub-models can be wrong or find nothing: ask them for a fixed answer format (for instance "NOT FOUND" \
when absent), check their answers in code, and say which chunk an answer came from.
"""

CLIENT_TOOLS = """
The client that sent this request also offers you its own tools, which you may call the way you call \
tools natively (not from the REPL): {names}. Call one only when the task needs something that only the \
client can do or know (its files, its commands, its user); everything about `context` you do with code. \
A tool call ends this run: the client runs it, and its result comes back in the conversation of a later \
request, which you will then see in `context`. Never call a tool in the same reply as code: such a call \
is not made. When the task does not need a tool, answer with FINAL as usual.
"""

FINAL_REQUEST = """\
The run has reached its limit ({limit}). Do not write any more code. Give your best final answer now, \
from what you have found so far, as FINAL(your answer) on a line of its own."""


@dataclass(frozen=True)
class PromptSettings:
    max_iterations: int
    max_output_chars: int
    subcalls: bool  # False for the code-only ablation: no llm_query at all
    nested_rlm: bool  # rlm_query starts a nested run (depth left)
    sub_prompt_chars: int | None  # what one llm_query prompt may hold, when known
    client_tools: tuple[str, ...] = ()  # names of the client's tools the root model may call


def system_prompt(settings: PromptSettings, override: str | None = None) -> str:
    """The protocol (or the operator's own prompt), and what the client's tools are for when it has some."""
    tools = CLIENT_TOOLS.format(names=", ".join(settings.client_tools)) if settings.client_tools else ""
    return (override or _protocol(settings)) + tools


def _protocol(settings: PromptSettings) -> str:
    if settings.sub_prompt_chars is not None:
        limit = (f"Each prompt may hold up to {settings.sub_prompt_chars:,} characters; longer ones come "
                 "back as an \"Error: ...\" string.")
    else:
        limit = "Keep each prompt well under the sub-model's window."
    tools = SUBCALL_TOOLS.format(prompt_limit=limit) if settings.subcalls else ""
    if settings.nested_rlm:
        tools += RLM_QUERY_TOOL
    if settings.subcalls:
        coverage = ("Split it into chunks that fit one sub-model prompt and query them, usually with "
                    "llm_query_batched.")
    else:
        coverage = "Search it with code (re, str methods) over all of it, not a sample."
    return SYSTEM_PROMPT.format(subcall_tools=tools, max_output_chars=settings.max_output_chars,
                                modules=", ".join(ALLOWED_MODULES), coverage_advice=coverage,
                                subcall_advice=SUBCALL_ADVICE if settings.subcalls else "",
                                max_iterations=settings.max_iterations)


@dataclass(frozen=True)
class RunInput:
    """The conversation turned into the REPL's `context` plus what the root model is shown of it."""

    context: str | list[dict[str, str]]
    question: str  # the final user message (where questions usually are)
    system: str | None  # a short system message, shown as is
    tool_results: tuple[str, ...] = ()  # results of tool calls that follow the final user message

    @property
    def total_chars(self) -> int:
        if isinstance(self.context, str):
            return len(self.context)
        return sum(len(message["content"]) for message in self.context)


def build_input(messages: list[dict[str, Any]]) -> RunInput:
    """One user message (with or without system messages) becomes a `str`; anything else a `list`."""
    texts = [(str(m.get("role")), _text_with_tool_calls(m)) for m in messages]
    users = [text for role, text in texts if role == "user"]
    systems = [text for role, text in texts if role in ("system", "developer")]
    question = users[-1] if users else texts[-1][1]
    last_user = max((i for i, (role, _) in enumerate(texts) if role == "user"), default=-1)
    results = tuple(text for role, text in texts[last_user + 1:] if role == "tool")
    system = "\n\n".join(systems) if systems and sum(map(len, systems)) <= MAX_SYSTEM_CHARS else None
    if len(users) == 1 and len(users) + len(systems) == len(texts):
        return RunInput(users[0], question, system)
    return RunInput([{"role": role, "content": text} for role, text in texts], question, system, results)


def _text_with_tool_calls(message: dict[str, Any]) -> str:
    """A message's text; an assistant's calls of the client's tools are written out after it, so that the
    root model sees what was called when the results come back."""
    calls = message.get("tool_calls") if message.get("role") == "assistant" else None
    functions = [(call, call["function"]) for call in (calls if isinstance(calls, list) else ())
                 if isinstance(call, dict) and isinstance(call.get("function"), dict)]
    written = [f"[called tool {function.get('name')} with arguments {function.get('arguments')} "
               f"(call id {call.get('id')})]" for call, function in functions]
    return "\n".join([text, *written] if (text := message_text(message)) else written)


def preview(text: str, chars: int = PREVIEW_CHARS) -> str:
    if len(text) <= 2 * chars:
        return text
    cut = len(text) - 2 * chars
    return f"{text[:chars]}\n[... {cut:,} characters not shown ...]\n{text[-chars:]}"


def context_card(run_input: RunInput, sub_prompt_chars: int | None) -> str:
    context = run_input.context
    if isinstance(context, str):
        kind = f"Your context is a str of {len(context):,} characters."
        where = "It is the user's whole message; its beginning and end are shown below."
    else:
        lengths = [len(m["content"]) for m in context]
        shown = ", ".join(f"{n:,}" for n in lengths[:50]) + (", ..." if len(lengths) > 50 else "")
        kind = (f"Your context is a list of {len(context):,} messages (dicts with 'role' and 'content'), "
                f"{run_input.total_chars:,} characters in all; content lengths: [{shown}].")
        where = "The question is the last user message (context[-1] or the last with role 'user')."
    parts = [kind]
    if sub_prompt_chars is not None:
        parts.append(f"Sub-model prompt limit: about {sub_prompt_chars:,} characters per llm_query prompt.")
    if run_input.system:
        parts.append(f"System instructions for the answer:\n<system>\n{run_input.system}\n</system>")
    parts.append(f"{where}\n<question chars=\"{len(run_input.question):,}\">\n{preview(run_input.question)}\n"
                 "</question>")
    if run_input.tool_results:
        results = "\n".join(f"<tool_result chars=\"{len(result):,}\">\n{preview(result)}\n</tool_result>"
                            for result in run_input.tool_results)
        parts.append("The conversation ends with the results of the client's tools, called for this question "
                     f"(the last messages of `context`, role 'tool'):\n{results}")
    parts.append("Your code has not read any of `context` yet. Start by exploring it in a ```repl block.")
    return "\n\n".join(parts)


@dataclass(frozen=True)
class BlockReport:
    # No timings: the same code and output must give the same prompt, or a re-run misses the cache.
    outcome: str
    output: str


def feedback(blocks: list[BlockReport], notes: list[str], coverage: float, iteration: int,
             max_iterations: int) -> str:
    """The user message that answers a reply: each block's output, then notes from the engine."""
    parts = []
    for number, block in enumerate(blocks, 1):
        output = block.output if block.output.strip() else "(no output)"
        parts.append(f"Block {number} of {len(blocks)} ({block.outcome}):\n"
                     f"```text\n{output}\n```")
    parts.extend(notes)
    parts.append(f"[Your code has read {coverage:.0%} of `context` so far. Reply {iteration} of "
                 f"{max_iterations} done.]")
    return "\n\n".join(parts)


def coverage_check(coverage: float) -> str:
    return (f"Before you answer: your code has read only about {coverage:.0%} of `context`. If the answer "
            "could be in the part you have not read, check it now. If you are sure, give the same FINAL "
            "answer again.")


NOTE_CODE_BEFORE_ANSWER = ("Your reply also gave a final answer before seeing this output, so it was not "
                           "accepted. If the output confirms it, answer again.")
NOTE_NO_CODE_NO_ANSWER = ("Your reply had no ```repl block and no final answer. Write code in ```repl "
                          "blocks to continue, or answer with FINAL(...) on a line of its own.")
NOTE_INLINE_FINAL = ("Your reply mentions FINAL inside a sentence, which is not an answer. To answer, put "
                     "FINAL(your answer) alone on its own line, outside code.")
NOTE_WORKER_LOST = "The REPL was restarted: all your variables are gone; `context` is loaded again."


def note_other_languages(languages: list[str]) -> str:
    return (f"Only ```repl blocks run; your {', '.join(sorted(set(languages)))} block(s) did not. "
            "Use ```repl.")


def note_tool_calls_before_output(calls: tuple[dict[str, Any], ...]) -> str:
    names = ", ".join(str(call["function"]["name"]) for call in calls)
    return (f"Your reply also called {names} before seeing this output, so the call was not made. If the "
            "output confirms it is needed, call it again in a reply without code.")


def note_missing_variable(name: str, problem: str | None = None) -> str:
    if problem is not None:
        return f"FINAL_VAR({name}) is not an answer: {problem}"
    return (f"FINAL_VAR({name}): there is no REPL variable named '{name}', so that is not an answer. "
            "Set the variable in code first, or answer with FINAL(...).")
