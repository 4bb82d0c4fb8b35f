"""RLM mode on /v1/responses (the openai SDK, the real proxy, sandbox workers, the mock's RLM policy), and the
Redis-backed response store shared by two proxy processes."""

from __future__ import annotations

import openai
import pytest

from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Redis, Server, StartProxy, proxy_config, rlm_config

KEY, VALUE = "quiet-lantern", "5520917"


@pytest.fixture(scope="module")
def rlm_proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy(rlm_config(mock_upstream, rlm={"heartbeat_s": 0.3}))


def client(proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)


def test_needle_in_1mb_answers_as_a_response(rlm_proxy: Server) -> None:
    raw = client(rlm_proxy).responses.with_raw_response.create(
        model="mock", input=needle_prompt(1_000_000, KEY, VALUE, depth=0.4))
    response = raw.parse()
    assert raw.headers["x-rlm-mode"] == "rlm"
    assert int(raw.headers["x-rlm-iterations"]) == 2 and int(raw.headers["x-rlm-subcalls"]) > 0
    assert response.output_text == VALUE and response.status == "completed"
    assert response.id == f"resp_rlm_{raw.headers['x-rlm-run-id']}"
    assert response.usage.input_tokens > 1_000_000 // 4
    assert response.model_extra["rlm"]["subcalls"] == int(raw.headers["x-rlm-subcalls"])
    # The answer is stored like any other; a follow-up carries the whole conversation (too long for direct).
    assert client(rlm_proxy).responses.retrieve(response.id).output_text == VALUE
    with pytest.raises(openai.BadRequestError) as info:
        client(rlm_proxy).responses.create(model="mock", input="thanks", previous_response_id=response.id,
                                           extra_headers={"x-rlm-mode": "off"})
    assert info.value.code == "context_length_exceeded"


def test_needle_streamed_with_progress_as_a_reasoning_summary(rlm_proxy: Server) -> None:
    with client(rlm_proxy).responses.stream(model="rlm/mock", input=needle_prompt(1_000_000, KEY, VALUE)) \
            as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == VALUE
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and "Iteration 1" in reasoning.summary[0].text
    assert message.type == "message"
    assert types.index("response.reasoning_summary_text.delta") < types.index("response.output_text.delta")
    assert final.usage.output_tokens > 0 and final.model_extra["rlm"]["iterations"] == 2


def test_streamed_rlm_answer_has_the_rlm_headers(rlm_proxy: Server) -> None:
    with client(rlm_proxy).responses.with_streaming_response.create(
            model="mock", input=needle_prompt(5_000, KEY, VALUE), stream=True,
            extra_headers={"x-rlm-mode": "on"}) as raw:
        assert raw.headers["x-rlm-mode"] == "rlm" and raw.headers["x-rlm-run-id"]
        events = list(raw.parse())
    assert events[-1].type == "response.completed" and events[-1].response.output_text == VALUE


def test_forced_tool_choice_is_refused_in_rlm_mode(rlm_proxy: Server) -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    with pytest.raises(openai.BadRequestError) as info:
        client(rlm_proxy).responses.create(model="rlm/mock", input="x", tools=[tool], tool_choice="required")
    assert info.value.param == "tool_choice"


def test_redis_store_continues_on_another_replica(mock_upstream: Mock, start_proxy: StartProxy,
                                                  redis_server: Redis) -> None:
    config = proxy_config(mock_upstream, cache={"redis_url": redis_server.url})
    first_replica, second_replica = start_proxy(config), start_proxy(config)
    first = client(first_replica).responses.create(model="mock", input="turn one on replica one")
    assert client(second_replica).responses.retrieve(first.id).output_text == first.output_text
    second = client(second_replica).responses.create(model="mock", input="turn two",
                                                     previous_response_id=first.id)
    items = client(first_replica).responses.input_items.list(second.id, order="asc")
    assert [item.content[0].text for item in items.data] == [
        "turn one on replica one", "mock reply: turn one on replica one", "turn two"]
    client(first_replica).responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client(second_replica).responses.retrieve(first.id)
