"""The RLM engine's way to the models: name resolution, the cache, the upstream client, token and price
facts, and the upstream metrics of every call that really went out; and the replay's way, the cache alone."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, replace
from typing import Any

import orjson

from proxy.cache import Cache, CachePolicy, cache_key
from proxy.errors import ProxyError
from proxy.metering import REQUEST_METERING
from proxy.model_facts import CHARS_PER_TOKEN, ModelFacts, estimate_tokens, usage_tokens
from proxy.registry import Deployment, ModelRegistry
from proxy.rlm.engine import ModelReply, TextSink
from proxy.upstream import Upstream, malformed_error

CACHE_NAMESPACE = "rlm"
# Sub-call prompts are held to this share of the model's input window: token counts are estimated.
WINDOW_SHARE = 0.9


class CallerFacts:
    """What the engine asks about models besides calling them: their windows, prices and names."""

    def __init__(self, registry: ModelRegistry, facts: ModelFacts) -> None:
        self._registry = registry
        self._facts = facts

    def prompt_limit_chars(self, model: str) -> int | None:
        try:
            window = self._facts.max_input_tokens(self._registry.resolve(model))
        except ProxyError:
            return None
        return None if window is None else int(window * WINDOW_SHARE) * CHARS_PER_TOKEN

    def estimate_cost_usd(self, model: str, prompt_chars: int, completion_tokens: int) -> float:
        try:
            deployment = self._registry.resolve(model)
        except ProxyError:
            return 0.0
        return self._facts.cost_usd(deployment, estimate_tokens(prompt_chars), completion_tokens)

    def unknown_model(self, model: str) -> str | None:
        try:
            self._registry.resolve(model)
        except ProxyError as error:
            return error.message
        return None


class UpstreamCaller(CallerFacts):
    def __init__(self, registry: ModelRegistry, upstream: Upstream, facts: ModelFacts,
                 cache: Cache | None) -> None:
        super().__init__(registry, facts)
        self._upstream = upstream
        self._cache = cache

    async def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                       cache: CachePolicy, on_text: TextSink | None = None) -> ModelReply:
        if self._cache is None or not (cache.read or cache.write):
            # No-cache and no-store: no lookup, so no key to hash (~8 ms for 10 MB of prompts).
            return await self._call(model, messages, params, on_text)
        produced = False

        async def produce() -> bytes:
            nonlocal produced
            produced = True
            return orjson.dumps(asdict(await self._call(model, messages, params, on_text)))

        key = cache_key(CACHE_NAMESPACE, model, messages, params, cache.scope)
        value, hit = await self._cache.fetch(key, cache, produce)
        reply = _cached_reply(value, hit, key)
        if on_text is not None and not produced:  # from the cache, or another caller's call: all at once
            on_text(reply.text)
        if hit and (metering := REQUEST_METERING.get()) is not None:
            metering.saved(model, reply.cost_usd)
        return reply

    async def _call(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                    on_text: TextSink | None = None) -> ModelReply:
        if on_text is not None and "tools" not in params:  # a streamed tool call is not worth assembling
            return await self._streamed_call(model, messages, params, on_text)
        group = self._registry.resolve(model)
        # Priced at the deployment that answered: a group's deployments (or fallbacks) may differ in price.
        deployment, response = await self._upstream.complete_routed(
            group, {"model": model, "messages": messages, **params})
        prompt_tokens, completion_tokens = usage_tokens(response.get("usage"))
        message = _reply_message(response)
        content = message.get("content")
        return ModelReply(text=content if isinstance(content, str) else "", prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens,
                          cost_usd=self._facts.cost_usd(deployment, prompt_tokens, completion_tokens),
                          tool_calls=_tool_calls(message.get("tool_calls")))

    async def _streamed_call(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                             on_text: TextSink) -> ModelReply:
        """The call streamed, each piece of its text given to `on_text` as it arrives."""
        answered: list[Deployment] = []
        pieces: list[str] = []
        usage = None
        body = {"model": model, "messages": messages, **params, "stream": True,
                "stream_options": {"include_usage": True}}
        async for chunk in self._upstream.stream_routed(self._registry.resolve(model), body, answered.append):
            usage = chunk.get("usage") or usage
            choices = chunk.get("choices")
            delta = choices[0].get("delta") if isinstance(choices, list) and choices and isinstance(
                choices[0], dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                pieces.append(content)
                on_text(content)
        text = "".join(pieces)
        prompt_tokens, completion_tokens = usage_tokens(usage)
        if not prompt_tokens:  # a provider that does not report a stream's usage: estimated
            prompt_tokens = estimate_tokens(sum(len(m["content"]) for m in messages))
            completion_tokens = estimate_tokens(len(text))
        return ModelReply(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          cost_usd=self._facts.cost_usd(answered[0], prompt_tokens, completion_tokens))


class CacheMiss(ProxyError):
    """A call a replay needed that the cache does not hold."""

    def __init__(self, model: str, messages: list[dict[str, str]], key: str) -> None:
        super().__init__(409, f"The call to '{model}' is not in the cache (key {key}); a replay never calls "
                         "a model.", code="cache_miss")
        self.model = model
        self.messages = messages
        self.key = key


class CacheOnlyCaller(CallerFacts):
    """The replay's caller: every call is served from the cache, and a miss raises `CacheMiss`; it holds no
    upstream client, so a replay cannot reach a model. `recorded_hits` holds, per cache key, whether each
    of the recorded run's calls with that key was a cache hit: a reply is marked cached as it was then, so
    that the run's budget and figures are those of the record. The first miss is kept in `miss`: where the
    replay diverged."""

    def __init__(self, registry: ModelRegistry, facts: ModelFacts, cache: Cache,
                 recorded_hits: dict[str, deque[bool]]) -> None:
        super().__init__(registry, facts)
        self._cache = cache
        self._recorded_hits = recorded_hits
        self.miss: CacheMiss | None = None

    async def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                       cache: CachePolicy, on_text: TextSink | None = None) -> ModelReply:
        key = cache_key(CACHE_NAMESPACE, model, messages, params, cache.scope)
        value = await self._cache.lookup(key)
        if value is None:
            miss = CacheMiss(model, messages, key)
            self.miss = self.miss or miss
            raise miss
        hits = self._recorded_hits.get(key)
        reply = _cached_reply(value, hits.popleft() if hits else True, key)
        if on_text is not None:
            on_text(reply.text)
        return reply


def _cached_reply(value: bytes, hit: bool, key: str) -> ModelReply:
    stored = orjson.loads(value)
    # JSON has no tuples: the calls come back as a list.
    return replace(ModelReply(**stored), tool_calls=tuple(stored.get("tool_calls", ())), cached=hit,
                   cache_key=key)


def _reply_message(response: dict[str, Any]) -> dict[str, Any]:
    try:
        message = response["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise malformed_error("no choices[0].message in the completion") from None
    if not isinstance(message, dict):
        raise malformed_error("choices[0].message is not an object")
    return message


def _tool_calls(calls: Any) -> tuple[dict[str, Any], ...]:
    """The reply's function calls in Chat Completions form, without the extras providers add (`index`)."""
    if calls is None:
        return ()
    if not isinstance(calls, list):
        raise malformed_error("choices[0].message.tool_calls is not a list")
    normal = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not all(
                isinstance(value, str) for value in (call.get("id"), function.get("name"),
                                                     function.get("arguments"))):
            raise malformed_error("a tool call without a string id, function name and arguments")
        normal.append({"id": call["id"], "type": "function",
                       "function": {"name": function["name"], "arguments": function["arguments"]}})
    return tuple(normal)
