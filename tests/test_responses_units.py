"""The Responses translation in isolation: RLM answers that end in tool calls (rendered from a hand-built
RunFinished, streamed and not), checked by the openai SDK's own stream state machine; item translation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import orjson
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from proxy.api.responses import _rlm_events
from proxy.dialects.responses import (
    chat_body,
    chat_messages,
    output_items,
    parse_request,
    response_from_completion,
    response_shell,
)
from proxy.dialects.responses_stream import ResponseEvents
from proxy.errors import ProxyError
from proxy.rlm.events import Event, IterationStarted, RunFinished, RunStats

CALLS = ({"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "a"}'}},
         {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "b"}'}})


def sdk_final(stream: bytes) -> tuple[list[str], Any]:
    """Feed the SSE bytes to the SDK's stream state: it raises on any event out of order."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=omit)
    types, final = [], None
    for block in stream.split(b"\n\n"):
        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if not data:
            continue
        event = construct_type(type_=ResponseStreamEvent, value=orjson.loads(data[0]))
        state.handle_event(event)  # type: ignore[arg-type]
        types.append(event.type)  # type: ignore[attr-defined]
        if event.type == "response.completed":  # type: ignore[attr-defined]
            final = event.response  # type: ignore[attr-defined]
    return types, final


def request(**body: Any) -> Any:
    return parse_request({"model": "m", "input": "hi", **body})


async def collect(events: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in events])


def rlm_stream(finished: RunFinished) -> bytes:
    async def run_events() -> AsyncIterator[Event]:
        yield IterationStarted(iteration=1, depth=1)
        yield finished

    run = SimpleNamespace(run_id="r1", events=run_events())
    events = ResponseEvents(response_shell(request(), "resp_rlm_r1"))
    return asyncio.run(collect(_rlm_events(events, run, heartbeat_s=5)))  # type: ignore[arg-type]


def test_rlm_tool_calls_stream_as_function_call_items() -> None:
    finished = RunFinished(answer="", finish_reason="tool_calls", stopped=None, stats=RunStats(),
                           tool_calls=CALLS)
    types, final = sdk_final(rlm_stream(finished))
    assert types.count("response.function_call_arguments.done") == 2
    reasoning, *calls = final.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text.startswith("Iteration 1")
    assert [(call.type, call.call_id, call.arguments) for call in calls] == [
        ("function_call", "call_1", '{"q": "a"}'), ("function_call", "call_2", '{"q": "b"}')]
    assert final.model_extra["rlm"]["run_id"] == "r1"


def test_rlm_answer_then_tool_call_stream() -> None:
    finished = RunFinished(answer="let me check", finish_reason="tool_calls", stopped=None, stats=RunStats(),
                           tool_calls=CALLS[:1])
    _, final = sdk_final(rlm_stream(finished))
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[1].content[0].text == "let me check"


def test_rlm_tool_calls_as_output_items() -> None:
    items = output_items(None, "", CALLS)
    assert [(item["type"], item["call_id"], item["name"]) for item in items] == [
        ("function_call", "call_1", "lookup"), ("function_call", "call_2", "lookup")]


def test_a_truncated_answer_is_incomplete() -> None:
    events = ResponseEvents(response_shell(request(), "resp_1"))
    stream = events.start() + events.text("abc") + events.finish("length", {"prompt_tokens": 3,
                                                                            "completion_tokens": 1})
    assert b"response.incomplete" in stream
    assert events.response is not None
    assert events.response["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failure_keeps_the_response_id() -> None:
    events = ResponseEvents(response_shell(request(), "resp_1"))
    stream = events.start() + events.text("ab") + events.fail(ProxyError(502, "gone", code="upstream_error"))
    failed = orjson.loads(stream.split(b"\n\n")[-2].split(b"data: ")[1])
    assert failed["type"] == "response.failed" and failed["response"]["id"] == "resp_1"
    assert failed["response"]["error"] == {"code": "upstream_error", "message": "gone"}


def test_items_translate_to_chat_messages() -> None:
    items = parse_request({"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "a"},
                                     {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
        {"type": "message", "role": "assistant", "content": "b"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "r"}]}]})
    assert chat_messages(items.input_items) == [
        {"role": "user", "content": [
            {"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
        {"role": "assistant", "content": "b",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"}]


def test_request_fields_translate_and_unknown_ones_drop() -> None:
    body = chat_body(request(
        instructions="sys", max_output_tokens=9, temperature=0.5, top_p=0.5, metadata={"a": "b"},
        tools=[{"type": "function", "name": "f", "parameters": {}}, {"type": "web_search"}],
        tool_choice={"type": "function", "name": "f"}, parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "n", "schema": {}, "strict": True}},
        reasoning={"effort": "low"}, prompt_cache_key="k", client_metadata={}, include=["x"], store=False),
        [])
    assert body == {
        "model": "m", "stream": False,
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False,
        "max_tokens": 9, "temperature": 0.5, "top_p": 0.5,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "n", "schema": {}, "strict": True}},
        "reasoning_effort": "low"}


def test_completion_with_reasoning_content() -> None:
    completion = {"choices": [{"message": {"role": "assistant", "content": "x", "reasoning_content": "think"},
                               "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                            "prompt_tokens_details": {"cached_tokens": 1}}}
    response = response_from_completion(response_shell(request(), "resp_1"), completion)
    assert [item["type"] for item in response["output"]] == ["reasoning", "message"]
    assert response["usage"]["input_tokens_details"] == {"cached_tokens": 1}
    assert response["usage"]["total_tokens"] == 7
