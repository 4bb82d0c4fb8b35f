"""Single-flight across replicas: two Cache objects on one real Redis stand for two proxy processes; then
two real proxy processes sharing Redis run the same RLM request at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import openai
import pytest
import redis

from proxy.cache import CLAIM_SUFFIX, Cache, CachePolicy
from proxy.config import CacheSettings
from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Redis, StartProxy, rlm_config, start_server

POLICY = CachePolicy(scope="")


def replica(redis_server: Redis, **settings: object) -> Cache:
    return Cache(CacheSettings(redis_url=redis_server.url, **settings), on_lookup=lambda result: None)


class Producer:
    """A model call: counted, slow, and failing when told to."""

    def __init__(self, seconds: float = 0.3, fail: bool = False) -> None:
        self.calls = 0
        self.seconds = seconds
        self.fail = fail

    async def __call__(self) -> bytes:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("upstream failed")
        return b"answer"


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return f"rlm:test:{request.node.name}"


async def test_replicas_asking_at_once_make_one_call(redis_server: Redis, key: str) -> None:
    first, second = replica(redis_server), replica(redis_server)
    produce = Producer()
    answers = await asyncio.gather(first.fetch(key, POLICY, produce), second.fetch(key, POLICY, produce))
    assert produce.calls == 1
    assert sorted(answers) == [(b"answer", False), (b"answer", True)]
    # The claim is gone with the call; the answer stays.
    assert redis.Redis.from_url(redis_server.url).exists(key + CLAIM_SUFFIX) == 0
    await asyncio.gather(first.aclose(), second.aclose())


async def test_a_claim_left_by_a_dead_replica_expires_and_the_call_is_made(redis_server: Redis,
                                                                          key: str) -> None:
    redis.Redis.from_url(redis_server.url).set(key + CLAIM_SUFFIX, "a-dead-replica", px=300)
    survivor = replica(redis_server)
    produce = Producer(0.01)
    assert await survivor.fetch(key, POLICY, produce) == (b"answer", False)
    assert produce.calls == 1
    await survivor.aclose()


async def test_when_the_holder_fails_a_waiter_makes_the_call(redis_server: Redis, key: str) -> None:
    first, second = replica(redis_server), replica(redis_server)
    failing, working = Producer(0.2, fail=True), Producer(0.01)
    holder = asyncio.ensure_future(first.fetch(key, POLICY, failing))
    await asyncio.sleep(0.05)  # the first has claimed the call
    assert await second.fetch(key, POLICY, working) == (b"answer", False)
    with pytest.raises(RuntimeError):
        await holder
    assert (failing.calls, working.calls) == (1, 1)
    await asyncio.gather(first.aclose(), second.aclose())


async def test_a_long_call_keeps_its_claim(redis_server: Redis, key: str) -> None:
    """The holder renews a claim shorter than its call, so nobody calls twice."""
    first, second = replica(redis_server, shared_flight_lock_s=0.3), replica(redis_server,
                                                                            shared_flight_lock_s=0.3)
    produce = Producer(1.0)
    answers = await asyncio.gather(first.fetch(key, POLICY, produce), second.fetch(key, POLICY, produce))
    assert produce.calls == 1 and sorted(answers) == [(b"answer", False), (b"answer", True)]
    await asyncio.gather(first.aclose(), second.aclose())


@pytest.mark.parametrize("policy", [CachePolicy(scope="", write=False), CachePolicy(scope="", read=False)],
                         ids=["no-store", "no-cache"])
async def test_calls_that_cannot_share_do_not_wait(redis_server: Redis, key: str,
                                                   policy: CachePolicy) -> None:
    first, second = replica(redis_server), replica(redis_server)
    produce = Producer()
    await asyncio.gather(first.fetch(key, policy, produce), second.fetch(key, policy, produce))
    assert produce.calls == 2
    await asyncio.gather(first.aclose(), second.aclose())


async def test_a_wait_has_a_bound(redis_server: Redis, key: str) -> None:
    redis.Redis.from_url(redis_server.url).set(key + CLAIM_SUFFIX, "a-stuck-replica", px=60_000)
    impatient = replica(redis_server, shared_flight_wait_s=0.2)
    produce = Producer(0.01)
    assert await impatient.fetch(key, POLICY, produce) == (b"answer", False)
    assert produce.calls == 1
    await impatient.aclose()


async def test_a_call_failing_after_the_wait_fails_once(redis_server: Redis, key: str) -> None:
    """Its error is the upstream's: not taken for a Redis failure, and the call is not made again."""
    redis.Redis.from_url(redis_server.url).set(key + CLAIM_SUFFIX, "a-stuck-replica", px=60_000)
    impatient = replica(redis_server, shared_flight_wait_s=0.1)
    failing = Producer(0.01, fail=True)
    with pytest.raises(RuntimeError):
        await impatient.fetch(key, POLICY, failing)
    assert failing.calls == 1
    await impatient.aclose()


async def test_without_redis_the_call_is_made(key: str) -> None:
    gone = Cache(CacheSettings(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.2),
                 on_lookup=lambda result: None)
    produce = Producer(0.01)
    assert await gone.fetch(key, POLICY, produce) == (b"answer", False)
    assert produce.calls == 1
    await gone.aclose()


# --- two proxy processes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    server = start_server(["mock-upstream", "--context-window-tokens", "32000", "--latency-ms", "400"],
                          "/v1/models", tmp_path_factory.mktemp("mock") / "mock.log")
    yield Mock(server)
    server.stop()


def test_two_proxies_running_the_same_run_call_the_model_once_per_call(
        slow_mock: Mock, start_proxy: StartProxy, redis_server: Redis) -> None:
    config = rlm_config(slow_mock, cache={"redis_url": redis_server.url, "scope": "global"})
    proxies = [start_proxy(config), start_proxy(config)]
    prompt = needle_prompt(400_000, "twin-run", "2718281")
    answers: list[str] = []

    def run(url: str) -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)
        completion = client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": prompt}], extra_headers={"x-rlm-mode": "on"})
        answers.append(completion.choices[0].message.content or "")

    slow_mock.reset()
    threads = [threading.Thread(target=run, args=(proxy.url,)) for proxy in proxies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert answers == ["2718281", "2718281"]
    # One run alone: two root replies and one call per distinct chunk (the filler's, the needle's, the
    # short last one). Twice that if each proxy called for itself.
    assert slow_mock.stats()["requests"] <= 2 + 3
