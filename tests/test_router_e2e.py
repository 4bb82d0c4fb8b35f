"""Multi-deployment model groups end to end: the official openai SDK, the real proxy under uvicorn, and
several mock upstreams on their own ports behind model names, counted on each mock's /mock/stats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, RLM_MODEL_INFO, Mock, Server, StartProxy, proxy_config, start_server

NO_CACHE = {"cache-control": "no-cache, no-store"}


@pytest.fixture(scope="module")
def mocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Mock]]:
    """a, b: healthy; failing: every answer a 500; small: a 50-token window."""
    options = {"a": [], "b": [], "failing": ["--error-rate", "1"], "small": ["--context-window-tokens", "50"]}
    servers = {name: start_server(["mock-upstream", *args], "/v1/models",
                                  tmp_path_factory.mktemp("mock") / f"{name}.log")
               for name, args in options.items()}
    yield {name: Mock(server) for name, server in servers.items()}
    for server in servers.values():
        server.stop()


def deployment(name: str, mock: Mock, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": "openai/mock-model", "api_base": mock.base_url,
                                                   "api_key": "os.environ/MOCK_API_KEY", **params}}


@pytest.fixture(scope="module")
def router_proxy(mocks: dict[str, Mock], start_proxy: StartProxy) -> Server:
    config = proxy_config(mocks["a"], upstream={"max_retries": 2}, sandbox={"workers": 1},
                          router_settings={"allowed_fails": 1, "cooldown_time": 600,
                                           "fallbacks": [{"broken": ["spread"]}, {"rlm-broken": ["rlm"]}],
                                           "context_window_fallbacks": [{"small": ["spread"]}]})
    config["model_list"] = [
        deployment("spread", mocks["a"], weight=1), deployment("spread", mocks["b"], weight=3),
        deployment("flaky", mocks["failing"], weight=1000), deployment("flaky", mocks["a"], weight=1),
        deployment("broken", mocks["failing"]),
        deployment("small", mocks["small"]),
        *({**deployment("rlm", mocks[name]), "model_info": RLM_MODEL_INFO} for name in ("a", "b")),
        {**deployment("rlm-broken", mocks["failing"]), "model_info": RLM_MODEL_INFO},
    ]
    config["upstream"]["timeout_s"] = 30
    return start_proxy(config)


def client(proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)


def ask(proxy: Server, model: str, text: str = "hello", headers: dict[str, str] | None = None) -> str:
    completion = client(proxy).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], extra_headers=headers)
    return completion.choices[0].message.content or ""


def requests(mock: Mock) -> int:
    return int(mock.stats()["requests"])


def reset(mocks: dict[str, Mock]) -> None:
    for mock in mocks.values():
        mock.reset()


def test_load_spreads_over_deployments_by_weight(router_proxy: Server, mocks: dict[str, Mock]) -> None:
    reset(mocks)
    for number in range(200):
        assert ask(router_proxy, "spread", f"question {number}").startswith("mock reply")
    a, b = requests(mocks["a"]), requests(mocks["b"])
    assert a + b == 200
    assert 0.15 < a / 200 < 0.35  # weight 1 of 4


def test_streams_spread_too(router_proxy: Server, mocks: dict[str, Mock]) -> None:
    reset(mocks)
    for number in range(40):
        stream = client(router_proxy).chat.completions.create(
            model="spread", messages=[{"role": "user", "content": f"q {number}"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("mock reply")
    assert requests(mocks["a"]) > 0 and requests(mocks["b"]) > 0


def test_a_failing_deployment_is_retried_on_another_then_cooled_down(router_proxy: Server,
                                                                     mocks: dict[str, Mock]) -> None:
    reset(mocks)
    for _ in range(10):
        assert ask(router_proxy, "flaky").startswith("mock reply")
    # allowed_fails 1: the second failure within a minute cools it down (for 600 s), so later requests
    # go straight to the healthy deployment although the failing one weighs 1000 times more.
    assert requests(mocks["failing"]) == 2
    assert requests(mocks["a"]) == 10


def test_fallbacks_answer_from_another_group(router_proxy: Server, mocks: dict[str, Mock]) -> None:
    reset(mocks)
    assert ask(router_proxy, "broken").startswith("mock reply")
    # The only deployment of `broken` is retried (max_retries 2), never cooled down, then `spread` answers.
    assert requests(mocks["failing"]) == 3
    assert requests(mocks["a"]) + requests(mocks["b"]) == 1


def test_context_window_fallbacks_answer_from_a_bigger_window(router_proxy: Server,
                                                              mocks: dict[str, Mock]) -> None:
    reset(mocks)
    long_question = "tell me about this: " + "words " * 200
    answer = ask(router_proxy, "small", long_question, headers={"x-rlm-mode": "off"})
    assert answer.startswith("mock reply")
    assert requests(mocks["small"]) == 1  # a context-window error is not retried on the same group
    assert requests(mocks["a"]) + requests(mocks["b"]) == 1


def test_rlm_sub_calls_spread_over_the_deployments(router_proxy: Server, mocks: dict[str, Mock]) -> None:
    reset(mocks)
    answer = ask(router_proxy, "rlm", needle_prompt(2_000_000, "vivid-harbor", "4817302"),
                 headers={"x-rlm-mode": "on", **NO_CACHE})
    assert answer == "4817302"
    a, b = requests(mocks["a"]), requests(mocks["b"])
    assert a + b > 2_000_000 // 114_000 and a > 0 and b > 0


def test_rlm_root_and_sub_calls_fall_back_to_another_group(router_proxy: Server,
                                                           mocks: dict[str, Mock]) -> None:
    reset(mocks)
    answer = ask(router_proxy, "rlm-broken", needle_prompt(300_000, "quiet-lantern", "5150"),
                 headers={"x-rlm-mode": "on", **NO_CACHE})
    assert answer == "5150"
    # Two root replies and at least one sub-call, each tried on `rlm-broken` (three attempts) and then
    # answered by `rlm`.
    answered = requests(mocks["a"]) + requests(mocks["b"])
    assert answered >= 3
    assert requests(mocks["failing"]) == 3 * answered


def test_an_unsupported_litellm_setting_stops_the_start(mocks: dict[str, Mock], start_proxy: StartProxy,
                                                        tmp_path: Path) -> None:
    config = proxy_config(mocks["a"], router_settings={"routing_strategy": "least-busy", "redis_host": "r"})
    with pytest.raises(RuntimeError) as info:
        start_proxy(config)
    assert "'router_settings.redis_host' is not supported by rlm-proxy" in str(info.value)
