"""Per-key and per-team limits through the real proxy, the openai SDK and the mock: two proxy processes
sharing one real Redis (a limit reached through one holds on the other), rpm, tpm counting RLM sub-calls,
parallel requests and RLM runs, budgets with their reset and mid-run stop, the in-process counters, and
Redis down under both failure policies."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Redis, Server, StartProxy, rlm_config, scrape

ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
TEAM_A, TEAM_B = "sk-team-a", "sk-team-b"
SLOW = " [[mock:latency_ms=1500]]"


def limits_config(mock: Mock, redis: Redis | None, **limits: Any) -> dict[str, Any]:
    keys = [{"key": TEAM_A, "team": "small"}, {"key": TEAM_B, "team": "small"}]
    cache = {"redis_url": redis.url, "redis_retry_s": 0.2} if redis is not None else {}
    return rlm_config(mock, server={"keys": keys, "teams": [{"team": "small", "rpm": 3}]}, cache=cache,
                      limits=limits)


@pytest.fixture(scope="module")
def replicas(own_mock_upstream: Mock, start_proxy: StartProxy, redis_server: Redis) -> tuple[Server, Server]:
    config = limits_config(own_mock_upstream, redis_server)
    return start_proxy(config), start_proxy(config)


@pytest.fixture
def fresh_minute() -> None:
    """Counts per minute are fixed windows: start a test that counts them well inside one."""
    into = time.time() % 60
    if into > 45:
        time.sleep(60.5 - into)


def new_key(proxy: Server, **fields: Any) -> str:
    response = httpx.post(proxy.url + "/key/generate", headers=ADMIN, json=fields)
    assert response.status_code == 200, response.text
    return response.json()["key"]


def chat(proxy: Server, key: str, text: str = "Say hi.", model: str = "mock", **kwargs: Any) -> Any:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=120)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kwargs)


def refused(proxy: Server, key: str, text: str = "Say hi.", model: str = "mock") -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        chat(proxy, key, text, model)
    return info.value


@pytest.mark.usefixtures("fresh_minute")
def test_rpm_holds_across_replicas_with_openais_headers(replicas: tuple[Server, Server]) -> None:
    one, two = replicas
    key = new_key(one, rpm_limit=3)
    seen = [chat(proxy, key).headers for proxy in (one, two, one)]
    assert [headers["x-ratelimit-remaining-requests"] for headers in seen] == ["2", "1", "0"]
    assert {headers["x-ratelimit-limit-requests"] for headers in seen} == {"3"}
    assert all(0 <= int(headers["x-ratelimit-reset-requests"].rstrip("s")) <= 60 for headers in seen)
    error = refused(two, key)
    assert (error.status_code, error.body["code"], error.body["type"]) == (429, "rate_limit_exceeded",
                                                                           "rate_limit_error")
    assert 1 <= int(error.response.headers["retry-after"]) <= 60
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    # The Messages route answers in its own shape.
    messages = httpx.post(one.url + "/v1/messages", headers={"x-api-key": key}, json={
        "model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert messages.status_code == 429
    assert messages.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in messages.headers
    # Embeddings count too (the limit is per key, whatever the route).
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=two.url + "/v1", api_key=key, max_retries=0).embeddings.create(
            model="mock", input="x")
    assert scrape(two)[("rlm_proxy_limit_rejected_total", (("limit", "rpm"), ("scope", "key")))] >= 2


@pytest.mark.usefixtures("fresh_minute")
def test_a_teams_rpm_is_shared_by_its_keys(replicas: tuple[Server, Server]) -> None:
    one, two = replicas
    chat(one, TEAM_A)
    chat(two, TEAM_B)
    chat(two, TEAM_A)
    error = refused(one, TEAM_B)
    assert error.status_code == 429 and "This team has reached its limit of 3 requests per minute" in \
        error.body["message"]


@pytest.mark.usefixtures("fresh_minute")
def test_tpm_counts_rlm_sub_calls(replicas: tuple[Server, Server]) -> None:
    one, two = replicas
    key = new_key(one, tpm_limit=20_000)
    # The root model sees only a description of the 200k characters; the sub-calls read them all.
    raw = chat(one, key, needle_prompt(200_000, "amber-gate", "7719"), model="rlm/mock")
    completion = raw.parse()
    assert completion.choices[0].message.content == "7719"
    assert raw.headers["x-ratelimit-limit-tokens"] == "20000"
    assert completion.usage.total_tokens > 40_000
    error = refused(two, key)
    assert error.status_code == 429 and "20000 tokens per minute" in error.body["message"]
    assert error.response.headers["x-ratelimit-remaining-tokens"] == "0"


def test_parallel_requests_and_rlm_runs_hold_across_replicas(replicas: tuple[Server, Server]) -> None:
    one, two = replicas
    key = new_key(one, max_parallel_requests=1)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(chat, one, key, "Say hi." + SLOW)
        time.sleep(0.7)
        error = refused(two, key)
        assert (error.status_code, error.body["code"]) == (429, "parallel_requests_exceeded")
        assert error.response.headers["retry-after"] == "1"
        assert slow.result().parse().choices[0].message.content
    assert chat(two, key).parse().choices[0].message.content  # the slot came back

    runs = new_key(one, max_parallel_rlm_runs=1)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(chat, one, runs, needle_prompt(50_000, "calm-reef", "3141") + SLOW, "rlm/mock")
        time.sleep(0.7)
        error = refused(two, runs, "Hi." + SLOW, "rlm/mock")
        assert (error.status_code, error.body["code"]) == (429, "parallel_rlm_runs_exceeded")
        assert chat(two, runs).parse().choices[0].message.content  # direct requests are not RLM runs
        assert run.result().parse().choices[0].message.content == "3141"


def test_a_budget_is_refused_once_spent_and_resets_after_its_period(replicas: tuple[Server, Server]) -> None:
    one, two = replicas
    key = new_key(one, max_budget=0.00001, budget_duration="3s")  # the mock costs 1e-6 $ per prompt token
    while True:  # start early in a budget period, so that two requests fall in it
        into = time.time() % 3
        if into < 1:
            break
        time.sleep(3.05 - into)
    chat(one, key, "Tell me about " + "budgets " * 20)
    error = refused(two, key)
    assert (error.status_code, error.body["code"]) == (429, "budget_exceeded")
    time.sleep(int(error.response.headers["retry-after"]) + 0.05)
    assert chat(two, key).parse().choices[0].message.content


def test_an_rlm_run_stops_at_its_keys_budget_and_answers(replicas: tuple[Server, Server]) -> None:
    one, two = replicas
    key = new_key(one, max_budget=0.05)  # a 1 MB needle costs about 0.25 $ of sub-calls on the mock
    raw = chat(one, key, needle_prompt(1_000_000, "deep-well", "2718"), model="rlm/mock")
    assert raw.headers["x-rlm-stopped"] == "max_cost_usd"
    left = 0.05 - float(raw.headers["x-rlm-cost-usd"])
    assert 0 < left < 0.03  # less than one more sub-call over a chunk of the prompt
    assert raw.parse().choices[0].message.content is not None
    # What is left is spent by direct requests of about 0.025 $ each; then the key is refused.
    spent = float(raw.headers["x-rlm-cost-usd"])
    while spent < 0.05:
        usage = chat(two, key, needle_prompt(100_000, "deep-well", "2718"),
                     extra_headers={"x-rlm-mode": "off"}).parse().usage
        spent += usage.prompt_tokens * 1e-6 + usage.completion_tokens * 2e-6  # the mock's prices
    error = refused(two, key)
    assert (error.status_code, error.body["code"]) == (429, "budget_exceeded")
    assert "does not reset" in error.body["message"] and "retry-after" not in error.response.headers


def test_parallel_rlm_runs_on_two_replicas_share_their_keys_budget(replicas: tuple[Server, Server]) -> None:
    one, two = replicas
    key = new_key(one, max_budget=0.05)
    # Each run alone would spend all of it (a 1 MB needle costs about 0.25 $ of sub-calls on the mock).
    with ThreadPoolExecutor(2) as pool:
        # Different needles: the second run's sub-calls must not be the first one's, cached.
        runs = list(pool.map(lambda pair: chat(pair[0], key, needle_prompt(1_000_000, pair[1], "31415"),
                                               model="rlm/mock"), ((one, "first"), (two, "second"))))
    assert all(raw.headers["x-rlm-stopped"] == "max_cost_usd" for raw in runs)
    spent = sum(float(raw.headers["x-rlm-cost-usd"]) for raw in runs)
    # Each run drew from the budget before spending: together they stay within it, but for the root
    # model's closing answers (about 0.002 $ each), which a run gives after its budget ran out. Each run
    # given all that was left, as before, spent over 0.03 $.
    assert spent <= 0.05 + 0.005, spent
    # What the runs drew and did not spend went back: the key can still make a small request.
    assert chat(two, key).parse().choices[0].message.content


@pytest.mark.usefixtures("fresh_minute")
def test_without_redis_limits_hold_in_process(own_mock_upstream: Mock, start_proxy: StartProxy) -> None:
    proxy = start_proxy(limits_config(own_mock_upstream, None))
    for _ in range(3):
        chat(proxy, TEAM_A)
    assert refused(proxy, TEAM_B).status_code == 429


@pytest.fixture
def redis_down(redis_server: Redis) -> Iterator[None]:
    redis_server.kill()
    yield
    redis_server.start()


@pytest.mark.usefixtures("fresh_minute")
def test_redis_down_fails_open_or_closed_as_configured(own_mock_upstream: Mock, start_proxy: StartProxy,
                                                       redis_server: Redis) -> None:
    fail_open = start_proxy(limits_config(own_mock_upstream, redis_server))
    fail_closed = start_proxy(limits_config(own_mock_upstream, redis_server, redis_failure="closed"))
    redis_server.kill()
    try:
        for _ in range(5):  # past the team's rpm of 3: nothing counts while Redis is down
            assert chat(fail_open, TEAM_A).parse().choices[0].message.content
        assert scrape(fail_open)[("rlm_proxy_limits_unavailable_total", ())] >= 5
        assert fail_open.log().count("limit counters failed") == 1
        error = refused(fail_closed, TEAM_A)
        assert (error.status_code, error.body["code"]) == (503, "limits_unavailable")
    finally:
        redis_server.start()
    time.sleep(0.3)  # past redis_retry_s: the counters are tried again
    for _ in range(3):
        chat(fail_closed, TEAM_A)
    assert refused(fail_open, TEAM_B).status_code == 429


def test_limits_never_label_metrics_or_logs_with_keys(replicas: tuple[Server, Server]) -> None:
    one, _ = replicas
    key = new_key(one, rpm_limit=1)
    chat(one, key)
    refused(one, key)
    text = httpx.get(one.url + "/metrics").text
    digest = hashlib.sha256(key.encode()).hexdigest()
    for secret in (key, digest, digest[:8], TEAM_A):
        assert secret not in text
    for secret in (key, digest, TEAM_A):  # the audit log names a key by the start of its hash only
        assert secret not in one.log()
