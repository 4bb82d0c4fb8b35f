"""Fast tests of pure pieces: request parsing, error mapping, key checks, stream relaying."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import IO, Any

import orjson
import pytest
import uvloop

from proxy.api.relay import relay
from proxy.api.request import LARGE_BODY_BYTES, parse_chat_request, parse_json_body
from proxy.auth import ANONYMOUS, Identity, KeyChecker
from proxy.config import CacheSettings, KeyEntry, ServerSettings
from proxy.errors import ProxyError
from proxy.key_store import KeyStore
from proxy.model_facts import ModelFacts, import_litellm
from proxy.registry import Deployment
from proxy.upstream import error_from_status
from sandbox.bridge import _pipe_for


def test_parse_keeps_unknown_parameters() -> None:
    chat = parse_chat_request(orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                            "stream": True, "stream_options": {"include_usage": True},
                                            "my_vendor_flag": {"a": 1}}))
    assert chat.stream and chat.include_usage
    assert chat.body["my_vendor_flag"] == {"a": 1}


def test_parse_error_names_the_parameter() -> None:
    with pytest.raises(ProxyError) as info:
        parse_chat_request(b'{"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": 1}]}')
    assert info.value.param == "messages[1].role"
    assert info.value.status == 400


PADDING = "x" * LARGE_BODY_BYTES  # makes a body large enough for the standard library's parser


@pytest.mark.parametrize("value", ['"caf\u00e9 \\"quoted\\" \\n tab\\t"', '"\\ud83d\\ude00 emoji"',
                                   '123456789012345678901234567890', "-9223372036854775808", "1.5e300",
                                   "[1, 2.5, true, false, null, {}]", '{"a": {"b": [1]}, "a": 2}'])
def test_a_large_body_parses_as_a_small_one_does(value: str) -> None:
    small = f'{{"v": {value}}}'.encode()
    large = bytearray(f'{{"v": {value}, "padding": "{PADDING}"}}'.encode())
    parsed = parse_json_body(large)
    assert parsed["v"] == parse_json_body(small)["v"] == orjson.loads(small)["v"]
    assert type(parsed["v"]) is type(orjson.loads(small)["v"])
    assert len(large) == 0 or b"\\u" in bytes(large)  # consumed, unless it went to orjson


@pytest.mark.parametrize("value", ["NaN", "-Infinity", "1e400", '"\\ud800 alone"', '"\\udc00"'])
def test_a_large_body_refuses_what_a_small_one_refuses(value: str) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(f'{{"v": {value}}}')
    with pytest.raises(ProxyError, match="not valid JSON") as info:
        parse_json_body(f'{{"v": {value}, "padding": "{PADDING}"}}'.encode())
    assert info.value.status == 400 and info.value.code == "invalid_json"


def test_a_large_body_nesting_too_deep_for_the_parser_is_a_400() -> None:
    with pytest.raises(ProxyError, match="nests too deep") as info:
        parse_json_body(b'{"v": ' + b"[" * 100_000 + b" " * LARGE_BODY_BYTES)
    assert info.value.status == 400


@pytest.mark.parametrize(("upstream", "status", "code", "retryable"), [
    (400, 400, "context_length_exceeded", False),
    (401, 502, "upstream_auth_failed", False),
    (404, 404, "model_not_found", False),
    (422, 400, "upstream_bad_request", False),
    (429, 429, "rate_limit_exceeded", True),
    (500, 502, "upstream_error", True),
    (503, 502, "upstream_error", True),
    (504, 504, "upstream_timeout", True),
])
def test_upstream_status_mapping(upstream: int, status: int, code: str, retryable: bool) -> None:
    given_code = "context_length_exceeded" if upstream == 400 else None
    error = error_from_status(upstream, "boom", given_code)
    assert (error.status, error.code, error.retryable) == (status, code, retryable)


def test_retry_after_is_forwarded_and_parsed() -> None:
    error = error_from_status(429, "slow down", retry_after="2.5")
    assert error.retry_after == 2.5
    assert error.headers["retry-after"] == "2"
    assert error_from_status(429, "slow down", retry_after="soon").headers["retry-after"] == "1"


async def test_key_checker_tells_who_the_caller_is() -> None:
    store = KeyStore(CacheSettings())
    assert await KeyChecker(ServerSettings(), store).check(None) == ANONYMOUS
    hashed = hashlib.sha256(b"sk-c").hexdigest()
    checker = KeyChecker(ServerSettings.model_validate({
        "master_key": "sk-master", "api_keys": ["sk-a"],
        "keys": [{"key": "sk-b", "alias": "bee", "team": "t"}, {"key_hash": hashed.upper(), "team": "t"}]}),
        store)
    assert await checker.check("bearer  sk-a ") == Identity(hashlib.sha256(b"sk-a").hexdigest(),
                                                            hashlib.sha256(b"sk-a").hexdigest()[:8])
    assert await checker.check("Bearer sk-b") == Identity(hashlib.sha256(b"sk-b").hexdigest(), "bee", "t")
    assert await checker.check("Bearer sk-c") == Identity(hashed, hashed[:8], "t")
    assert (await checker.check("Bearer sk-master")).alias == "master"
    await store.put(KeyEntry(key_hash=hashlib.sha256(b"sk-d").hexdigest(), alias="dee"))
    assert (await checker.check("Bearer sk-d")).alias == "dee"
    for header in (None, "", "Bearer", "Basic sk-a", "Bearer sk-e", f"Bearer {hashed}"):
        with pytest.raises(ProxyError) as info:
            await checker.check(header)
        assert info.value.status == 401
    checker.check_master("Bearer sk-master")
    for header in (None, "Bearer sk-a", "Bearer sk-d", f"Bearer {hashlib.sha256(b'sk-master').hexdigest()}"):
        with pytest.raises(ProxyError) as info:
            checker.check_master(header)
        assert info.value.status == 401


def test_cache_scopes() -> None:
    member, loner = Identity("ab" * 32, "m", "team-1"), Identity("cd" * 32, "l")
    assert member.cache_scope("key") == "key:" + "ab" * 32
    assert member.cache_scope("team") == "team:team-1"
    assert loner.cache_scope("team") == loner.cache_scope("key")  # no team: a team of its own
    assert member.cache_scope("global") == loner.cache_scope("global") == ""
    # A team named like a key hash still cannot reach that key's entries.
    assert Identity("ef" * 32, "x", "ab" * 32).cache_scope("team") != member.cache_scope("key")


async def _relayed(chunks: list[dict[str, Any]], include_usage: bool) -> list[Any]:
    async def tail() -> AsyncIterator[dict[str, Any]]:
        for chunk in chunks[1:]:
            yield chunk

    events = [event async for event in relay(chunks[0], tail(), include_usage, "chat.completion.chunk")]
    assert events[-1] == b"data: [DONE]\n\n"
    return [orjson.loads(event[6:]) for event in events[:-1]]


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


@pytest.mark.parametrize("usage_on_last_content_chunk", [False, True])
async def test_relay_places_usage_like_openai(usage_on_last_content_chunk: bool) -> None:
    chunks = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "hi"}),
              _chunk({}, "stop", USAGE if usage_on_last_content_chunk else None)]
    if not usage_on_last_content_chunk:
        chunks.append({**_chunk({}), "choices": [], "usage": USAGE})
    chunks.append(_chunk({}))  # litellm's empty trailer
    with_usage = await _relayed(chunks, include_usage=True)
    assert [c["usage"] for c in with_usage] == [None, None, None, USAGE]
    assert with_usage[-1]["choices"] == []
    without = await _relayed(chunks, include_usage=False)
    assert len(without) == 3
    assert all("usage" not in c for c in without)


@pytest.mark.parametrize("model", ["openai/gpt-4o", "anthropic/claude-sonnet-4-5", "gemini/gemini-2.5-pro"])
@pytest.mark.parametrize("prompt_tokens", [1_000, 300_000])  # 300k: the long-prompt price tier
def test_cached_prices_match_litellm(model: str, prompt_tokens: int) -> None:
    facts = ModelFacts()
    facts.load()
    litellm = import_litellm()
    expected = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens, completion_tokens=700))
    deployment = Deployment(model, model)
    assert facts.cost_usd(deployment, prompt_tokens, 700) == pytest.approx(expected)
    assert facts.cost_usd(Deployment("x", "openai/not-a-real-model"), prompt_tokens, 700) == 0.0
    priced = Deployment("m", "openai/m", input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    assert facts.cost_usd(priced, prompt_tokens, 700) == pytest.approx(prompt_tokens * 1e-6 + 700 * 2e-6)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_workers_pipe_has_one_owner_whatever_the_loop(loop_kind: str) -> None:
    """uvloop's pipe transports close their descriptor and also the file object it came in (uvloop #763):
    when a collection ran in another thread, the second close took a descriptor reused meanwhile, and
    Popen failed with EBADF (tests/test_replay_e2e.py, 4 runs in 5). The transport gets a descriptor of its
    own, which under uvloop no file object closes; under asyncio's loop the file object is its one owner."""

    async def hand_over(original: IO[bytes]) -> tuple[bool, bool]:
        given = _pipe_for(asyncio.get_running_loop(), original)
        owns = given.closefd  # type: ignore[attr-defined]  # (a FileIO)
        if not owns:
            os.close(given.fileno())
        given.close()
        return original.closed, owns

    read_end, write_end = os.pipe()
    os.close(write_end)
    original = open(read_end, "rb")  # noqa: SIM115 - as Popen makes it
    runner = uvloop.run if loop_kind == "uvloop" else asyncio.run
    assert runner(hand_over(original)) == (True, loop_kind == "asyncio")
