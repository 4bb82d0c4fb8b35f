"""Bodies nested deeper than the proxy's serialisers can take are refused at parse time with a 400, in
direct and in RLM mode, and a body at the limit still works end to end."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from proxy.api.request import MAX_JSON_DEPTH
from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Server, StartProxy, rlm_config, unexpected_output

KEY, VALUE = "quiet-meadow", "5550123"
MODES = {"direct": {"x-rlm-mode": "off"}, "rlm": {"x-rlm-mode": "on"}}


@pytest.fixture(scope="module")
def proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy(rlm_config(mock_upstream))


def nested(levels: int) -> list[Any]:
    """An array nesting `levels` levels of arrays."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def request(field: str, total_depth: int, text: str) -> dict[str, Any]:
    """Chat arguments whose body nests `total_depth` levels (the body being level 1) through `field`."""
    message: dict[str, Any] = {"role": "user", "content": text}
    if field == "metadata":  # body > metadata > value
        return {"messages": [message], "metadata": {"deep": nested(total_depth - 2)}}
    if field == "seed":  # body > value
        return {"messages": [message], "seed": nested(total_depth - 1)}
    # body > messages > message > content > part > value
    message["content"] = [{"type": "text", "text": text, "deep": nested(total_depth - 5)}]
    return {"messages": [message]}


def client(proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)


FIELDS = {"metadata": "metadata", "seed": "seed", "content part": "messages"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", FIELDS)
# 300: past orjson's serialisation limit (254), which gave a 500 before; limit + 1: the first refused.
@pytest.mark.parametrize("depth", [300, MAX_JSON_DEPTH + 1])
def test_too_deep_is_refused_at_parse_time(proxy: Server, field: str, mode: str, depth: int) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(proxy).chat.completions.create(model="mock", extra_headers=MODES[mode],
                                              **request(field, depth, "hello"))
    assert info.value.code == "json_too_deep"
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == FIELDS[field]
    assert str(MAX_JSON_DEPTH) in error["message"]
    assert unexpected_output(proxy) == []


@pytest.mark.parametrize("field", FIELDS)
def test_at_the_limit_works_in_direct_mode(proxy: Server, field: str) -> None:
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="mock", extra_headers=MODES["direct"], **request(field, MAX_JSON_DEPTH, "hello"))
    assert raw.headers["x-rlm-mode"] == "direct"
    assert raw.parse().choices[0].message.content == "mock reply: hello"
    assert unexpected_output(proxy) == []


@pytest.mark.parametrize("field", FIELDS)
def test_at_the_limit_works_in_rlm_mode(proxy: Server, field: str) -> None:
    prompt = needle_prompt(5_000, KEY, VALUE)
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="mock", extra_headers=MODES["rlm"], **request(field, MAX_JSON_DEPTH, prompt))
    assert raw.headers["x-rlm-mode"] == "rlm"
    assert raw.parse().choices[0].message.content == VALUE
    assert unexpected_output(proxy) == []
