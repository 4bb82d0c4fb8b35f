"""POST /v1/responses and the stored-response routes, driven by the official openai SDK through the real proxy
in front of the mock upstream (bridged to chat completions)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.harness import EXTRA_KEY, MASTER_KEY, Mock, Server, StartProxy, proxy_config

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}


@pytest.fixture(scope="module", params=["fast_path", "litellm"])
def responses_proxy(request: pytest.FixtureRequest, mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy(proxy_config(mock_upstream, upstream={"fast_path": request.param == "fast_path"}))


def client(proxy: Server, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_string_input(responses_proxy: Server) -> None:
    raw = client(responses_proxy).responses.with_raw_response.create(model="mock", input="hello there")
    response = raw.parse()
    assert raw.headers["x-rlm-mode"] == "direct"
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "mock reply: hello there"
    assert response.model == "mock"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_item_list_with_instructions_and_earlier_output(responses_proxy: Server) -> None:
    response = client(responses_proxy).responses.create(
        model="mock", instructions="Be brief.", temperature=0.2, top_p=0.9, max_output_tokens=50,
        metadata={"trace": "t1"},
        input=[{"role": "user", "content": [{"type": "input_text", "text": "first question"}]},
               {"type": "message", "role": "assistant", "id": "msg_earlier", "status": "completed",
                "content": [{"type": "output_text", "text": "first answer", "annotations": []}]},
               {"role": "developer", "content": "style: plain"},
               {"role": "user", "content": "second question"}])
    assert response.output_text == "mock reply: second question"
    assert response.instructions == "Be brief."
    assert response.metadata == {"trace": "t1"}
    assert response.temperature == 0.2 and response.max_output_tokens == 50


def test_function_call_round_trip(responses_proxy: Server) -> None:
    openai_client = client(responses_proxy)
    first = openai_client.responses.create(model="mock", input="weather? [[mock:tool_call]]",
                                           tools=[WEATHER_TOOL], tool_choice="auto",
                                           parallel_tool_calls=False)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "mock"}
    second = openai_client.responses.create(
        model="mock", tools=[WEATHER_TOOL],
        input=[{"role": "user", "content": "weather? [[mock:tool_call]]"},
               *[item.model_dump(exclude_none=True) for item in first.output],
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}])
    assert second.output_text == "tool result: sunny, 21 C"


def test_json_schema_text_format(responses_proxy: Server) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}
    response = client(responses_proxy).responses.create(
        model="mock", input="give json",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}})
    assert response.status == "completed"
    assert response.text.format.type == "json_schema"


def test_codex_style_unknown_keys_are_accepted(responses_proxy: Server) -> None:
    response = client(responses_proxy).responses.create(
        model="mock", input=[{"type": "message", "role": "developer", "content": [
            {"type": "input_text", "text": "You are a coding agent."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi codex"}]}],
        tools=[WEATHER_TOOL, {"type": "web_search"}], tool_choice="auto", parallel_tool_calls=False,
        reasoning={"effort": "medium", "summary": "auto"}, store=False,
        include=["reasoning.encrypted_content"],
        extra_body={"prompt_cache_key": "abc", "client_metadata": {"x": "y"}})
    assert response.output_text == "mock reply: hi codex"


def test_stream_helper_parses_every_event(responses_proxy: Server) -> None:
    seen: list[str] = []
    with client(responses_proxy).responses.stream(model="mock", input="stream me please") as stream:
        for event in stream:
            seen.append(event.type)
        final = stream.get_final_response()
    assert final.output_text == "mock reply: stream me please"
    assert final.usage is not None and final.usage.output_tokens > 0
    assert seen[:2] == ["response.created", "response.in_progress"]
    assert seen[-1] == "response.completed"
    assert "response.output_text.delta" in seen and "response.output_text.done" in seen


def test_raw_stream_numbers_its_events(responses_proxy: Server) -> None:
    events = list(client(responses_proxy).responses.create(model="mock", input="count", stream=True))
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_stream_helper_with_a_function_call(responses_proxy: Server) -> None:
    with client(responses_proxy).responses.stream(model="mock", input="call it [[mock:tool_call]]",
                                                  tools=[WEATHER_TOOL]) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in types
    (call,) = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "mock"}


def test_stream_breaking_midway_ends_with_response_failed(responses_proxy: Server) -> None:
    events = list(client(responses_proxy).responses.create(model="mock", input="break [[mock:stream_error]]",
                                                           stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None
    assert client(responses_proxy).responses.create(model="mock", input="still up").status == "completed"


def test_store_retrieve_continue_list_and_delete(responses_proxy: Server) -> None:
    openai_client = client(responses_proxy)
    first = openai_client.responses.create(model="mock", input="remember the first turn")
    assert openai_client.responses.retrieve(first.id).output_text == first.output_text
    second = openai_client.responses.create(model="mock", input="and the second",
                                            previous_response_id=first.id)
    assert second.previous_response_id == first.id
    items = openai_client.responses.input_items.list(second.id, order="asc")
    texts = [item.content[0].text for item in items.data]
    assert texts == ["remember the first turn", "mock reply: remember the first turn", "and the second"]
    newest = openai_client.responses.input_items.list(second.id, limit=1)
    assert [item.content[0].text for item in newest.data] == ["and the second"] and newest.has_more
    openai_client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.create(model="mock", input="again", previous_response_id=first.id)


def test_the_conversation_reaches_the_model(responses_proxy: Server, mock_upstream: Mock) -> None:
    openai_client = client(responses_proxy)
    first = openai_client.responses.create(model="mock", input="[[mock:tool_call]] look it up",
                                           tools=[WEATHER_TOOL])
    (call,) = first.output
    second = openai_client.responses.create(
        model="mock", previous_response_id=first.id, tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}])
    assert second.output_text == "tool result: rainy"


def test_streamed_responses_are_stored(responses_proxy: Server) -> None:
    openai_client = client(responses_proxy)
    with openai_client.responses.stream(model="mock", input="streamed and stored") as stream:
        final = stream.get_final_response()
    assert openai_client.responses.retrieve(final.id).output_text == "mock reply: streamed and stored"


def test_store_false_stores_nothing(responses_proxy: Server) -> None:
    openai_client = client(responses_proxy)
    response = openai_client.responses.create(model="mock", input="forget me", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(response.id)


def test_another_key_cannot_see_a_stored_response(responses_proxy: Server) -> None:
    response = client(responses_proxy).responses.create(model="mock", input="mine")
    other = client(responses_proxy, EXTRA_KEY)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="mock", input="x", previous_response_id=response.id)
    assert client(responses_proxy).responses.retrieve(response.id).id == response.id


BAD_BODIES: list[tuple[dict[str, Any], str | None]] = [
    ({"input": "no model"}, "model"),
    ({"model": "mock"}, "input"),
    ({"model": "mock", "input": 42}, "input"),
    ({"model": "mock", "input": []}, "input"),
    ({"model": "mock", "input": ["not an object"]}, "input[0]"),
    ({"model": "mock", "input": [{"type": "computer_call", "id": "x"}]}, "input[0].type"),
    ({"model": "mock", "input": [{"role": "wizard", "content": "hi"}]}, "input[0].role"),
    ({"model": "mock", "input": [{"role": "user", "content": 7}]}, "input[0].content"),
    ({"model": "mock", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "input[0].content[0].type"),
    ({"model": "mock", "input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]},
     "input[0].content[0].text"),
    ({"model": "mock", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
     "input[0].arguments"),
    ({"model": "mock", "input": [{"type": "function_call_output", "call_id": "c", "output": {}}]},
     "input[0].output"),
    ({"model": "mock", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "mock", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"model": "mock", "input": "x", "stream": "yes"}, "stream"),
    ({"model": "mock", "input": "x", "background": True}, "background"),
    ({"model": "mock", "input": "x", "rlm": {"max_depth": 0}}, "rlm.max_depth"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_bad_input_gets_a_400_in_the_openai_shape(responses_proxy: Server, body: dict[str, Any],
                                                  param: str | None) -> None:
    reply = httpx.post(responses_proxy.url + "/v1/responses", json=body,
                       headers={"authorization": f"Bearer {MASTER_KEY}"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


@pytest.mark.parametrize(("raw", "status"), [(b"{not json", 400), (b"[1, 2]", 400), (b"", 400)])
def test_malformed_bodies(responses_proxy: Server, raw: bytes, status: int) -> None:
    reply = httpx.post(responses_proxy.url + "/v1/responses", content=raw,
                       headers={"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"})
    assert reply.status_code == status and reply.json()["error"]["code"] == "invalid_json"


def test_unknown_model_and_unknown_previous_response(responses_proxy: Server) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(responses_proxy).responses.create(model="no-such-model", input="x")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        client(responses_proxy).responses.create(model="mock", input="x", previous_response_id="resp_nope")
    assert info.value.code == "response_not_found" and info.value.param == "previous_response_id"


def test_input_items_paging_errors(responses_proxy: Server) -> None:
    response = client(responses_proxy).responses.create(model="mock", input="page me")
    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    for query in ("limit=0", "limit=101", "order=sideways", "after=msg_unknown"):
        reply = httpx.get(f"{responses_proxy.url}/v1/responses/{response.id}/input_items?{query}",
                          headers=headers)
        assert reply.status_code == 400, (query, reply.text)
        assert reply.json()["error"]["type"] == "invalid_request_error"


def test_missing_key_is_refused(responses_proxy: Server) -> None:
    reply = httpx.post(responses_proxy.url + "/v1/responses", json={"model": "mock", "input": "x"})
    assert reply.status_code == 401


# ---------------------------------------------------------------------------------------------------------
# Native forwarding: a deployment that speaks the Responses API gets the client's body as it is.


@pytest.fixture(scope="module")
def native_proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    config = proxy_config(mock_upstream)
    config["model_list"][0]["model_info"] = {"native_apis": ["responses"]}
    return start_proxy(config)


def test_native_create_and_stream(native_proxy: Server) -> None:
    raw = client(native_proxy).responses.with_raw_response.create(model="mock", input="native hello")
    response = raw.parse()
    assert response.id.startswith("resp_mock_")  # made by the upstream, not bridged by the proxy
    assert response.output_text == "mock reply: native hello" and raw.headers["x-rlm-mode"] == "direct"
    with client(native_proxy).responses.stream(model="mock", input="native stream") as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.id.startswith("resp_mock_") and final.output_text == "mock reply: native stream"
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert client(native_proxy).responses.retrieve(final.id).output_text == "mock reply: native stream"


def test_native_conversation_is_expanded_from_the_store(native_proxy: Server) -> None:
    openai_client = client(native_proxy)
    first = openai_client.responses.create(model="mock", input="[[mock:tool_call]] native tool",
                                           tools=[WEATHER_TOOL])
    (call,) = first.output
    assert first.id.startswith("resp_mock_") and call.type == "function_call"
    # The mock stores nothing and refuses previous_response_id: it is answered only if the proxy expands it.
    second = openai_client.responses.create(
        model="mock", previous_response_id=first.id, tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "native result"}])
    assert second.output_text == "tool result: native result"
    items = openai_client.responses.input_items.list(second.id, order="asc")
    assert [item.type for item in items.data] == ["message", "function_call", "function_call_output"]


def test_native_store_false_and_errors(native_proxy: Server) -> None:
    openai_client = client(native_proxy)
    response = openai_client.responses.create(model="mock", input="not kept", store=False)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError):
        openai_client.responses.create(model="mock", input="[[mock:status=400]]")
    events = list(openai_client.responses.create(model="mock", input="[[mock:stream_error]]", stream=True))
    assert events[-1].type == "error"
    assert openai_client.responses.create(model="mock", input="still serving").status == "completed"


def test_codex_cli_request_as_captured(responses_proxy: Server) -> None:
    """The body Codex CLI 0.171 sends (wire-notes): ids on input items, a namespace and a web_search tool,
    reasoning without effort, store false; it needs typed `event:` lines and the item done before
    `response.completed`."""
    function = {"type": "function", "name": "view_image", "description": "d", "strict": False,
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                               "required": ["path"]}}
    body = {"model": "mock", "stream": True, "tool_choice": "auto", "parallel_tool_calls": True,
            "reasoning": {"summary": "auto"}, "store": False, "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "session-1", "client_metadata": {"a": "b"},
            "tools": [function, {"type": "namespace", "name": "multi_agent_v1", "tools": [function]},
                      {"type": "web_search", "external_web_access": False}],
            "input": [{"type": "message", "id": "msg_1", "role": "developer",
                       "content": [{"type": "input_text", "text": "You are Codex."}]},
                      {"type": "message", "id": "msg_2", "role": "user",
                       "content": [{"type": "input_text", "text": "<environment_context/>"}]},
                      {"type": "message", "id": "msg_3", "role": "user",
                       "content": [{"type": "input_text", "text": "say hi\n"}]}]}
    with httpx.stream("POST", responses_proxy.url + "/v1/responses", json=body,
                      headers={"authorization": f"Bearer {MASTER_KEY}",
                               "accept": "text/event-stream"}) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        blocks = [block for block in reply.read().split(b"\n\n") if block]
    names = [block.split(b"\n")[0].removeprefix(b"event: ").decode() for block in blocks]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 4,
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    done = json.loads(blocks[-2].split(b"data: ")[1])
    assert done["item"]["content"][0]["text"] == "mock reply: say hi\n"
