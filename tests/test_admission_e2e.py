"""Admission control through the real proxy: RLM runs beyond the slots wait in a bounded queue, past it they
get 503 server_overloaded before any response starts, short requests never wait, and /readyz and /metrics
show it all. The mock answers slowly so that runs overlap."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest

from proxy.admission import MIB, PROXY_RESERVE_MB, memory_limit_bytes
from proxy.mock_policy import needle_prompt
from tests.harness import EXTRA_KEY, MASTER_KEY, Mock, Server, StartProxy, rlm_config, scrape, start_server

RLM_ON = {"x-rlm-mode": "on", "cache-control": "no-cache, no-store"}
MOCK_LATENCY_MS = 300


@pytest.fixture(scope="module")
def slow_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    server = start_server(["mock-upstream", "--context-window-tokens", "32000",
                           "--latency-ms", str(MOCK_LATENCY_MS)],
                          "/v1/models", tmp_path_factory.mktemp("mock") / "mock.log")
    yield Mock(server)
    server.stop()


def admitting(slow_mock: Mock, start_proxy: StartProxy, **admission: Any) -> Server:
    return start_proxy(rlm_config(slow_mock, admission=admission, sandbox={"workers": 2}))


@pytest.fixture(scope="module")
def one_slot(slow_mock: Mock, start_proxy: StartProxy) -> Server:
    return admitting(slow_mock, start_proxy, max_concurrent_rlm_runs=1, max_queued_rlm_runs=1,
                     queue_timeout_s=60)


def client(proxy: Server, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=120)


def needle(name: str) -> str:
    return needle_prompt(150_000, name, "4817302")


def admission_state(proxy: Server) -> dict[str, Any]:
    return httpx.get(proxy.url + "/readyz", timeout=5).json()["checks"]["admission"]


def wait_for(condition: Callable[[], bool], what: str, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Background:
    """A request in a thread: its answer, or the error it raised."""

    def __init__(self, call: Callable[[], str]) -> None:
        self.answer: str | None = None
        self.error: Exception | None = None

        def run() -> None:
            try:
                self.answer = call()
            except Exception as exc:  # reported by result()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self) -> str:
        self.thread.join(120)
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer


def ask_rlm(proxy: Server, name: str, key: str = MASTER_KEY) -> Background:
    def call() -> str:
        completion = client(proxy, key).chat.completions.create(
            model="mock", messages=[{"role": "user", "content": needle(name)}], extra_headers=RLM_ON)
        return completion.choices[0].message.content or ""

    return Background(call)


def rejected(proxy: Server, reason: str) -> float:
    return scrape(proxy).get(("rlm_proxy_admission_rejected_total", (("reason", reason),)), 0.0)


def test_runs_past_the_slot_wait_then_past_the_queue_are_refused(one_slot: Server) -> None:
    refused_before = rejected(one_slot, "queue_full")
    first = ask_rlm(one_slot, "first-run")
    wait_for(lambda: admission_state(one_slot)["running"] == 1, "the first run to start")
    second = ask_rlm(one_slot, "second-run")
    wait_for(lambda: admission_state(one_slot)["queued"] == 1, "the second run to queue")
    assert scrape(one_slot)[("rlm_proxy_rlm_runs_queued", ())] == 1
    # The queue is full: refused at once, before any response starts, streaming or not.
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as refused:
            client(one_slot).chat.completions.create(
                model="mock", messages=[{"role": "user", "content": needle("third-run")}],
                extra_headers=RLM_ON, stream=stream)
        assert refused.value.status_code == 503
        assert refused.value.response.headers["retry-after"] == "5"
        assert refused.value.response.json()["error"]["code"] == "server_overloaded"
    # Short requests are never queued behind RLM runs.
    direct = client(one_slot).chat.completions.create(model="mock",
                                                      messages=[{"role": "user", "content": "quick"}])
    assert direct.choices[0].message.content == "mock reply: quick"
    assert admission_state(one_slot)["queued"] == 1
    assert first.result() == "4817302" and second.result() == "4817302"
    assert admission_state(one_slot) | {"queue_timeout_s": 60} == {
        "running": 0, "queued": 0, "capacity": 1, "max_queued": 1, "queue_timeout_s": 60}
    assert rejected(one_slot, "queue_full") - refused_before == 2


def test_the_anthropic_route_is_refused_in_its_own_shape(one_slot: Server) -> None:
    first = ask_rlm(one_slot, "holder")
    wait_for(lambda: admission_state(one_slot)["running"] == 1, "the first run to start")
    second = ask_rlm(one_slot, "waiter")
    wait_for(lambda: admission_state(one_slot)["queued"] == 1, "the second run to queue")
    response = httpx.post(one_slot.url + "/v1/messages", timeout=30, headers={
        "x-api-key": MASTER_KEY, **RLM_ON}, json={
        "model": "mock", "max_tokens": 100, "messages": [{"role": "user", "content": needle("third")}]})
    assert response.status_code == 503
    assert response.json() == {"type": "error", "error": {
        "type": "overloaded_error", "message": response.json()["error"]["message"]}}
    assert "overloaded" in response.json()["error"]["message"]
    assert first.result() == second.result() == "4817302"


def runs_ended(proxy: Server) -> float:
    return sum(value for (name, _), value in scrape(proxy).items() if name == "rlm_proxy_rlm_stopped_total")


def test_a_queued_run_whose_client_leaves_gives_up_its_place(one_slot: Server) -> None:
    ended_before = runs_ended(one_slot)
    holder = ask_rlm(one_slot, "holder-2")
    wait_for(lambda: admission_state(one_slot)["running"] == 1, "the first run to start")
    # A raw socket: an HTTP client would wait for the response's head, which comes only once admitted.
    body = orjson.dumps({"model": "mock", "messages": [{"role": "user", "content": needle("leaver")}]})
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {MASTER_KEY}\r\n"
            f"x-rlm-mode: on\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
    address = urlsplit(one_slot.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        connection.sendall(head.encode() + body)
        wait_for(lambda: admission_state(one_slot)["queued"] == 1, "the run to queue")
    # The client hung up while waiting: the queue is empty again, and its run never starts.
    wait_for(lambda: admission_state(one_slot)["queued"] == 0, "the place to be given up")
    assert holder.result() == "4817302"
    time.sleep(1)  # long enough for a wrongly admitted run to start and be cancelled
    assert runs_ended(one_slot) - ended_before == 1


def test_a_wait_longer_than_the_queue_timeout_is_refused(slow_mock: Mock, start_proxy: StartProxy) -> None:
    proxy = admitting(slow_mock, start_proxy, max_concurrent_rlm_runs=1, queue_timeout_s=0.2)
    holder = ask_rlm(proxy, "long-holder")
    wait_for(lambda: admission_state(proxy)["running"] == 1, "the first run to start")
    with pytest.raises(openai.APIStatusError) as refused:
        client(proxy).chat.completions.create(
            model="mock", messages=[{"role": "user", "content": needle("x")}], extra_headers=RLM_ON)
    assert refused.value.status_code == 503 and "within 0.2 s" in refused.value.message
    assert rejected(proxy, "queue_timeout") == 1
    assert holder.result() == "4817302"


def test_another_key_is_not_stuck_behind_one_keys_burst(slow_mock: Mock, start_proxy: StartProxy) -> None:
    # The last of five runs in one slot waits for four: under load that took longer than the default
    # queue timeout (30 s) once.
    proxy = admitting(slow_mock, start_proxy, max_concurrent_rlm_runs=1, max_queued_rlm_runs=10,
                      queue_timeout_s=120)
    finished: list[str] = []

    def tracked(name: str, key: str) -> Background:
        run = ask_rlm(proxy, name, key)
        threading.Thread(target=lambda: (run.thread.join(120), finished.append(name)), daemon=True).start()
        return run

    runs = [tracked("burst-0", MASTER_KEY)]
    wait_for(lambda: admission_state(proxy)["running"] == 1, "the burst to start")
    for number in (1, 2, 3):
        runs.append(tracked(f"burst-{number}", MASTER_KEY))
        wait_for(lambda n=number: admission_state(proxy)["queued"] == n, "the burst to queue")
    runs.append(tracked("other-key", EXTRA_KEY))
    wait_for(lambda: admission_state(proxy)["queued"] == 4, "the other key's run to queue")
    assert all(run.result() == "4817302" for run in runs)
    wait_for(lambda: len(finished) == 5, "every run to be counted")
    # The other key's run arrived last, yet went right after the run that was going.
    assert finished[:2] == ["burst-0", "other-key"]


def test_sandbox_workers_and_slots_default_to_each_server_processes_share_of_memory(
        slow_mock: Mock, start_proxy: StartProxy) -> None:
    # Each worker allowed a quarter of what two server processes leave: two workers per process. Without
    # the processes' count each would size itself from all the memory (four or five).
    usable_mb = memory_limit_bytes() // MIB - 2 * PROXY_RESERVE_MB
    proxy = start_proxy(rlm_config(slow_mock, sandbox={"memory_mb": usable_mb // 4}), args=["--workers", "2"])
    checks = httpx.get(proxy.url + "/readyz", timeout=5).json()["checks"]
    assert checks["sandbox"]["max_workers"] == 2
    assert checks["admission"]["capacity"] == 2
