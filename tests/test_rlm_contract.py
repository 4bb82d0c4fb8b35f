"""RLM mode refuses, with a 400 naming the parameter, what its one-text answer cannot honour; what it can
honour (or ignore harmlessly) still works, and direct mode passes everything through."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Server, StartProxy, rlm_config, unexpected_output

KEY, VALUE = "amber-lantern", "7391046"
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up.",
                                           "parameters": {"type": "object", "properties": {}}}}]
FUNCTIONS = [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}]
NAMED = {"type": "function", "function": {"name": "lookup"}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}

# (id, request arguments, the refused parameter, code)
REFUSED = [
    ("n", {"n": 2}, "n", "unsupported_value"),
    ("tool_choice required", {"tools": TOOLS, "tool_choice": "required"}, "tool_choice", "unsupported_value"),
    ("tool_choice named", {"tools": TOOLS, "tool_choice": NAMED}, "tool_choice", "unsupported_value"),
    ("function_call named", {"functions": FUNCTIONS, "function_call": {"name": "lookup"}}, "function_call",
     "unsupported_value"),
    ("legacy functions", {"functions": FUNCTIONS, "function_call": "auto"}, "functions",
     "unsupported_parameter"),
    ("custom tool", {"tools": [{"type": "custom", "custom": {"name": "sql"}}]}, "tools[0].type",
     "unsupported_value"),
    ("logprobs", {"logprobs": True}, "logprobs", "unsupported_value"),
    ("top_logprobs", {"top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
    ("json_object", {"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
    ("json_schema", {"response_format": SCHEMA}, "response_format", "unsupported_value"),
    ("audio modality", {"modalities": ["text", "audio"]}, "modalities", "unsupported_value"),
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter"),
]
# What RLM mode honours or ignores by design: a root model may answer without calling the client's tools.
ACCEPTED = [
    ("tools auto", {"tools": TOOLS, "tool_choice": "auto"}),
    ("tools without tool_choice", {"tools": TOOLS}),
    ("tool_choice none", {"tools": TOOLS, "tool_choice": "none"}),
    ("functions not to call", {"functions": FUNCTIONS, "function_call": "none"}),
    ("n 1, logprobs false, text format", {"n": 1, "logprobs": False, "response_format": {"type": "text"}}),
    ("text modality", {"modalities": ["text"]}),
    ("sampling and ignored fields", {"temperature": 0.2, "top_p": 0.9, "seed": 7, "user": "u-1",
                                     "metadata": {"team": "a"}, "max_tokens": 50, "stop": ["\n\n"]}),
]
FORCED = {"header": {"model": "mock", "extra_headers": {"x-rlm-mode": "on"}}, "prefix": {"model": "rlm/mock"}}


@pytest.fixture(scope="module")
def proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy(rlm_config(mock_upstream))


def create(proxy: Server, prompt: str, **kwargs: Any) -> Any:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)
    return client.chat.completions.with_raw_response.create(messages=[{"role": "user", "content": prompt}],
                                                            **kwargs)


@pytest.mark.parametrize("how", FORCED)
@pytest.mark.parametrize(("arguments", "param", "code"), [case[1:] for case in REFUSED],
                         ids=[case[0] for case in REFUSED])
def test_rlm_mode_refuses_what_it_cannot_honour(proxy: Server, how: str, arguments: dict[str, Any],
                                                param: str, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        create(proxy, needle_prompt(5_000, KEY, VALUE), **FORCED[how], **arguments)
    assert info.value.code == code
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    assert "RLM mode" in error["message"] and "x-rlm-mode: off" in error["message"]
    assert unexpected_output(proxy) == []


@pytest.mark.parametrize("how", FORCED)
@pytest.mark.parametrize("arguments", [case[1] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_rlm_mode_answers_what_it_can_honour(proxy: Server, how: str, arguments: dict[str, Any]) -> None:
    raw = create(proxy, needle_prompt(5_000, KEY, VALUE), **FORCED[how], **arguments)
    assert raw.headers["x-rlm-mode"] == "rlm"
    completion = raw.parse()
    assert [choice.message.content for choice in completion.choices] == [VALUE]
    assert completion.choices[0].message.tool_calls is None
    assert unexpected_output(proxy) == []


@pytest.mark.parametrize("arguments", [case[1] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_direct_mode_passes_them_through(proxy: Server, arguments: dict[str, Any]) -> None:
    raw = create(proxy, "hello", model="mock", extra_headers={"x-rlm-mode": "off"}, **arguments)
    assert raw.headers["x-rlm-mode"] == "direct"
    assert raw.parse().choices[0].message.content == "mock reply: hello"
    assert unexpected_output(proxy) == []
