"""Malformed requests get the right 4xx in the OpenAI error shape, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.harness import MASTER_KEY, Mock, Server, StartProxy, proxy_config

BODY_LIMIT = 64 * 1024
AUTH = {"authorization": f"Bearer {MASTER_KEY}"}
JSON = {**AUTH, "content-type": "application/json"}


@pytest.fixture(scope="module")
def small_proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy(proxy_config(mock_upstream, server={"max_body_bytes": BODY_LIMIT}))


def _chunks(total: int) -> Iterator[bytes]:
    # No content-length: the limit must be enforced while the body streams in.
    yield b'{"model": "mock", "messages": [{"role": "user", "content": "'
    for _ in range(total // 8192):
        yield b"x" * 8192
    yield b'"}]}'


CASES = [
    ("non-json", "POST", b"this is not json", JSON, 400, "invalid_json"),
    ("empty body", "POST", b"", JSON, 400, "invalid_json"),
    ("json array", "POST", b"[1, 2]", JSON, 400, "invalid_json"),
    ("json string", "POST", b'"hi"', JSON, 400, "invalid_json"),
    ("truncated json", "POST", b'{"model": "mock", "messages": [', JSON, 400, "invalid_json"),
    ("missing model", "POST", b'{"messages": [{"role": "user", "content": "x"}]}', JSON, 400,
     "missing_required_parameter"),
    ("missing messages", "POST", b'{"model": "mock"}', JSON, 400, "missing_required_parameter"),
    ("null messages", "POST", b'{"model": "mock", "messages": null}', JSON, 400, "invalid_type"),
    ("model not a string", "POST", b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', JSON,
     400, "invalid_type"),
    ("messages not a list", "POST", b'{"model": "mock", "messages": "hello"}', JSON, 400, "invalid_type"),
    ("empty messages", "POST", b'{"model": "mock", "messages": []}', JSON, 400, "invalid_value"),
    ("message not an object", "POST", b'{"model": "mock", "messages": ["hi"]}', JSON, 400, "invalid_type"),
    ("bad role", "POST", b'{"model": "mock", "messages": [{"role": "wizard", "content": "x"}]}', JSON, 400,
     "invalid_value"),
    ("content a number", "POST", b'{"model": "mock", "messages": [{"role": "user", "content": 5}]}', JSON,
     400, "invalid_type"),
    ("stream not a bool", "POST",
     b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', JSON, 400,
     "invalid_type"),
    ("stream_options without stream", "POST",
     b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "stream_options": {}}', JSON, 400,
     "invalid_value"),
    ("invalid utf-8", "POST", b'{"model": "mock", "messages": [{"role": "user", "content": "\xff"}]}', JSON,
     400, "invalid_json"),
    ("unknown model", "POST", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', JSON,
     404, "model_not_found"),
    ("huge body with length", "POST", b"{" + b" " * (BODY_LIMIT + 10) + b"}", JSON, 413, "request_too_large"),
    ("huge chunked body", "POST", None, JSON, 413, "request_too_large"),
    ("wrong method", "GET", None, AUTH, 405, "method_not_allowed"),
    ("unknown path", "POST:/v1/nothing", b"{}", JSON, 404, "not_found"),
]


@pytest.mark.parametrize(("name", "method", "body", "headers", "status", "code"), CASES,
                         ids=[case[0] for case in CASES])
def test_malformed_request(small_proxy: Server, name: str, method: str, body: bytes | None,
                           headers: dict[str, str], status: int, code: str) -> None:
    method, _, path = method.partition(":")
    content = _chunks(BODY_LIMIT * 4) if name == "huge chunked body" else body
    response = httpx.request(method, small_proxy.url + (path or "/v1/chat/completions"), content=content,
                             headers=headers, timeout=10)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert "x-request-id" in response.headers
    # The server is still healthy and serving.
    ok = httpx.post(small_proxy.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                    json={"model": "mock", "messages": [{"role": "user", "content": "still there?"}]})
    assert ok.status_code == 200
    assert small_proxy.process.poll() is None


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/embeddings", "/v1/completions", "/v1/messages"])
@pytest.mark.parametrize("chunked", [False, True], ids=["with-length", "chunked"])
def test_every_model_route_refuses_a_huge_body(small_proxy: Server, path: str, chunked: bool) -> None:
    content = _chunks(BODY_LIMIT * 4) if chunked else b"{" + b" " * (BODY_LIMIT + 10) + b"}"
    response = httpx.post(small_proxy.url + path, content=content, headers=JSON, timeout=10)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    # Each route answers in its own dialect: Anthropic's error type, or OpenAI's code.
    assert error["type" if path == "/v1/messages" else "code"] == "request_too_large"
    assert small_proxy.process.poll() is None
