"""The client's tools in RLM mode, in the engine: a scripted root model (a fake caller) answers with tool
calls at various points of a run, in real sandbox workers. What reaches the root model and the sub-models
is recorded; the end-to-end path (proxy, mock, openai SDK) is in test_rlm_tools_e2e.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from proxy.api.request import parse_chat_request
from proxy.api.rlm import run_request
from proxy.cache import CachePolicy, cache_key
from proxy.config import RLMSettings
from proxy.errors import ProxyError
from proxy.rlm.budget import RunLimits
from proxy.rlm.engine import ClientTools, ModelReply, RLMEngine, RunRequest, TextSink
from proxy.rlm.events import RunFinished
from proxy.rlm.prompts import build_input, context_card
from sandbox import SandboxPool
from tests.engine_fakes import UnlimitedModels

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the pool lives in the module's loop

TOOL = {"type": "function", "function": {"name": "read_file", "description": "Read a file.",
                                         "parameters": {"type": "object", "properties": {
                                             "path": {"type": "string"}}, "required": ["path"]}}}
TOOLS = ClientTools((TOOL,), "auto", False)
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'}}
CONTEXT = "line of text\n" * 2000
SETTINGS = RLMSettings(min_coverage_to_answer=0)  # answers are not questioned here

Script = Callable[[list[dict[str, str]], dict[str, Any]], ModelReply]


def text(reply: str, calls: tuple[dict[str, Any], ...] = ()) -> Script:
    return lambda messages, params: ModelReply(reply, 10, 5, 0.0, tool_calls=calls)


def code(source: str) -> Script:
    return text(f"```repl\n{source}\n```")


class ScriptedCaller(UnlimitedModels):
    """A ModelCaller: root calls follow the script, sub-calls answer "sub"; every call is recorded."""

    def __init__(self, *script: Script) -> None:
        self.script = list(script)
        self.root_calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []
        self.subcalls: list[dict[str, Any]] = []

    async def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                       cache: CachePolicy, on_text: TextSink | None = None) -> ModelReply:
        if messages[0]["role"] == "system":
            self.root_calls.append((messages, params))
            reply = self.script.pop(0)(messages, params)
            if on_text is not None:
                on_text(reply.text)
            return reply
        self.subcalls.append(params)
        return ModelReply("sub", 1, 1, 0.0)


async def run(pool: SandboxPool, caller: ScriptedCaller, tools: ClientTools | None = TOOLS,
              **limits: Any) -> RunFinished:
    run_limits = RunLimits(**{"max_iterations": 5, "max_depth": 1, "max_subcalls": 10, "max_cost_usd": None,
                              "timeout_s": 60.0, **limits})
    request = RunRequest(messages=[{"role": "user", "content": CONTEXT}], root_model="m", sub_model="m",
                         limits=run_limits, cache=CachePolicy(""), root_params={"temperature": 0.5},
                         tools=tools)
    events = [event async for event in RLMEngine(caller, pool, SETTINGS).run(request)]
    assert isinstance(events[-1], RunFinished)
    return events[-1]


@in_module_loop
async def test_a_tool_call_at_the_first_iteration_ends_the_run_with_it(engine_pool: SandboxPool) -> None:
    caller = ScriptedCaller(text("I need to read the file first.", (CALL,)))
    finished = await run(engine_pool, caller)
    assert finished.tool_calls == (CALL,)
    assert finished.finish_reason == "tool_calls"
    assert finished.answer == "I need to read the file first."
    assert finished.stopped is None and finished.stats.iterations == 1
    messages, params = caller.root_calls[0]
    assert params == {"temperature": 0.5, "tools": [TOOL], "tool_choice": "auto",
                      "parallel_tool_calls": False}
    assert "offers you its own tools" in messages[0]["content"] and "read_file" in messages[0]["content"]


@in_module_loop
async def test_a_tool_call_after_code_and_subcalls_ends_the_run_at_that_iteration(
        engine_pool: SandboxPool) -> None:
    caller = ScriptedCaller(code("print(len(context))"), code("print(llm_query('what is it?'))"),
                            text("", (CALL,)))
    finished = await run(engine_pool, caller)
    assert (finished.finish_reason, finished.tool_calls, finished.answer) == ("tool_calls", (CALL,), "")
    assert finished.stats.iterations == 3 and finished.stats.blocks == 2
    assert all("tools" in params for _, params in caller.root_calls)  # offered at every iteration
    assert caller.subcalls == [{}]  # sub-calls never carry the client's tools


@in_module_loop
async def test_a_tool_call_next_to_code_is_not_made_and_the_model_is_told(engine_pool: SandboxPool) -> None:
    caller = ScriptedCaller(text("```repl\nprint('looked')\n```", (CALL,)), text("FINAL(no file needed)"))
    finished = await run(engine_pool, caller)
    assert (finished.finish_reason, finished.tool_calls, finished.answer) == ("stop", (), "no file needed")
    feedback = caller.root_calls[1][0][-1]["content"]
    assert "looked" in feedback
    assert "also called read_file before seeing this output, so the call was not made" in feedback


@in_module_loop
async def test_the_final_request_at_a_limit_offers_no_tools(engine_pool: SandboxPool) -> None:
    # This root model calls a tool whenever it may: at the limit it may not, and answers in text.
    def eager(messages: list[dict[str, str]], params: dict[str, Any]) -> ModelReply:
        return ModelReply("FINAL(best guess)", 1, 1, 0.0, tool_calls=(CALL,) if "tools" in params else ())

    caller = ScriptedCaller(code("x = 1"), code("x += 1"), eager)
    finished = await run(engine_pool, caller, max_iterations=2)
    assert (finished.finish_reason, finished.stopped) == ("length", "max_iterations")
    assert finished.answer == "best guess"
    assert finished.tool_calls == ()
    assert "tools" not in caller.root_calls[-1][1]


@in_module_loop
async def test_nested_runs_are_not_offered_the_clients_tools(engine_pool: SandboxPool) -> None:
    caller = ScriptedCaller(code("print(rlm_query('summarise', context='abc'))"), text("FINAL(nested)"),
                            text("", (CALL,)))
    finished = await run(engine_pool, caller, max_depth=2)
    assert finished.tool_calls == (CALL,) and finished.stats.max_depth == 2
    (_, top), (nested_messages, nested), _ = caller.root_calls
    assert "tools" in top and "tools" not in nested
    assert "read_file" not in nested_messages[0]["content"]


@in_module_loop
async def test_without_tools_the_prompt_does_not_mention_them(engine_pool: SandboxPool) -> None:
    caller = ScriptedCaller(text("FINAL(done)"))
    finished = await run(engine_pool, caller, tools=None)
    assert finished.finish_reason == "stop"
    messages, params = caller.root_calls[0]
    assert "tools" not in params and "offers you its own tools" not in messages[0]["content"]


# ---------------------------------------------------------------------------------------------------------
# What a request asks for


def chat(**extra: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "q"}], **extra})


def tools_of(**extra: Any) -> ClientTools | None:
    return run_request(parse_chat_request(chat(**extra)), "m", RLMSettings(), CachePolicy("")).tools


def test_tools_are_offered_unless_tool_choice_is_none() -> None:
    assert tools_of(tools=[TOOL]) == ClientTools((TOOL,))
    assert tools_of(tools=[TOOL], tool_choice="auto", parallel_tool_calls=True) == ClientTools(
        (TOOL,), "auto", True)
    assert tools_of(tools=[TOOL], tool_choice="none") is None
    assert tools_of(tools=[]) is None and tools_of() is None


@pytest.mark.parametrize(("extra", "param", "code_"), [
    ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools[0].type", "unsupported_value"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name", "invalid_value"),
    ({"tools": [{"type": "function"}]}, "tools[0].function", "invalid_type"),
    ({"tools": {"type": "function"}}, "tools", "invalid_type"),
    ({"tools": [TOOL], "parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_type"),
    ({"functions": [TOOL["function"]]}, "functions", "unsupported_parameter"),
    ({"functions": [TOOL["function"]], "function_call": "auto"}, "functions", "unsupported_parameter"),
    ({"tools": [TOOL], "tool_choice": "required"}, "tool_choice", "unsupported_value"),
])
def test_tools_rlm_mode_cannot_offer_are_refused(extra: dict[str, Any], param: str, code_: str) -> None:
    with pytest.raises(ProxyError) as info:
        tools_of(**extra)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code_)


def test_functions_the_client_says_not_to_call_are_harmless() -> None:
    assert tools_of(functions=[TOOL["function"]], function_call="none") is None


def test_the_tools_are_part_of_a_root_calls_cache_key() -> None:
    messages = [{"role": "user", "content": "q"}]
    plain = cache_key("rlm", "m", messages, {}, "")
    assert plain != cache_key("rlm", "m", messages, TOOLS.params(), "")
    assert cache_key("rlm", "m", messages, TOOLS.params(), "") != cache_key(
        "rlm", "m", messages, ClientTools((TOOL,), "auto", True).params(), "")


# ---------------------------------------------------------------------------------------------------------
# A tool's result coming back


def test_a_tool_result_after_the_question_is_shown_on_the_context_card() -> None:
    messages = [{"role": "user", "content": "big input " * 500 + "Which file holds the key?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "key=42"}]
    run_input = build_input(messages)
    assert run_input.tool_results == ("key=42",)
    assert isinstance(run_input.context, list)
    assert run_input.context[1] == {"role": "assistant", "content": (
        '[called tool read_file with arguments {"path": "a.txt"} (call id call_1)]')}
    card = context_card(run_input, None)
    assert "<tool_result chars=\"6\">\nkey=42\n</tool_result>" in card
    assert "Which file holds the key?" in card


def test_tool_results_before_the_question_are_only_in_context() -> None:
    messages = [{"role": "user", "content": "first"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "old"},
                {"role": "user", "content": "next"}]
    assert build_input(messages).tool_results == ()
