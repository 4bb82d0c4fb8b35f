"""/v1/embeddings and /v1/completions (legacy) through the real proxy and the mock, with the openai SDK;
each test runs once per upstream backend (the fast path, and litellm's aembedding / atext_completion)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from proxy import mock_embeddings
from tests.harness import MASTER_KEY, Mock, Server, scrape

AUTH = {"authorization": f"Bearer {MASTER_KEY}"}


def client(proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


def post(proxy: Server, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(proxy.url + path, json=body, headers={**AUTH, **headers}, timeout=30)


# ---------------------------------------------------------------------------------------------------------
# Embeddings


def test_embedding_of_a_string_decoded_from_the_sdks_default_base64(proxy: Server) -> None:
    raw = client(proxy).embeddings.with_raw_response.create(model="mock", input="hello embeddings")
    answer = raw.parse()
    assert raw.headers["x-rlm-mode"] == "direct"
    [item] = answer.data
    # The SDK asked for base64 (its default) and decoded the float32 bytes itself.
    assert item.embedding == mock_embeddings.vector("hello embeddings", mock_embeddings.DEFAULT_DIMENSIONS)
    assert answer.usage.prompt_tokens == mock_embeddings.prompt_tokens("hello embeddings")
    assert answer.usage.total_tokens == answer.usage.prompt_tokens


def test_embeddings_of_a_list_with_dimensions_in_float(proxy: Server) -> None:
    texts = ["first", "second", "third"]
    answer = client(proxy).embeddings.create(model="mock", input=texts, dimensions=8, encoding_format="float",
                                             user="user-1")
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert [item.embedding for item in answer.data] == [mock_embeddings.vector(t, 8) for t in texts]


def test_base64_is_passed_through_as_the_upstream_encoded_it(proxy: Server) -> None:
    response = post(proxy, "/v1/embeddings", {"model": "mock", "input": "bytes", "dimensions": 4,
                                              "encoding_format": "base64"})
    assert response.status_code == 200
    expected = mock_embeddings.encoded(mock_embeddings.vector("bytes", 4))
    assert response.json()["data"][0]["embedding"] == expected
    assert "PydanticSerializationUnexpectedValue" not in proxy.log()  # litellm's warning, once per call


def test_token_arrays_and_the_unprefixed_route(proxy: Server) -> None:
    response = post(proxy, "/embeddings", {"model": "mock", "input": [[1, 2, 3], [4]], "dimensions": 3,
                                           "encoding_format": "float"})
    assert response.status_code == 200, response.text
    assert [item["embedding"] for item in response.json()["data"]] == \
        [mock_embeddings.vector("1 2 3", 3), mock_embeddings.vector("4", 3)]


def test_embeddings_upstream_errors_are_retried_then_surfaced(proxy: Server, mock_upstream: Mock) -> None:
    marker = f"emb-flaky-{proxy.url}"
    answer = client(proxy).embeddings.create(model="mock", input=f"[[mock:status=503 times=2 id={marker}]]")
    assert len(answer.data) == 1
    assert mock_upstream.stats()["by_marker"][marker] == 3
    with pytest.raises(openai.RateLimitError):
        client(proxy).embeddings.create(model="mock", input="[[mock:status=429]]")


# ---------------------------------------------------------------------------------------------------------
# Legacy completions


def test_legacy_completion(proxy: Server) -> None:
    raw = client(proxy).completions.with_raw_response.create(model="mock", prompt="say hello", max_tokens=20)
    completion = raw.parse()
    assert raw.headers["x-rlm-mode"] == "direct"
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "mock reply: say hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len("say hello") // 4 + 4


def test_legacy_completion_stream_without_usage(proxy: Server) -> None:
    chunks = list(client(proxy).completions.create(model="mock", prompt="stream this", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "mock reply: stream this"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.object == "text_completion" for c in chunks)


def test_legacy_completion_stream_with_usage_ends_with_done(proxy: Server) -> None:
    body = {"model": "mock", "prompt": "count", "stream": True, "stream_options": {"include_usage": True}}
    response = post(proxy, "/completions", body)
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    chunks = client(proxy).completions.create(model="mock", prompt="count", stream=True,
                                              stream_options={"include_usage": True})
    *texts, final = list(chunks)
    assert final.choices == [] and final.usage is not None
    assert final.usage.completion_tokens == len("mock reply: count") // 4 + 1
    assert "".join(c.choices[0].text for c in texts) == "mock reply: count"


def test_legacy_stream_error_before_the_first_chunk_gets_a_status(proxy: Server) -> None:
    with pytest.raises(openai.RateLimitError):
        list(client(proxy).completions.create(model="mock", prompt="[[mock:status=429]]", stream=True))


# ---------------------------------------------------------------------------------------------------------
# Bad input, auth, RLM mode


BAD = [
    ("/v1/embeddings", {"model": "mock"}, "input", "missing_required_parameter"),
    ("/v1/embeddings", {"input": "x"}, "model", "missing_required_parameter"),
    ("/v1/embeddings", {"model": "mock", "input": 7}, "input", "invalid_type"),
    ("/v1/embeddings", {"model": "mock", "input": []}, "input", "invalid_value"),
    ("/v1/embeddings", {"model": "mock", "input": ["a", 1]}, "input[1]", "invalid_type"),
    ("/v1/embeddings", {"model": "mock", "input": [[1, "a"]]}, "input[0]", "invalid_type"),
    ("/v1/embeddings", {"model": "mock", "input": [[]]}, "input[0]", "invalid_type"),
    ("/v1/embeddings", {"model": "mock", "input": [True]}, "input[0]", "invalid_type"),
    ("/v1/embeddings", {"model": "mock", "input": "x", "encoding_format": "int8"}, "encoding_format",
     "invalid_value"),
    ("/v1/embeddings", {"model": "mock", "input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
    ("/v1/embeddings", {"model": "mock", "input": "x", "dimensions": "8"}, "dimensions", "invalid_type"),
    ("/v1/embeddings", {"model": "mock", "input": "x", "user": 1}, "user", "invalid_type"),
    ("/v1/embeddings", {"model": "rlm/mock", "input": "x"}, "model", "rlm_not_supported"),
    ("/v1/embeddings", {"model": "mock", "input": "x", "rlm": {}}, "rlm", "rlm_not_supported"),
    ("/v1/completions", {"model": "mock"}, "prompt", "missing_required_parameter"),
    ("/v1/completions", {"model": "", "prompt": "x"}, "model", "invalid_value"),
    ("/v1/completions", {"model": "mock", "prompt": {"text": "x"}}, "prompt", "invalid_type"),
    ("/v1/completions", {"model": "mock", "prompt": "x", "stream": "yes"}, "stream", "invalid_type"),
    ("/v1/completions", {"model": "mock", "prompt": "x", "stream_options": {"include_usage": True}},
     "stream_options", "invalid_value"),
    ("/v1/completions", {"model": "rlm/mock", "prompt": "x"}, "model", "rlm_not_supported"),
]


@pytest.mark.parametrize(("path", "body", "param", "code"), BAD)
def test_bad_input_is_a_clear_400(proxy: Server, path: str, body: dict[str, Any], param: str,
                                  code: str) -> None:
    response = post(proxy, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/completions"])
def test_rlm_mode_header_is_refused_and_off_is_fine(proxy: Server, path: str) -> None:
    body = {"model": "mock", "input": "x", "prompt": "x"}  # each route ignores the other's field
    response = post(proxy, path, body, **{"x-rlm-mode": "on"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "rlm_not_supported"
    assert "chat-like requests only" in response.json()["error"]["message"]
    assert post(proxy, path, body, **{"x-rlm-mode": "bogus"}).json()["error"]["code"] == "invalid_header"
    assert post(proxy, path, body, **{"x-rlm-mode": "off"}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/completions"])
def test_auth_and_unknown_model(proxy: Server, path: str) -> None:
    body = {"model": "mock", "input": "x", "prompt": "x"}
    response = httpx.post(proxy.url + path, json=body, timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    response = post(proxy, path, {**body, "model": "no-such-model"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_unknown_model_with_the_sdk(proxy: Server) -> None:
    with pytest.raises(openai.NotFoundError):
        client(proxy).embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.NotFoundError):
        client(proxy).completions.create(model="no-such-model", prompt="x")


def test_requests_are_counted_as_direct_for_their_model(proxy: Server) -> None:
    def count() -> float:
        return scrape(proxy).get(("rlm_proxy_requests_total",
                                  (("mode", "direct"), ("model", "mock"), ("status", "2xx"))), 0.0)

    before = count()
    client(proxy).embeddings.create(model="mock", input="counted")
    client(proxy).completions.create(model="mock", prompt="counted")
    list(client(proxy).completions.create(model="mock", prompt="counted", stream=True))
    assert count() == before + 3
