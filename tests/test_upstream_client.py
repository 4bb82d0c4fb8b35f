"""The fast path's HTTP client, driven in process through `Upstream` against the real mock upstream.

Connections are observed through a counting TCP relay in front of the mock; the pool's cost is observed as
Python function calls per model call, which unlike time does not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import Any

import pytest

from proxy import upstream as upstream_module
from proxy.config import UpstreamSettings
from proxy.mock_policy import needle_prompt
from proxy.registry import Deployment
from proxy.upstream import Upstream, UpstreamError
from tests.harness import Mock, free_port, start_server


@pytest.fixture(scope="module")
def wide_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    """A mock without a context window, so that a prompt and its reply can be as long as a test needs."""
    server = start_server(["mock-upstream"], "/v1/models", tmp_path_factory.mktemp("mock") / "mock.log")
    yield Mock(server)
    server.stop()


class Observer:
    def __init__(self) -> None:
        self.usages: list[dict[str, Any]] = []
        self.errors: list[UpstreamError] = []

    def on_usage(self, deployment: Deployment, usage: dict[str, Any]) -> None:
        self.usages.append(usage)

    def on_error(self, deployment: Deployment, error: UpstreamError) -> None:
        self.errors.append(error)


class CountingRelay:
    """Relays TCP connections to a port and counts the connections it accepts."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> CountingRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, target_writer]
        await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def port_of(mock: Mock) -> int:
    return int(mock.server.url.rsplit(":", 1)[1])


def deployment(base_url: str, **params: Any) -> Deployment:
    return Deployment("mock", "openai/mock-model", params={"api_base": base_url + "/v1", "api_key": "sk-x",
                                                           **params})


def ask(text: str, stream: bool = False) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "stream": stream}


def long_reply_prompt(chars: int) -> tuple[str, str]:
    """A prompt the mock answers with `chars` characters (a needle's value), and that answer."""
    value = "7" * chars
    return needle_prompt(200, "long", value), value


async def streamed(client: Upstream, target: Deployment, text: str) -> list[dict[str, Any]]:
    return [chunk async for chunk in client.stream(target, ask(text, stream=True))]


@contextlib.asynccontextmanager
async def upstream(**settings: Any) -> AsyncIterator[tuple[Upstream, Observer]]:
    observer = Observer()
    client = Upstream(UpstreamSettings(**{"max_retries": 0, **settings}), observer)
    try:
        yield client, observer
    finally:
        await client.aclose()


async def test_connections_are_reused_and_capped_by_max_connections(wide_mock: Mock) -> None:
    async with CountingRelay(port_of(wide_mock)) as relay, upstream(max_connections=3) as (client, _):
        target = deployment(relay.url)
        for _ in range(5):
            await client.complete(target, ask("one at a time"))
        assert relay.accepted == 1
        slow = ask("[[mock:latency_ms=100]] at once")
        replies = await asyncio.gather(*(client.complete(target, slow) for _ in range(12)))
        assert all(reply["choices"][0]["message"]["content"].startswith("mock reply:") for reply in replies)
        assert relay.accepted == 3  # the first connection and two more; the other calls waited for one


async def _python_calls_per_model_call(client: Upstream, target: Deployment, in_flight: int) -> float:
    """Python function calls per model call, with `in_flight` calls (and as many connections) at a time."""
    body = ask("[[mock:latency_ms=100]] count my calls")  # long enough for all of them to overlap

    async def wave() -> None:
        await asyncio.gather(*(client.complete(target, body) for _ in range(in_flight)))

    await wave()  # the pool fills up
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        for _ in range(3):
            await wave()
    finally:
        sys.setprofile(None)
    return calls / (3 * in_flight)


async def test_work_per_call_does_not_grow_with_the_number_of_open_connections(wide_mock: Mock) -> None:
    # httpcore's pool walked every connection whenever a request started or ended, and for each idle one
    # every connection again: with 400 open, a call cost 28x the Python work of a call on a single
    # connection (45,000 function calls), and the event loop stalled for seconds at 800 (issue 9).
    async with upstream(max_connections=1000, max_retries=2) as (client, _):
        target = deployment(wide_mock.server.url)
        one = await _python_calls_per_model_call(client, target, 1)
        many = await _python_calls_per_model_call(client, target, 400)
    assert many < 2 * one, f"{one:.0f} Python calls per model call on one connection, {many:.0f} with 400"


async def test_stream_lines_longer_than_aiohttps_default_buffer(wide_mock: Mock) -> None:
    prompt, answer = long_reply_prompt(600_000)  # the mock's 4 deltas: 150 KB SSE lines (readline: 128 KiB)
    async with upstream() as (client, observer):
        chunks = await streamed(client, deployment(wide_mock.server.url), prompt)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == answer
    assert observer.usages  # usage was asked for although the body did not ask


async def test_an_overlong_stream_line_is_a_malformed_answer(wide_mock: Mock,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_module, "MAX_STREAM_LINE_BYTES", 10_000)
    async with upstream() as (client, _):
        with pytest.raises(UpstreamError) as info:
            await streamed(client, deployment(wide_mock.server.url), long_reply_prompt(100_000)[0])
    assert (info.value.status, info.value.code) == (502, "upstream_malformed_response")
    assert "10000 bytes" in info.value.message


async def test_transport_failures_become_502_and_504(wide_mock: Mock) -> None:
    async with upstream(timeout_s=0.3) as (client, observer):
        with pytest.raises(UpstreamError) as refused:
            await client.complete(deployment(f"http://127.0.0.1:{free_port()}"), ask("anyone there?"))
        with pytest.raises(UpstreamError) as slow:
            await client.complete(deployment(wide_mock.server.url), ask("[[mock:timeout]]"))
        with pytest.raises(UpstreamError) as dropped:
            await streamed(client, deployment(wide_mock.server.url), "[[mock:stream_error]]")
    assert (refused.value.status, refused.value.code) == (502, "upstream_unreachable")
    assert (slow.value.status, slow.value.code) == (504, "upstream_timeout")
    assert "0.3 s" in slow.value.message
    assert (dropped.value.status, dropped.value.code) == (502, "upstream_unreachable")
    assert [error.code for error in observer.errors] == ["upstream_unreachable", "upstream_timeout",
                                                        "upstream_unreachable"]


async def test_http_proxy_from_the_environment(wide_mock: Mock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with CountingRelay(port_of(wide_mock)) as proxy:
        for name in ("http_proxy", "no_proxy"):  # the lower-case spelling wins where both are set
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        async with upstream() as (client, _):
            reply = await client.complete(deployment(wide_mock.server.url), ask("via the proxy"))
        assert reply["choices"][0]["message"]["content"] == "mock reply: via the proxy"
        assert proxy.accepted == 1
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with upstream() as (client, _):
            await client.complete(deployment(wide_mock.server.url), ask("around the proxy"))
        assert proxy.accepted == 1
