"""Request heads over the size or field-count limit get 431 from the HTTP server itself, for both uvicorn
HTTP implementations, in one process and with several workers, without the proxy buffering them."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest

from proxy.config import ConfigError, load_settings
from proxy.http_server.head_limits import HeadCounter, HeadLimits
from tests.harness import MASTER_KEY, Mock, Server, StartProxy, proxy_config, unexpected_output

MAX_BYTES, MAX_FIELDS = 65536, 100  # the defaults
IMPLEMENTATIONS = ["httptools", "h11"]
HEAD_CODE = "request_header_fields_too_large"


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def proxy(request: pytest.FixtureRequest, mock_upstream: Mock, start_proxy: StartProxy) -> Iterator[Server]:
    server = start_proxy(proxy_config(mock_upstream), args=["--http", request.param])
    yield server
    assert unexpected_output(server) == []


def client(proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


def chat(proxy: Server, headers: dict[str, str]) -> str | None:
    completion = client(proxy).chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "hello"}], extra_headers=headers)
    return completion.choices[0].message.content


def assert_refused(proxy: Server, headers: dict[str, str], message: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        chat(proxy, headers)
    assert info.value.status_code == 431
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == HEAD_CODE and error["type"] == "invalid_request_error"
    assert message in error["message"]
    assert info.value.response.headers["x-request-id"]


def fields(count: int) -> dict[str, str]:
    return {f"x-field-{index}": "1" for index in range(count)}


# -- through the openai SDK ---------------------------------------------------------------------------


def test_a_1mb_header_gets_431(proxy: Server) -> None:
    assert_refused(proxy, {"x-big": "a" * 1_000_000}, f"limit of {MAX_BYTES} bytes")


def test_too_many_header_fields_get_431(proxy: Server) -> None:
    assert_refused(proxy, fields(MAX_FIELDS + 20), f"more than {MAX_FIELDS} header fields")


def test_ordinary_requests_with_an_8kb_header_work(proxy: Server) -> None:
    assert chat(proxy, {"x-trace": "t" * 8192, **fields(40)}) == "mock reply: hello"


# -- raw HTTP, to place bytes exactly ------------------------------------------------------------------


def address(server: Server) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def head(size: int | None = None, field_count: int = 0, request_line: bytes = b"GET /livez HTTP/1.1",
         extra: tuple[bytes, ...] = ()) -> bytes:
    """A request head with `field_count` fields (at least `host` and `extra`), or padded by one more
    field to exactly `size` bytes."""
    lines = [request_line, b"host: test", *extra]
    lines += [b"x-field-%d: 1" % index for index in range(field_count - (len(lines) - 1))]
    block = b"\r\n".join(lines) + b"\r\n"
    if size is not None:
        block += b"x-pad: " + b"p" * (size - len(block) - len(b"x-pad: \r\n\r\n")) + b"\r\n"
    block += b"\r\n"
    assert size is None or len(block) == size
    return block


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response, read up to its content-length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode().split("\r\n")
    headers = {name.lower(): value.strip()
               for name, _, value in (line.partition(":") for line in header_lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(status_line.split()[1]), headers, body


def exchange(server: Server, *requests: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Sends each request in one write on one connection and reads its response."""
    with socket.create_connection(address(server), timeout=20) as sock:
        responses = []
        for data in requests:
            sock.sendall(data)
            responses.append(read_response(sock))
        return responses


def error_code(body: bytes) -> str:
    return orjson.loads(body)["error"]["code"]


def test_the_limits_are_exact(proxy: Server) -> None:
    assert [status for status, _, _ in exchange(proxy, head(size=MAX_BYTES))] == [200]
    status, _, body = exchange(proxy, head(size=MAX_BYTES + 1))[0]
    assert (status, error_code(body)) == (431, HEAD_CODE)
    assert [status for status, _, _ in exchange(proxy, head(field_count=MAX_FIELDS))] == [200]
    status, _, body = exchange(proxy, head(field_count=MAX_FIELDS + 1))[0]
    assert (status, error_code(body)) == (431, HEAD_CODE)


def test_heads_arriving_in_pieces_are_counted_whole(proxy: Server) -> None:
    for data, expected in ((head(size=MAX_BYTES), 200), (head(field_count=MAX_FIELDS + 1), 431)):
        with socket.create_connection(address(proxy), timeout=20) as sock:
            # Split inside the final blank line too ("\r\n" + "\r\n"), where the end of a head is found.
            for start in range(0, len(data) - 2, 1000):
                sock.sendall(data[start:min(start + 1000, len(data) - 2)])
                time.sleep(0.001)
            sock.sendall(data[-2:])
            assert read_response(sock)[0] == expected


def test_blank_lines_before_the_request_line_do_not_end_the_count(proxy: Server) -> None:
    # llhttp skips them; were they taken for the end of a head, what follows would go uncounted.
    status, _, body = exchange(proxy, b"\r\n\r\n" + head(size=MAX_BYTES + 1))[0]
    assert (status, error_code(body)) == (431, HEAD_CODE)


def chat_body(text: str) -> bytes:
    return orjson.dumps({"model": "mock", "messages": [{"role": "user", "content": text}]})


def post(body: bytes, padding: int) -> bytes:
    extra = (b"authorization: Bearer " + MASTER_KEY.encode(), b"content-type: application/json",
             b"content-length: %d" % len(body), b"x-pad: " + b"p" * padding)
    return head(request_line=b"POST /v1/chat/completions HTTP/1.1", extra=extra) + body


def test_body_bytes_are_not_head_bytes(proxy: Server) -> None:
    """A head just under the limit with a large body in the same write, then more requests on the same
    connection (keep-alive): each head is counted from its own start."""
    text = "b" * 100_000
    responses = exchange(proxy, post(chat_body(text), MAX_BYTES - 400), post(chat_body(text), 1000),
                         head(field_count=MAX_FIELDS + 1))
    assert [status for status, _, _ in responses] == [200, 200, 431]
    assert orjson.loads(responses[0][2])["choices"][0]["message"]["content"].startswith("mock reply: bbb")


def stream_header(server: Server, total: int) -> tuple[bytes, int]:
    """Sends a head whose one header grows towards `total` bytes, until the server answers; returns the
    answer and how many header bytes went out."""
    with socket.create_connection(address(server), timeout=20) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nhost: test\r\nx-big: ")
        sock.setblocking(False)
        piece, sent = b"a" * 65536, 0
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 20)
            if readable:
                break
            try:
                sent += sock.send(piece) if writable else 0
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer, sent


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class PeakRSS:
    """The highest resident size of a process while the block runs, sampled every few milliseconds."""

    def __init__(self, pid: int) -> None:
        self.pid, self.before, self.peak = pid, rss_kib(pid), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.002)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / 1024


def test_a_64mb_header_is_refused_before_it_is_sent_and_never_buffered(proxy: Server) -> None:
    total = 64 * 1024 * 1024
    with PeakRSS(proxy.process.pid) as rss:
        answer, sent = stream_header(proxy, total)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
    assert error_code(answer.partition(b"\r\n\r\n")[2]) == HEAD_CODE
    assert sent < total // 4  # refused at 64 KiB; what is in flight in socket buffers is sent
    assert rss.growth_mib < 20, f"the proxy grew by {rss.growth_mib:.1f} MiB"
    assert httpx.get(proxy.url + "/livez", timeout=5).status_code == 200


def test_livez_answers_while_a_big_header_trickles_in(proxy: Server) -> None:
    stop = threading.Event()

    def trickle() -> None:
        with socket.create_connection(address(proxy), timeout=20) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\nhost: test\r\nx-slow: ")
            for _ in range(60):  # 60 KiB in all, under the limit, never finished
                if stop.is_set():
                    return
                sock.sendall(b"s" * 1024)
                time.sleep(0.02)

    def flood() -> None:
        stream_header(proxy, 64 * 1024 * 1024)

    threads = [threading.Thread(target=trickle), threading.Thread(target=flood)]
    for thread in threads:
        thread.start()
    try:
        with httpx.Client(timeout=2) as probe:
            statuses = []
            for _ in range(20):
                statuses.append(probe.get(proxy.url + "/livez").status_code)
                time.sleep(0.03)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 20


# -- several worker processes, with limits from the config ----------------------------------------------


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def workers_proxy(request: pytest.FixtureRequest, mock_upstream: Mock,
                  start_proxy: StartProxy) -> Iterator[Server]:
    config = proxy_config(mock_upstream, server={"max_header_bytes": 16384, "max_header_count": 30})
    server = start_proxy(config, args=["--http", request.param, "--workers", "2"])
    yield server
    assert unexpected_output(server) == []


def test_configured_limits_hold_in_every_worker(workers_proxy: Server) -> None:
    # New connections land on either worker: enough of them reach both.
    for _ in range(4):
        assert_refused(workers_proxy, {"x-big": "a" * 20_000}, "limit of 16384 bytes")
        assert_refused(workers_proxy, fields(31), "more than 30 header fields")
        assert chat(workers_proxy, {"x-trace": "t" * 8192, **fields(10)}) == "mock reply: hello"


# -- settings and the counter itself ----------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "value"), [("max_header_bytes", 100), ("max_header_count", 0)])
def test_bad_limits_stop_the_start(tmp_path: Path, setting: str, value: int) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"server: {{{setting}: {value}}}\n")
    with pytest.raises(ConfigError, match=f"server.{setting}"):
        load_settings(config)


def counter_verdicts(pieces: list[bytes]) -> list[str | None]:
    counter = HeadCounter(HeadLimits(max_bytes=64, max_fields=2))
    return [counter.over_limit(piece) for piece in pieces]


def test_counter_stops_at_the_blank_line_even_across_reads() -> None:
    body = b"z" * 1000
    assert counter_verdicts([b"GET / HTTP/1.1\r\na: 1\r\n", b"\r\n" + body, body]) == [None, None, None]
    assert counter_verdicts([b"GET / HTTP/1.1\na: 1\n\n" + body]) == [None]  # bare line feeds
    assert counter_verdicts([b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\n\r", b"\nbody"]) == [None, None]
    over = counter_verdicts([b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\n", b"c: 3\r\n\r\n"])
    assert over[0] is None and "more than 2 header fields" in over[1]
    assert "limit of 64 bytes" in counter_verdicts([b"GET / HTTP/1.1\r\nx: " + b"a" * 60])[0]
    # Blank lines before the request line count as bytes, not as the end of the head or as fields.
    assert counter_verdicts([b"\r\n", b"\r\nGET / HTTP/1.1\r\na: 1\r\nb: 2\r\n\r\n"]) == [None, None]
    assert "limit of 64 bytes" in counter_verdicts([b"\r\n\r\nGET / HTTP/1.1\r\nx: " + b"a" * 50])[0]
