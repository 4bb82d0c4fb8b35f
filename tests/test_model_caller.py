"""UpstreamCaller, the engine's way to the models: what it asks of the cache."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import model_caller
from proxy.cache import Cache, CachePolicy
from proxy.config import CacheSettings
from proxy.model_caller import UpstreamCaller
from proxy.model_facts import ModelFacts
from proxy.registry import Deployment, ModelGroup, ModelRegistry

ANSWER = {"choices": [{"message": {"role": "assistant", "content": "42"}}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 1}}


class CountingUpstream:
    def __init__(self) -> None:
        self.calls = 0

    async def complete_routed(self, group: ModelGroup,
                              body: dict[str, Any]) -> tuple[Deployment, dict[str, Any]]:
        self.calls += 1
        return group.deployments[0], ANSWER


def caller(upstream: CountingUpstream) -> UpstreamCaller:
    cache = Cache(CacheSettings(), on_lookup=lambda result: None)
    return UpstreamCaller(ModelRegistry([]), upstream, ModelFacts(), cache)  # type: ignore[arg-type]


async def test_a_call_that_neither_reads_nor_writes_the_cache_hashes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hashing(*args: Any) -> str:
        raise AssertionError("a cache key was computed for a call that bypasses the cache")

    monkeypatch.setattr(model_caller, "cache_key", no_hashing)
    upstream = CountingUpstream()
    reply = await caller(upstream).complete("m", [{"role": "user", "content": "q"}], {},
                                            CachePolicy(scope="", read=False, write=False))
    assert (reply.text, reply.cached, upstream.calls) == ("42", False, 1)


async def test_a_cached_call_is_asked_once() -> None:
    upstream = CountingUpstream()
    models = caller(upstream)
    for _ in range(2):
        reply = await models.complete("m", [{"role": "user", "content": "q"}], {}, CachePolicy(scope=""))
    assert (reply.text, reply.cached, upstream.calls) == ("42", True, 1)
