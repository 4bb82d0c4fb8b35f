"""The client's tools in RLM mode end to end: the official openai SDK, the real proxy under uvicorn, sandbox
workers, and the mock upstream's scripted root model, which (policy `tool_call`) finds the needle and then
calls the client's first tool with it instead of answering."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Server, StartProxy, rlm_config

KEY, VALUE = "quiet-meadow", "5820931"
QUESTION = f"What is the special magic number for {KEY} mentioned in the provided text? [[policy:tool_call]]"
PROMPT = needle_prompt(1_000_000, KEY, VALUE, depth=0.61, question=QUESTION)
TOOL: Any = {"type": "function", "function": {
    "name": "record_answer", "description": "Record the answer in the client's notes.",
    "parameters": {"type": "object", "properties": {"value": {"type": "string"}}, "required": ["value"]}}}
NO_CACHE = {"cache-control": "no-cache, no-store"}


@pytest.fixture(scope="module")
def rlm_proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy(rlm_config(mock_upstream))


def client(proxy: Server, **http: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=120,
                         http_client=httpx.Client(**http))


def create(proxy: Server, messages: list[dict[str, Any]] | None = None,
           **kwargs: Any) -> tuple[Any, httpx.Headers]:
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="mock", messages=messages or [{"role": "user", "content": PROMPT}], **kwargs)
    return raw.parse(), raw.headers


def assert_calls_record_answer(call: Any) -> None:
    assert call.type == "function" and call.id
    assert call.function.name == "record_answer"
    assert json.loads(call.function.arguments) == {"value": VALUE}


def test_the_root_model_answers_with_a_call_of_the_clients_tool(rlm_proxy: Server,
                                                                mock_upstream: Mock) -> None:
    mock_upstream.reset()
    completion, headers = create(rlm_proxy, tools=[TOOL], extra_headers=NO_CACHE)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert_calls_record_answer(call)
    assert headers["x-rlm-mode"] == "rlm" and headers["x-rlm-run-id"]
    assert headers["x-rlm-iterations"] == "2" and int(headers["x-rlm-subcalls"]) >= 8
    assert "x-rlm-stopped" not in headers
    summary = completion.model_extra["rlm"]
    assert summary["run_id"] == headers["x-rlm-run-id"] and summary["stopped"] is None
    assert summary["context_coverage"] == 1.0
    stats = mock_upstream.stats()
    # Both root calls offered the tool; the sub-calls, which read the whole prompt, never did.
    assert stats["root_calls_with_tools"] == 2 and stats["other_calls_with_tools"] == 0
    assert stats["requests"] >= 2 + int(headers["x-rlm-subcalls"])


def test_the_tool_call_comes_through_litellms_backend(mock_upstream: Mock, start_proxy: StartProxy) -> None:
    proxy = start_proxy(rlm_config(mock_upstream, upstream={"fast_path": False}))
    completion, headers = create(proxy, tools=[TOOL], extra_headers=NO_CACHE)
    assert headers["x-rlm-mode"] == "rlm" and completion.choices[0].finish_reason == "tool_calls"
    [call] = completion.choices[0].message.tool_calls
    assert_calls_record_answer(call)


def test_a_streamed_tool_call_accumulates_in_the_sdks_stream_helper(rlm_proxy: Server) -> None:
    seen: list[httpx.Response] = []
    sdk = client(rlm_proxy, event_hooks={"response": [seen.append]})
    with sdk.chat.completions.stream(model="mock", messages=[{"role": "user", "content": PROMPT}],
                                     tools=[TOOL], stream_options={"include_usage": True},
                                     extra_headers=NO_CACHE) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert_calls_record_answer(call)
    assert seen[0].headers["x-rlm-mode"] == "rlm" and seen[0].headers["x-rlm-run-id"]
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks
                        if c.choices)
    assert "Iteration 2" in reasoning
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.total_tokens > 0
    assert usage_chunk.model_extra["rlm"]["run_id"] == seen[0].headers["x-rlm-run-id"]


def test_the_follow_up_with_the_tools_result_gets_an_answer_that_uses_it(rlm_proxy: Server) -> None:
    completion, _ = create(rlm_proxy, tools=[TOOL], extra_headers=NO_CACHE)
    [call] = completion.choices[0].message.tool_calls
    messages = [{"role": "user", "content": PROMPT},
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "recorded in notes.md"}]
    follow_up, headers = create(rlm_proxy, messages, tools=[TOOL], extra_headers=NO_CACHE)
    assert headers["x-rlm-mode"] == "rlm"
    assert follow_up.choices[0].finish_reason == "stop"
    assert follow_up.choices[0].message.content == f"{VALUE}; tool result: recorded in notes.md"
    assert follow_up.choices[0].message.tool_calls is None


def test_tool_choice_none_offers_no_tools_to_the_root_model(rlm_proxy: Server, mock_upstream: Mock) -> None:
    mock_upstream.reset()
    completion, _ = create(rlm_proxy, tools=[TOOL], tool_choice="none", extra_headers=NO_CACHE)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == VALUE
    stats = mock_upstream.stats()
    assert stats["root_calls_with_tools"] == 0 and stats["other_calls_with_tools"] == 0


def test_cached_root_replies_keep_their_tool_calls_and_only_for_the_same_tools(rlm_proxy: Server,
                                                                               mock_upstream: Mock) -> None:
    prompt = needle_prompt(300_000, KEY, VALUE, depth=0.2, question=QUESTION)
    messages = [{"role": "user", "content": prompt}]
    create(rlm_proxy, messages, tools=[TOOL])  # fills the cache
    mock_upstream.reset()
    again, _ = create(rlm_proxy, messages, tools=[TOOL])
    [call] = again.choices[0].message.tool_calls
    assert_calls_record_answer(call)
    assert mock_upstream.stats()["requests"] == 0  # every call, the root's tool call included, was cached
    # The same run without tools must not be served the reply that called one, nor a run whose tool
    # (same name) now takes other arguments the reply that called the old one.
    without, _ = create(rlm_proxy, messages, tools=[TOOL], tool_choice="none")
    assert without.choices[0].finish_reason == "stop" and without.choices[0].message.content == VALUE
    renamed = {"type": "function", "function": {**TOOL["function"], "parameters": {
        "type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}}}
    changed, _ = create(rlm_proxy, messages, tools=[renamed])
    [call] = changed.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"note": VALUE}
