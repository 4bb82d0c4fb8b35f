"""POST /v1/messages and /v1/messages/count_tokens through the real proxy, driven by the official anthropic
SDK: bridged to the mock's chat completions, forwarded natively to the mock's /v1/messages, in RLM mode."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import orjson
import pytest

from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Server, StartProxy, rlm_config

KEY, VALUE = "vivid-harbor", "4817302"
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}
MAX_BODY = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    config = rlm_config(mock_upstream, rlm={"heartbeat_s": 0.3}, server={"max_body_bytes": MAX_BODY})
    config["model_list"] += [
        {"model_name": "claude-sonnet-4-5", "litellm_params": {
            "model": "openai/mock-model", "api_base": mock_upstream.base_url, "api_key": "none"}},
        {"model_name": "claude-native", "litellm_params": {
            "model": "anthropic/mock-model", "api_base": mock_upstream.server.url,
            "api_key": "os.environ/MOCK_API_KEY"}}]
    return start_proxy(config)


def client(proxy: Server, **kwargs: Any) -> anthropic.Anthropic:
    kwargs = kwargs or {"api_key": MASTER_KEY}
    return anthropic.Anthropic(base_url=proxy.url, max_retries=0, timeout=120, **kwargs)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_create_with_a_system_string(proxy: Server) -> None:
    raw = client(proxy).messages.with_raw_response.create(model="mock", max_tokens=100, system="Be brief.",
                                                          messages=user("hello"))
    message = raw.parse()
    assert raw.headers["x-rlm-mode"] == "direct"
    assert message.type == "message" and message.role == "assistant" and message.model == "mock"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "mock reply: hello"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_system_blocks_and_a_multi_turn_conversation(proxy: Server) -> None:
    plain = client(proxy).messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=user("third"))
    message = client(proxy).messages.create(
        model="claude-sonnet-4-5", max_tokens=100,
        system=[{"type": "text", "text": "You are a helpful assistant " * 20,
                 "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "first"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "second"}]},
                  {"role": "user", "content": [{"type": "text", "text": "third"}]}],
        stop_sequences=["\n\nHuman:"], metadata={"user_id": "user-1"},
        # (this SDK no longer takes the sampling parameters as arguments; older clients send them)
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 5, "context_management": {"edits": []},
                    "output_config": {"effort": "high"}})
    assert message.content[0].text == "mock reply: third"
    # The system text and the earlier turns reached the model: they count as input.
    assert message.usage.input_tokens > plain.usage.input_tokens + 100


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_tool_use_and_tool_result_round_trip(proxy: Server, stream: bool) -> None:
    ask = user("[[mock:tool_call]] What is the weather in Paris?")
    kwargs: dict[str, Any] = {"model": "mock", "max_tokens": 100, "tools": [WEATHER],
                              "tool_choice": {"type": "auto"}}
    if stream:
        with client(proxy).messages.stream(messages=ask, **kwargs) as events:
            message = events.get_final_message()
    else:
        message = client(proxy).messages.create(messages=ask, **kwargs)
    assert message.stop_reason == "tool_use"
    call = message.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "mock"}
    answer = client(proxy).messages.create(messages=[
        *ask, {"role": "assistant", "content": [block.model_dump() for block in message.content]},
        {"role": "user",
         "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]}],
        **kwargs)
    assert answer.content[0].text == "tool result: sunny, 21 C"
    assert answer.stop_reason == "end_turn"


def test_stream_helper_accepts_every_event(proxy: Server) -> None:
    with client(proxy).messages.stream(model="mock", max_tokens=100, messages=user("hello there")) as events:
        text = "".join(events.text_stream)
        final = events.get_final_message()
    assert text == "mock reply: hello there"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_an_error_inside_a_started_stream_is_an_error_event(proxy: Server) -> None:
    with pytest.raises(anthropic.APIStatusError) as info, client(proxy).messages.stream(
            model="mock", max_tokens=100, messages=user("[[mock:stream_error]] hi")) as events:
        "".join(events.text_stream)
    assert info.value.body["error"]["type"] == "api_error"


def test_count_tokens(proxy: Server) -> None:
    short = client(proxy).messages.count_tokens(model="mock", messages=user("hello"))
    longer = client(proxy).messages.count_tokens(model="mock", messages=user("hello " * 200), tools=[WEATHER],
                                                 system="Be brief.")
    assert 0 < short.input_tokens < longer.input_tokens
    native = client(proxy).messages.count_tokens(model="claude-native", messages=user("x" * 400))
    assert native.input_tokens == 400 // 4 + 4  # the mock's own count: the request was forwarded


@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
def test_auth_by_x_api_key_or_bearer(proxy: Server, how: str) -> None:
    kwargs = {"api_key": MASTER_KEY} if how == "x-api-key" else {"auth_token": MASTER_KEY}
    message = client(proxy, **kwargs).messages.create(model="mock", max_tokens=10, messages=user("hi"))
    assert message.content[0].text == "mock reply: hi"


@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
def test_a_wrong_key_is_401_in_anthropics_shape(proxy: Server, how: str) -> None:
    kwargs = {"api_key": "sk-wrong"} if how == "x-api-key" else {"auth_token": "sk-wrong"}
    with pytest.raises(anthropic.AuthenticationError) as info:
        client(proxy, **kwargs).messages.create(model="mock", max_tokens=10, messages=user("hi"))
    assert info.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                          "message": "Incorrect API key provided."}}
    missing = httpx.post(proxy.url + "/v1/messages/count_tokens",
                         json={"model": "mock", "messages": user("x")})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_native_forwarding_keeps_anthropic_headers(proxy: Server, mock_upstream: Mock, stream: bool) -> None:
    beta = "interleaved-thinking-2025-05-14,context-management-2025-06-27"
    kwargs: dict[str, Any] = {"model": "claude-native", "max_tokens": 100, "messages": user("native hello"),
                              "extra_headers": {"anthropic-beta": beta, "anthropic-version": "2023-06-01"}}
    if stream:
        with client(proxy).messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        raw = client(proxy).messages.with_raw_response.create(**kwargs)
        assert raw.headers["x-rlm-mode"] == "direct"
        message = raw.parse()
    assert message.content[0].text == "mock reply: native hello"
    assert message.usage.output_tokens > 0
    seen = mock_upstream.stats()["anthropic_headers"]
    assert seen["anthropic-beta"] == beta
    assert seen["anthropic-version"] == "2023-06-01"
    assert seen["x-api-key"] == "sk-upstream"  # the deployment's credentials, not the client's key


def test_rlm_mode_answers_a_1mb_needle(proxy: Server) -> None:
    raw = client(proxy).messages.with_raw_response.create(
        model="mock", max_tokens=1000, messages=user(needle_prompt(1_000_000, KEY, VALUE, depth=0.6)))
    message = raw.parse()
    assert raw.headers["x-rlm-mode"] == "rlm"
    assert raw.headers["x-rlm-run-id"] and int(raw.headers["x-rlm-subcalls"]) >= 8
    assert message.content[0].text == VALUE
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 1_000_000 // 4
    assert message.model_extra["rlm"]["subcalls"] == int(raw.headers["x-rlm-subcalls"])


def test_rlm_mode_streams_progress_as_thinking(proxy: Server) -> None:
    with client(proxy).messages.stream(model="rlm/mock", max_tokens=1000,
                                       messages=user(needle_prompt(200_000, KEY, VALUE))) as events:
        assert events.response.headers["x-rlm-mode"] == "rlm"
        final = events.get_final_message()
    thinking, text = final.content
    assert thinking.type == "thinking" and "Iteration 1" in thinking.thinking
    assert text.type == "text" and text.text == VALUE
    assert final.usage.input_tokens > 200_000 // 4


def test_rlm_mode_refuses_forced_tool_use(proxy: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client(proxy).messages.create(model="rlm/mock", max_tokens=10, messages=user("hi"), tools=[WEATHER],
                                      tool_choice={"type": "any"})
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "tool_choice" in info.value.body["error"]["message"]


BAD_BODIES = {
    "missing max_tokens": {"model": "mock", "messages": user("hi")},
    "malformed block": {"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": [1]}]},
    "unknown block type": {"model": "mock", "max_tokens": 5,
                           "messages": [{"role": "user", "content": [{"type": "hologram"}]}]},
    "wrong content type": {"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]},
    "wrong role": {"model": "mock", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]},
    "text block without text": {"model": "mock", "max_tokens": 5,
                                "messages": [{"role": "user", "content": [{"type": "text"}]}]},
    "tool_result without id": {"model": "mock", "max_tokens": 5,
                               "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
    "system of numbers": {"model": "mock", "max_tokens": 5, "system": 3, "messages": user("hi")},
    "unknown model": {"model": "claude-unknown", "max_tokens": 5, "messages": user("hi")},
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_input_is_a_clear_4xx_in_anthropics_shape(proxy: Server, body: dict[str, Any]) -> None:
    response = httpx.post(proxy.url + "/v1/messages", json=body, headers={"x-api-key": MASTER_KEY})
    unknown = body["model"] == "claude-unknown"
    expected = (404, "not_found_error") if unknown else (400, "invalid_request_error")
    assert (response.status_code, response.json()["error"]["type"]) == expected
    assert response.json()["type"] == "error" and response.json()["error"]["message"]
    assert client(proxy).messages.create(model="mock", max_tokens=5, messages=user("ok")).content


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"x" * (MAX_BODY + 1)],
                         ids=["invalid json", "empty", "not an object", "oversized"])
def test_bad_bodies_are_refused_in_anthropics_shape(proxy: Server, content: bytes) -> None:
    response = httpx.post(proxy.url + "/v1/messages", content=content,
                          headers={"x-api-key": MASTER_KEY, "content-type": "application/json"})
    if len(content) > MAX_BODY:
        assert (response.status_code, response.json()["error"]["type"]) == (413, "request_too_large")
    else:
        assert (response.status_code, response.json()["error"]["type"]) == (400, "invalid_request_error")
    assert response.json()["type"] == "error"
    assert client(proxy).messages.create(model="mock", max_tokens=5, messages=user("ok")).content


def test_chat_completions_keep_openais_error_shape(proxy: Server) -> None:
    response = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "mock"},
                          headers={"authorization": f"Bearer {MASTER_KEY}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_required_parameter"


def claude_code_body(model: str, prompt: str, stream: bool = True) -> dict[str, Any]:
    """What Claude Code 2.1 sends (/work/briefs/wire-notes.md): a current model's shape, with a system
    message after the user's, adaptive thinking and its other keys."""
    cached = {"cache_control": {"type": "ephemeral"}}
    return {"model": model, "stream": stream, "max_tokens": 32000, "tools": [],
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332"},
                       {"type": "text", "text": "You are Claude Code.", **cached},
                       {"type": "text", "text": "Instructions. " * 400, **cached}],
            "messages": [{"role": "user", "content": prompt},
                         {"role": "system",
                          "content": [{"type": "text", "text": "# Environment", **cached}]}],
            "metadata": {"user_id": '{"device_id": "d", "session_id": "s"}'},
            "thinking": {"type": "adaptive", "display": "omitted"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "high"}}


CLAUDE_CODE_HEADERS = {"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01", "x-app": "cli",
                       "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
                       "anthropic-dangerous-direct-browser-access": "true", "accept": "application/json"}


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        events.append((name.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return events


@pytest.mark.parametrize("model", ["mock", "claude-native"])
def test_claude_codes_request_as_captured(proxy: Server, model: str) -> None:
    response = httpx.post(proxy.url + "/v1/messages?beta=true", json=claude_code_body(model, "hello claude"),
                          headers=CLAUDE_CODE_HEADERS, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", *["content_block_delta"] * 4, "content_block_stop",
        "message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == "mock reply: hello claude"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    # Its retry after a failed stream: the same body without streaming.
    retry = httpx.post(proxy.url + "/v1/messages?beta=true", json=claude_code_body(model, "again", False),
                       headers=CLAUDE_CODE_HEADERS, timeout=30)
    assert retry.json()["content"] == [{"type": "text", "text": "mock reply: again"}]


def test_claude_code_in_rlm_mode(proxy: Server) -> None:
    body = claude_code_body("mock", needle_prompt(1_000_000, KEY, VALUE, depth=0.3))
    response = httpx.post(proxy.url + "/v1/messages?beta=true", json=body, headers=CLAUDE_CODE_HEADERS,
                          timeout=120)
    assert response.headers["x-rlm-mode"] == "rlm"
    events = sse_events(response)
    kinds = [data["content_block"]["type"] for name, data in events if name == "content_block_start"]
    assert kinds == ["thinking", "text"]
    text = "".join(data["delta"].get("text", "") for name, data in events if name == "content_block_delta")
    assert text == VALUE
    # As on chat completions, the stream's end carries the run's summary.
    [delta] = [data for name, data in events if name == "message_delta"]
    assert delta["rlm"]["run_id"] == response.headers["x-rlm-run-id"]
    assert delta["rlm"]["subcalls"] >= 8


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_rlm_mode_through_a_native_anthropic_deployment(proxy: Server, mock_upstream: Mock,
                                                        stream: bool) -> None:
    """The root and sub-models are an `anthropic/` deployment: litellm calls it in the Messages dialect."""
    before = mock_upstream.stats()["requests"]
    kwargs: dict[str, Any] = {"model": "rlm/claude-native", "max_tokens": 1000,
                              # a needle of its own per case: the cache would answer a repeat
                              "messages": user(needle_prompt(300_000, f"{KEY}-{stream}", VALUE, depth=0.4))}
    if stream:
        with client(proxy).messages.stream(**kwargs) as events:
            headers = events.response.headers
            message = events.get_final_message()
    else:
        raw = client(proxy).messages.with_raw_response.create(**kwargs)
        headers, message = raw.headers, raw.parse()
    assert headers["x-rlm-mode"] == "rlm"
    assert message.content[-1].text == VALUE
    # Root replies and sub-calls all went to the mock's /v1/messages (litellm's Anthropic provider).
    assert mock_upstream.stats()["anthropic_headers"]["x-api-key"] == "sk-upstream"
    assert mock_upstream.stats()["requests"] - before >= 3  # two root replies, sub-calls (some cached)
