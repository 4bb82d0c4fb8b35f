"""The mock upstream served by a real uvicorn, exercised with httpx and the official openai SDK."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from bench.peers import FloorRunner, Task
from proxy import mock_embeddings, mock_policy
from proxy.mock_policy import needle_prompt
from proxy.mock_upstream import MockSettings, build_mock_app

CONTEXT_WINDOW = 2000


class _RunningMock:
    """One mock app behind a uvicorn server on a free port, in a background thread."""

    def __init__(self, settings: MockSettings) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            build_mock_app(settings), log_level="warning", access_log=False, timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 5
        while not self._server.started:
            assert time.monotonic() < deadline, "mock server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0)

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/mock/stats").json()

    def chat(self, text: str, **extra: Any) -> httpx.Response:
        payload = {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
        return httpx.post(f"{self.url}/v1/chat/completions", json=payload, timeout=10)


@pytest.fixture(scope="module")
def shared_mock() -> Iterator[_RunningMock]:
    server = _RunningMock(MockSettings(context_window_tokens=CONTEXT_WINDOW))
    yield server
    server.stop()


@pytest.fixture
def mock(shared_mock: _RunningMock) -> _RunningMock:
    httpx.post(f"{shared_mock.url}/mock/reset").raise_for_status()
    return shared_mock


@pytest.fixture
def start_mock() -> Iterator[Callable[[MockSettings], _RunningMock]]:
    servers: list[_RunningMock] = []

    def start(settings: MockSettings) -> _RunningMock:
        servers.append(_RunningMock(settings))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _sse_payloads(body: str) -> list[str]:
    return [line.removeprefix("data: ") for line in body.split("\n\n") if line.startswith("data: ")]


def _wait_for(predicate: Callable[[], bool], seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_models_listing(mock: _RunningMock) -> None:
    assert [m.id for m in mock.sdk().models.list()] == ["mock-model"]
    assert httpx.get(f"{mock.url}/models").json() == {
        "object": "list",
        "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}],
    }


def test_non_streaming_content_and_usage(mock: _RunningMock) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    completion = mock.sdk().chat.completions.create(model="gpt-x", messages=messages)
    assert completion.id.startswith("chatcmpl-mock-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-x"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", "mock reply: hello there")
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    prompt_tokens = (len("be brief") // 4 + 4) + (len("hello there") // 4 + 4)
    completion_tokens = len("mock reply: hello there") // 4 + 1
    assert completion.usage.prompt_tokens == prompt_tokens
    assert completion.usage.completion_tokens == completion_tokens
    assert completion.usage.total_tokens == prompt_tokens + completion_tokens


def test_needle_question_is_answered_from_the_last_user_message(mock: _RunningMock) -> None:
    """Claude Code sends its environment as a system message after the user's; the answer is the user's."""
    messages: list[Any] = [
        {"role": "user", "content": needle_prompt(2_000, "amber-key", "6021")},
        {"role": "system", "content": [{"type": "text", "text": "# Environment\nPlatform: linux"}]},
    ]
    completion = mock.sdk().chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].message.content == "6021"


def test_content_parts_and_reply_truncation(mock: _RunningMock) -> None:
    parts = [{"type": "text", "text": "a" * 50}, {"type": "text", "text": "b" * 50}]
    response = httpx.post(
        f"{mock.url}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": parts}]}
    )
    assert response.json()["choices"][0]["message"]["content"] == "mock reply: " + "a" * 50 + "b" * 10


def test_streaming_without_usage(mock: _RunningMock) -> None:
    stream = mock.sdk().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "stream me please"}], stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    contents = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(contents) == 4
    assert "".join(contents) == "mock reply: stream me please"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_streaming_with_include_usage(mock: _RunningMock) -> None:
    stream = mock.sdk().chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "count me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == len("count me") // 4 + 4
    assert chunks[-1].usage.completion_tokens == len("mock reply: count me") // 4 + 1
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_streaming_wire_format(mock: _RunningMock) -> None:
    response = mock.chat("wire", stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = _sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 1 + 4 + 1 + 1  # role, content deltas, finish, usage
    assert all("usage" in c and c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["usage"] for c in chunks[:-1]] == [None] * 6


def test_context_window_exceeded(mock: _RunningMock) -> None:
    text = "x" * (CONTEXT_WINDOW * 4)
    with pytest.raises(openai.BadRequestError) as excinfo:
        mock.sdk().chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    assert excinfo.value.code == "context_length_exceeded"
    tokens = len(text) // 4 + 4
    assert excinfo.value.body == {
        "message": f"This model's maximum context length is {CONTEXT_WINDOW} tokens. However, your messages "
        f"resulted in {tokens} tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }


def test_huge_prompt_is_rejected_quickly(mock: _RunningMock) -> None:
    started = time.monotonic()
    response = mock.chat("y" * 20_000_000)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("status", "exc_type", "code"),
    [
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
        (401, openai.AuthenticationError, None),
    ],
)
def test_status_marker(
    mock: _RunningMock, status: int, exc_type: type[openai.APIStatusError], code: str | None
) -> None:
    messages: Any = [{"role": "user", "content": f"hi [[mock:status={status}]]"}]
    with pytest.raises(exc_type) as excinfo:
        mock.sdk().chat.completions.create(model="m", messages=messages)
    assert excinfo.value.status_code == status
    assert excinfo.value.code == code
    assert mock.stats()["errors_injected"] == 1


def test_rate_limit_marker_sets_retry_after(mock: _RunningMock) -> None:
    response = mock.chat("[[mock:status=429]]", stream=True)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "0"
    assert response.json()["error"]["type"] == "requests"


def test_times_and_id_count_attempts(mock: _RunningMock) -> None:
    statuses = [mock.chat("go [[mock:status=500 times=2 id=abc]]").status_code for _ in range(4)]
    assert statuses == [500, 500, 200, 200]
    mock.chat("[[mock:id=xyz]]")
    stats = mock.stats()
    assert stats["by_marker"] == {"abc": 4, "xyz": 1}
    assert stats["errors_injected"] == 2
    assert (stats["requests"], stats["completed"], stats["cancelled"], stats["in_flight"]) == (5, 5, 0, 0)


def test_malformed_marker(mock: _RunningMock) -> None:
    response = mock.chat("[[mock:malformed]]")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        response.json()
    payloads = _sse_payloads(mock.chat("[[mock:malformed]]", stream=True).text)
    assert json.loads(payloads[0])["choices"][0]["delta"]["role"] == "assistant"
    with pytest.raises(json.JSONDecodeError):
        json.loads(payloads[1])


def test_stream_error_marker_truncates_stream(mock: _RunningMock) -> None:
    received: list[str] = []
    payload = {
        "model": "m",
        "stream": True,
        "messages": [{"role": "user", "content": "[[mock:stream_error]]"}],
    }
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", f"{mock.url}/v1/chat/completions", json=payload) as response,
    ):
        received.extend(response.iter_lines())
    data = [line for line in received if line.startswith("data: ")]
    assert len(data) == 3  # role chunk + two content chunks
    assert "data: [DONE]" not in received
    assert mock.stats()["errors_injected"] == 1


def test_latency_marker_overrides_settings(mock: _RunningMock) -> None:
    started = time.monotonic()
    assert mock.chat("slow [[mock:latency_ms=300]]").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert mock.chat("fast").status_code == 200
    assert time.monotonic() - started < 0.3


def test_latency_runs_from_the_requests_arrival(mock: _RunningMock) -> None:
    """A model's latency includes reading the request: a body that takes 0.8 s to upload is answered 1 s
    after the request began (not 1.8 s), so that a benchmark's critical path is the latency it set."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x [[mock:latency_ms=1000]]"}]})

    def slow_upload() -> Iterator[bytes]:
        yield body[:20].encode()
        time.sleep(0.8)
        yield body[20:].encode()

    started = time.monotonic()
    response = httpx.post(f"{mock.url}/v1/chat/completions", content=slow_upload(), timeout=10,
                          headers={"content-length": str(len(body))})
    assert response.status_code == 200
    assert 1.0 <= time.monotonic() - started < 1.6


@pytest.mark.parametrize(
    ("text", "stream"), [("[[mock:timeout]]", False), ("wait [[mock:latency_ms=5000]]", True)]
)
def test_client_disconnect_is_counted_as_cancelled(mock: _RunningMock, text: str, stream: bool) -> None:
    payload = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]}
    with httpx.Client(timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        client.post(f"{mock.url}/v1/chat/completions", json=payload)
    _wait_for(lambda: mock.stats()["cancelled"] == 1)
    stats = mock.stats()
    assert (stats["requests"], stats["completed"], stats["in_flight"]) == (1, 0, 0)


def test_invalid_requests_get_openai_errors(mock: _RunningMock) -> None:
    bad_json = httpx.post(f"{mock.url}/v1/chat/completions", content=b"{nope")
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    assert mock.chat("[[mock:status=abc]]").status_code == 400
    assert mock.chat("[[mock:times=2]]").status_code == 400
    assert mock.chat("[[mock:status=200]]").status_code == 400
    assert mock.chat("[[mock:bogus]]").status_code == 400
    unknown = httpx.get(f"{mock.url}/v1/nothing")
    assert unknown.status_code == 404
    assert set(unknown.json()["error"]) == {"message", "type", "param", "code"}


def test_reset_zeroes_counters(mock: _RunningMock) -> None:
    mock.chat("[[mock:status=500 id=r]]")
    assert mock.stats()["requests"] == 1
    httpx.post(f"{mock.url}/mock/reset").raise_for_status()
    assert mock.stats() == {
        "requests": 0,
        "completed": 0,
        "cancelled": 0,
        "in_flight": 0,
        "errors_injected": 0,
        "by_marker": {},
        "anthropic_headers": {},
        "root_calls_with_tools": 0,
        "other_calls_with_tools": 0,
    }


def test_seeded_error_rate_is_reproducible(start_mock: Callable[[MockSettings], _RunningMock]) -> None:
    server = start_mock(MockSettings(error_rate=0.5, error_status=429, seed=7))
    first = [server.chat("hi").status_code for _ in range(20)]
    httpx.post(f"{server.url}/mock/reset").raise_for_status()
    second = [server.chat("hi").status_code for _ in range(20)]
    assert first == second
    assert set(first) == {200, 429}
    assert server.stats()["errors_injected"] == first.count(429)


def test_fixed_reply_and_delta_count(start_mock: Callable[[MockSettings], _RunningMock]) -> None:
    server = start_mock(MockSettings(reply="a fixed answer", stream_deltas=7, model_name="other"))
    chunks = list(
        server.sdk().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "q"}], stream=True
        )
    )
    contents = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(contents) == 7
    assert "".join(c or "" for c in contents) == "a fixed answer"
    assert [m.id for m in server.sdk().models.list()] == ["other"]


def test_a_token_rate_streams_one_token_per_delta(start_mock: Callable[[MockSettings], _RunningMock]) -> None:
    server = start_mock(MockSettings(reply="print(len(context)) # 30 chars", tokens_per_second=500))
    chunks = list(server.sdk().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "q"}], stream=True))
    contents = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(contents) == 8  # 30 characters: 8 tokens of about 4
    assert all(0 < len(piece or "") <= 4 for piece in contents)
    assert "".join(piece or "" for piece in contents) == "print(len(context)) # 30 chars"
    plain = server.sdk().chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
    assert plain.choices[0].message.content == "print(len(context)) # 30 chars"


_WEATHER_TOOL: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"]}}}


def test_tool_call_marker_calls_the_first_tool(mock: _RunningMock) -> None:
    completion = mock.sdk().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather? [[mock:tool_call]]"}],
        tools=[_WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_mock_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock", "days": 1}


def test_streamed_tool_call_accumulates_in_the_sdk(mock: _RunningMock) -> None:
    with mock.sdk().chat.completions.stream(
            model="m", messages=[{"role": "user", "content": "weather? [[mock:tool_call]]"}],
            tools=[_WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock", "days": 1}


def test_a_tool_result_is_acknowledged(mock: _RunningMock) -> None:
    messages: Any = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    completion = mock.sdk().chat.completions.create(model="m", messages=messages, tools=[_WEATHER_TOOL])
    assert completion.choices[0].message.content == "tool result: sunny, 21 C"


def test_tool_call_marker_without_tools_answers_in_text(mock: _RunningMock) -> None:
    completion = mock.sdk().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi [[mock:tool_call]]"}])
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content.startswith("mock reply: hi")


def _root_messages(question: str, tool_result: str | None = None) -> list[dict[str, str]]:
    """The first root-model call of an RLM run over a short `context`, as the engine makes it."""
    card = f"Your context is a str of 500 characters.\n\n<question chars=\"10\">\n{question}\n</question>"
    if tool_result is not None:
        card += f"\n\n<tool_result chars=\"10\">\n{tool_result}\n</tool_result>"
    return [{"role": "system", "content": mock_policy.ROOT_MARKER + ". llm_query(...) is available."},
            {"role": "user", "content": card}]


def _after_search(messages: list[dict[str, str]], found: str) -> list[dict[str, str]]:
    return [*messages, {"role": "assistant", "content": "```repl\n...\n```"},
            {"role": "user", "content": f"Block 1 of 1 (ok):\n```text\nchunks=1 found=['{found}']\n```"}]


_NEEDLE_QUESTION = ("What is the special magic number for k mentioned in the provided text? "
                    "[[policy:tool_call]]")


def test_the_scripted_root_calls_the_first_tool_with_what_it_found(mock: _RunningMock) -> None:
    messages: Any = _after_search(_root_messages(_NEEDLE_QUESTION), "777")
    completion = mock.sdk().chat.completions.create(model="m", messages=messages, tools=[_WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert json.loads(call.function.arguments) == {"city": "777", "days": 1}
    # Without tools it answers as usual; with the tool's result on the card it uses it.
    plain = mock.sdk().chat.completions.create(model="m", messages=messages)
    assert plain.choices[0].message.content == "FINAL(777)"
    follow_up: Any = _after_search(_root_messages(_NEEDLE_QUESTION, "sunny"), "777")
    answered = mock.sdk().chat.completions.create(model="m", messages=follow_up, tools=[_WEATHER_TOOL])
    assert answered.choices[0].message.content == "FINAL(777; tool result: sunny)"
    mock.chat("a plain call", tools=[_WEATHER_TOOL])
    stats = mock.stats()
    assert (stats["root_calls_with_tools"], stats["other_calls_with_tools"]) == (2, 1)


# ---------------------------------------------------------------------------------------------------------
# Embeddings and legacy completions


def test_mock_embeddings_are_deterministic_unit_vectors_in_both_encodings(shared_mock: _RunningMock) -> None:
    sdk = shared_mock.sdk()
    as_floats = sdk.embeddings.create(model="m", input=["a", "b"], encoding_format="float").data
    decoded = sdk.embeddings.create(model="m", input=["a", "b"]).data  # the SDK's base64, decoded
    assert [d.embedding for d in as_floats] == [d.embedding for d in decoded]
    assert len(as_floats[0].embedding) == mock_embeddings.DEFAULT_DIMENSIONS
    assert as_floats[0].embedding != as_floats[1].embedding
    assert abs(sum(v * v for v in as_floats[0].embedding) - 1) < 1e-5
    short = sdk.embeddings.create(model="m", input="a", dimensions=16).data[0].embedding
    assert short == mock_embeddings.vector("a", 16)


@pytest.mark.parametrize("extra", [{"dimensions": 0}, {"dimensions": 99999}, {"encoding_format": "int8"},
                                   {"input": []}, {"input": [{"text": "x"}]}])
def test_mock_embeddings_refuse_bad_input(shared_mock: _RunningMock, extra: dict[str, Any]) -> None:
    body = {"model": "m", "input": "x", **extra}
    assert httpx.post(f"{shared_mock.url}/v1/embeddings", json=body, timeout=10).status_code == 400


def test_mock_embeddings_and_completions_honour_markers(shared_mock: _RunningMock) -> None:
    url = shared_mock.url
    response = httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": ["ok", "[[mock:status=429]]"]})
    assert response.status_code == 429
    response = httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": "[[mock:status=503]]"})
    assert response.status_code == 503
    response = httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": "[[mock:malformed]]"})
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_mock_legacy_completion_streams_text_chunks(shared_mock: _RunningMock) -> None:
    sdk = shared_mock.sdk()
    assert sdk.completions.create(model="m", prompt="hi").choices[0].text == "mock reply: hi"
    chunks = list(sdk.completions.create(model="m", prompt="hi", stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "mock reply: hi"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.object == "text_completion" for c in chunks)


def test_the_scripted_root_speaks_the_rlms_librarys_protocol_too() -> None:
    """bench.peers runs the official `rlms` library against the mock: its root prompt and question, and an
    answer submitted from code (`answer["ready"] = True`) instead of FINAL(...)."""
    def message(role: str, text: str) -> mock_policy.Message:
        return mock_policy.Message(role, text)

    question = "What is the special magic number for k mentioned in the provided text?"
    start = [message("system", mock_policy.RLMS_ROOT_MARKER + ". `llm_query(prompt)` and friends ..."),
             message("user", f"Answer the following: {question}\n\nYour context is a str of 500 total "
                             "characters."),
             message("user", "Turn 1/30:")]
    code = mock_policy.reply(start)
    assert isinstance(code, str) and "```repl" in code and "llm_query_batched" in code
    searched = [*start, message("assistant", code), message("user", "chunks=1 found=['4242']"),
                message("user", "Turn 2/30:")]
    assert mock_policy.reply(searched) == '```repl\nanswer["content"] = \'4242\'\nanswer["ready"] = True\n```'
    count = [start[0], message("user", "Answer the following: How many times does the word 'x' appear?"),
             message("assistant", "```repl\n...\n```"), message("user", "total=3")]
    assert mock_policy.reply(count) == '```repl\nanswer["content"] = str(total)\nanswer["ready"] = True\n```'


def test_the_peers_floor_makes_a_runs_calls_and_nothing_else(mock: _RunningMock) -> None:
    """bench.peers' floor: the two root calls and one sub-call per prompt size, straight to the mock."""
    floor = FloorRunner(mock.url)
    try:
        task = Task("needle", "filler text. " * 100, "Where is it?", "42")
        assert floor.run(task, [300, 300, 50]) > 0
        assert floor.run(task, []) > 0
    finally:
        floor.close()
    assert mock.stats()["completed"] == 2 + 3 + 2
