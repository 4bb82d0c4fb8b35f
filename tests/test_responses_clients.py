"""Real Responses API clients, unmodified, against the proxy in front of the mock: openai-agents' Runner with
an OpenAIResponsesModel (a tool round trip included) and LangChain's ChatOpenAI(use_responses_api=True)."""

from __future__ import annotations

import agents
import openai
import pytest
from langchain_openai import ChatOpenAI

from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Server, StartProxy, proxy_config

NEEDLE_KEY, NEEDLE_VALUE = "amber-meadow", "6620931"


@pytest.fixture(scope="module")
def proxy_for_clients(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy(proxy_config(mock_upstream))


def agent_model(proxy: Server, model: str = "mock") -> agents.OpenAIResponsesModel:
    agents.set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)
    return agents.OpenAIResponsesModel(model=model, openai_client=client)


def test_agents_runner(proxy_for_clients: Server) -> None:
    agent = agents.Agent(name="helper", instructions="Answer briefly.", model=agent_model(proxy_for_clients))
    result = agents.Runner.run_sync(agent, "hello agent")
    assert result.final_output == "mock reply: hello agent"


def test_agents_runner_calls_a_tool(proxy_for_clients: Server) -> None:
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    agent = agents.Agent(name="weather", instructions="Use the tool.", tools=[get_weather],
                         model=agent_model(proxy_for_clients))
    result = agents.Runner.run_sync(agent, "[[mock:tool_call]] weather please")
    assert calls == ["mock"]
    assert result.final_output == "tool result: sunny in mock"


def test_agents_runner_in_rlm_mode(proxy_for_clients: Server) -> None:
    agent = agents.Agent(name="reader", instructions="Answer briefly.",
                         model=agent_model(proxy_for_clients, "rlm/mock"))
    result = agents.Runner.run_sync(agent, needle_prompt(300_000, NEEDLE_KEY, NEEDLE_VALUE))
    assert result.final_output == NEEDLE_VALUE


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_langchain_chat_openai_in_rlm_mode(proxy_for_clients: Server, streaming: bool) -> None:
    chat = ChatOpenAI(model="rlm/mock", base_url=proxy_for_clients.url + "/v1", api_key=MASTER_KEY,
                      use_responses_api=True, max_retries=0, timeout=120)
    prompt = needle_prompt(300_000, f"{NEEDLE_KEY}-{streaming}", NEEDLE_VALUE)
    # Streamed, the run's progress arrives as reasoning summary parts, not as text.
    text = "".join(chunk.text for chunk in chat.stream(prompt)) if streaming else chat.invoke(prompt).text
    assert text == NEEDLE_VALUE


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_langchain_chat_openai_with_the_responses_api(proxy_for_clients: Server, streaming: bool) -> None:
    chat = ChatOpenAI(model="mock", base_url=proxy_for_clients.url + "/v1", api_key=MASTER_KEY,
                      use_responses_api=True, max_retries=0)
    if streaming:
        text = "".join(chunk.text for chunk in chat.stream("hello langchain"))
    else:
        message = chat.invoke("hello langchain")
        text = message.text
        assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    assert text == "mock reply: hello langchain"
