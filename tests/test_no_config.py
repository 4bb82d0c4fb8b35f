"""With no config at all the proxy starts, needs no key, and passes any model name on as is."""

from __future__ import annotations

import openai
import pytest

from tests.harness import Mock, Server, StartProxy


@pytest.fixture(scope="module", params=["true", "false"], ids=["fast_path", "litellm"])
def bare_proxy(request: pytest.FixtureRequest, mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy({}, env={"OPENAI_BASE_URL": mock_upstream.base_url, "OPENAI_API_KEY": "sk-upstream",
                                "RLM_PROXY_UPSTREAM__FAST_PATH": request.param})


def test_any_model_name_is_passed_through(bare_proxy: Server) -> None:
    client = openai.OpenAI(base_url=bare_proxy.url + "/v1", api_key="anything", max_retries=0)
    completion = client.chat.completions.create(model="openai/mock-model",
                                                messages=[{"role": "user", "content": "no config"}])
    assert completion.choices[0].message.content == "mock reply: no config"
    assert completion.model == "mock-model"
    assert list(client.models.list()) == []
