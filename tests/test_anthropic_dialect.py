"""The Messages dialect's translation, in process: requests in chat form, and RLM answers (tool calls
included) as events the anthropic SDK's own stream accumulator takes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from proxy.api.messages import _rlm_events
from proxy.dialects.anthropic import MessageStream, parse_messages_request, without_unsigned_thinking
from proxy.errors import ProxyError
from proxy.rlm.events import IterationStarted, RunFinished, RunStats


def translate(**body: Any) -> dict[str, Any]:
    return parse_messages_request(orjson.dumps({"model": "m", "max_tokens": 10, **body})).chat.body


def test_request_fields_in_chat_form() -> None:
    chat = translate(
        system=[{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "b"}],
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}],
        tools=[{"name": "f", "input_schema": {"type": "object"}},
               {"type": "web_search_20250305", "name": "web"}],
        tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        stop_sequences=["END"], temperature=0.5, top_p=0.9, top_k=3, metadata={"user_id": "u"},
        context_management={"edits": []})
    assert chat == {
        "model": "m", "max_tokens": 10,
        "messages": [{"role": "system", "content": "a\n\nb"},
                     {"role": "user", "content": [{"type": "text", "text": "look"}, {
                         "type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False,
        "stop": ["END"], "temperature": 0.5, "top_p": 0.9, "user": "u"}


def test_tool_use_and_results_become_tool_calls_and_tool_messages() -> None:
    chat = translate(messages=[
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                          {"type": "text", "text": "calling"},
                                          {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": [{"type": "text", "text": "boom"}]},
                                     {"type": "text", "text": "and now?"}]},
        {"role": "system", "content": [{"type": "text", "text": "# Environment"}]}])
    assert chat["messages"] == [
        {"role": "assistant", "content": "calling",
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
        {"role": "system", "content": "# Environment"}]


@pytest.mark.parametrize(("choice", "expected"), [("auto", "auto"), ("any", "required"), ("none", "none")])
def test_tool_choice(choice: str, expected: str) -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    assert translate(messages=[{"role": "user", "content": "x"}], tools=tools,
                     tool_choice={"type": choice})["tool_choice"] == expected


@pytest.mark.parametrize(("thinking", "output_config", "effort"), [
    ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
    ({"type": "enabled", "budget_tokens": 31999, "display": "omitted"}, None, "high"),
    ({"type": "adaptive", "display": "omitted"}, {"effort": "medium"}, "medium"),
    ({"type": "disabled"}, None, None)])
def test_thinking_as_a_reasoning_effort(thinking: dict[str, Any], output_config: Any,
                                       effort: str | None) -> None:
    raw = orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                        "thinking": thinking, "output_config": output_config})
    assert parse_messages_request(raw).reasoning_effort == effort


def test_count_tokens_needs_no_max_tokens() -> None:
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True})
    assert parse_messages_request(raw, count_only=True).chat.body == {
        "model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(ProxyError, match="max_tokens"):
        parse_messages_request(raw)


async def _events(*items: Any) -> AsyncIterator[Any]:
    for item in items:
        yield item


def accumulated(events: list[bytes]) -> Any:
    """What the anthropic SDK's stream helper makes of the events."""
    snapshot, buffers = None, {}
    for event in events:
        data = orjson.loads(event.split(b"\ndata: ", 1)[1])
        if data["type"] != "ping":
            snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=buffers)
    return snapshot


async def test_an_rlm_run_ending_in_tool_calls_streams_tool_use_blocks() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    finished = RunFinished(answer="", finish_reason="tool_calls", stopped=None,
                           stats=RunStats(prompt_tokens=7, completion_tokens=3), tool_calls=(call,))
    run = SimpleNamespace(run_id="r1", events=_events(IterationStarted(iteration=1, depth=1), finished))
    events = [event async for event in _rlm_events(run, MessageStream("msg_1", "m"), 10)]  # type: ignore[arg-type]
    message = accumulated(events)
    thinking, tool_use = message.content
    assert thinking.type == "thinking" and thinking.thinking.startswith("Iteration 1")
    assert (tool_use.type, tool_use.id, tool_use.name, tool_use.input) == ("tool_use", "call_1", "lookup",
                                                                          {"q": "x"})
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 3)


def test_native_bodies_lose_only_the_proxys_unsigned_thinking() -> None:
    signed = {"type": "thinking", "thinking": "real", "signature": "sig"}
    ours = {"type": "thinking", "thinking": "Iteration 1: asking the root model.", "signature": ""}
    text = {"type": "text", "text": "a"}
    body = {"model": "m", "messages": [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": [ours, text]},
                                       {"role": "assistant", "content": [signed]}]}
    assert without_unsigned_thinking(body)["messages"][1:] == [
        {"role": "assistant", "content": [text]}, {"role": "assistant", "content": [signed]}]
    untouched = {"model": "m", "messages": [{"role": "assistant", "content": [signed]}]}
    assert without_unsigned_thinking(untouched) is untouched
