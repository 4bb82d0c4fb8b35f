"""Fast tests of the RLM engine's pure parts: reply parsing, budget, mode routing, run input, options."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from proxy.api.request import parse_chat_request
from proxy.api.rlm import as_proxy_errors, run_request
from proxy.cache import Cache, CachePolicy, MemoryStore, cache_key
from proxy.config import CacheSettings, RLMSettings
from proxy.errors import ProxyError
from proxy.model_facts import ModelFacts
from proxy.registry import Deployment
from proxy.rlm.budget import Budget, RunLimits
from proxy.rlm.parsing import BlockWatcher, parse_reply
from proxy.rlm.prompts import build_input, context_card, preview
from proxy.routing import ModeRouter, split_model
from sandbox import SandboxUnavailableError

# ---------------------------------------------------------------------------------------------------------
# Parsing the root model's replies


def test_repl_blocks_run_in_order_and_other_languages_are_reported() -> None:
    parsed = parse_reply("Look:\n```repl\nx = 1\n```\nthen\n```repl\nprint(x)\n```\n```python\ny = 2\n```")
    assert parsed.code_blocks == ["x = 1\n", "print(x)\n"]
    assert parsed.other_code_languages == ["python"]
    assert not parsed.answered


@pytest.mark.parametrize(("reply", "answer"), [
    ("FINAL(42)", "42"),
    ("Done.\nFINAL(The answer is 7 (seven).)\n", "The answer is 7 (seven)."),
    ('FINAL("quoted")', "quoted"),
    ("**FINAL(bold)**", "bold"),
    ("FINAL(line one\nline two)", "line one\nline two"),
    ("FINAL(42)\n\nNote (an aside) after it.", "42"),
    ("FINAL(unbalanced ( paren)", "unbalanced ( paren"),
])
def test_final_on_its_own_line(reply: str, answer: str) -> None:
    assert parse_reply(reply).final_answer == answer


def test_final_var_on_its_own_line() -> None:
    assert parse_reply("The value is ready.\nFINAL_VAR(result)").final_variable == "result"
    assert parse_reply("FINAL_VAR('result')").final_variable == "result"


def test_final_inside_prose_is_not_an_answer() -> None:
    parsed = parse_reply("I think the answer is FINAL(3) but let me check.")
    assert not parsed.answered
    assert parsed.inline_final


def test_final_inside_code_is_not_a_prose_answer() -> None:
    parsed = parse_reply("```repl\nFINAL(x)\n```")
    assert parsed.code_blocks == ["FINAL(x)\n"]
    assert not parsed.answered and not parsed.inline_final


def test_answer_next_to_code_is_reported_as_both() -> None:
    parsed = parse_reply("```repl\nprint(1)\n```\nFINAL(1)")
    assert parsed.code_blocks and parsed.final_answer == "1"


# ---------------------------------------------------------------------------------------------------------
# Budget


STREAMED_REPLIES = [
    "Look:\n```repl\nx = 1\n```\nthen\n```repl\nprint(x)\n```\n```python\ny = 2\n```",
    "```repl\ns = 'a ` b `` c'\nprint(s)\n```````\nFINAL(done)",  # backticks inside and after a block
    "```python\nnot run\n```\n```REPL\nprint(1)\n```\n```repl \nprint(2)```trailing ```repl\nprint(3)\n",
    "No code at all, only `inline` and ``double`` ticks.",
]


@pytest.mark.parametrize("reply", STREAMED_REPLIES)
def test_blocks_found_while_streaming_are_the_replys_blocks_however_it_is_split(reply: str) -> None:
    chooser = random.Random(reply)
    for _ in range(200):
        watcher, found, rest = BlockWatcher(), [], reply
        while rest:
            size = chooser.randint(1, 6)
            found += watcher.feed(rest[:size])
            rest = rest[size:]
        assert found == parse_reply(reply).code_blocks


def test_a_block_is_found_as_its_closing_fence_arrives() -> None:
    watcher = BlockWatcher()
    assert watcher.feed("Let me look.\n```repl\nprint(len(context))\n``") == []
    assert watcher.feed("`\nI expect a large number") == ["print(len(context))\n"]
    assert watcher.feed(" of characters.") == []


def limits(**overrides: Any) -> RunLimits:
    values = {"max_iterations": 5, "max_depth": 1, "max_subcalls": 10, "max_cost_usd": None,
              "timeout_s": 60.0, **overrides}
    return RunLimits(**values)


def test_subcalls_are_reserved_before_dispatch_without_overshoot() -> None:
    budget = Budget(limits(max_subcalls=10))
    assert budget.reserve(8, 0.0) == 8
    assert budget.reserve(8, 0.0) == 2  # a second batch of 8 gets only what is left
    assert budget.exhausted == "max_subcalls"
    assert budget.reserve(1, 0.0) == 0
    assert budget.subcalls == 10


def test_cost_reservation_counts_what_is_in_flight() -> None:
    budget = Budget(limits(max_cost_usd=1.0))
    assert budget.reserve(3, 0.25) == 3  # 0.75 held
    assert budget.reserve(3, 0.25) == 1  # only 0.25 left
    assert budget.exhausted == "max_cost_usd"
    budget.settle(0.25, 0.10)
    assert budget.cost_usd == pytest.approx(0.10)


def test_root_spending_can_exhaust_the_budget() -> None:
    budget = Budget(limits(max_cost_usd=0.5))
    budget.spend(0.6)
    assert budget.exhausted == "max_cost_usd"
    assert "max_cost_usd=0.5" in budget.refusal()


class Pool:
    """A budget shared with other runs, holding `left` dollars."""

    def __init__(self, left: float) -> None:
        self.left = left
        self.draws: list[float] = []

    async def draw(self, usd: float) -> float:
        taken = min(usd, self.left)
        self.left -= taken
        self.draws.append(taken)
        return taken


async def test_a_run_spends_from_a_shared_budget_only_what_it_drew() -> None:
    pool = Pool(1.0)
    budget = Budget(limits(), pool)
    await budget.cover(0.5)  # two sub-calls at 0.25
    assert budget.reserve(2, 0.25) == 2
    budget.settle(0.25, 0.05)
    await budget.cover(0.2)  # what is drawn and not spent or held covers it: no trip to the pool
    assert pool.draws == [0.5]
    budget.settle(0.25, 0.05)
    await budget.cover(0.75)  # 0.4 of the draw is unspent: 0.35 more is drawn
    assert pool.draws == [0.5, pytest.approx(0.35)] and budget.exhausted is None
    assert budget.reserve(3, 0.25) == 3
    await budget.cover(1.0)  # the pool has 0.15 left: the run is out of budget
    assert budget.exhausted == "max_cost_usd"
    assert "its API key's" in budget.refusal()
    assert budget.reserve(1, 0.25) == 0
    await budget.cover(1.0)  # and does not ask again
    assert len(pool.draws) == 3


# ---------------------------------------------------------------------------------------------------------
# Mode routing


class CountingFacts(ModelFacts):
    """Facts with a known window and a tokenizer that records whether it was asked."""

    def __init__(self, window: int | None = None) -> None:
        super().__init__()
        self.window = window
        self.counted = 0

    def max_input_tokens(self, deployment: Deployment) -> int | None:
        return deployment.max_input_tokens or self.window

    def count_tokens(self, deployment: Deployment, messages: list[dict[str, Any]]) -> int:
        self.counted += 1
        return super().count_tokens(deployment, messages)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(("deployment", "settings", "window", "threshold"), [
    (Deployment("m", "openai/m", rlm_threshold_tokens=500), RLMSettings(threshold_tokens=900), 1000, 500),
    (Deployment("m", "openai/m"), RLMSettings(threshold_tokens=900), 1000, 900),
    (Deployment("m", "openai/m"), RLMSettings(), 1000, 800),
    (Deployment("m", "openai/m"), RLMSettings(threshold_fraction=0.5), 1000, 500),
    (Deployment("m", "openai/m"), RLMSettings(), None, 100_000),
])
def test_threshold_sources_in_order(deployment: Deployment, settings: RLMSettings, window: int | None,
                                    threshold: int) -> None:
    assert ModeRouter(settings, CountingFacts(window)).threshold_tokens(deployment) == threshold


async def test_header_and_prefix_force_the_mode() -> None:
    router = ModeRouter(RLMSettings(), CountingFacts())
    deployment = Deployment("m", "openai/m")
    assert (await router.decide("on", "m", user("hi"), deployment)).mode == "rlm"
    assert (await router.decide(None, "rlm/m", user("hi"), deployment)).mode == "rlm"
    off = await router.decide("OFF", "rlm/m", user("x" * 10**6), deployment)
    assert (off.mode, off.model) == ("direct", "m")
    with pytest.raises(ProxyError) as info:
        await router.decide("sometimes", "m", user("hi"), deployment)
    assert info.value.status == 400 and info.value.param == "x-rlm-mode"


async def test_server_default_applies_without_a_header() -> None:
    router = ModeRouter(RLMSettings(default_mode="on"), CountingFacts())
    deployment = Deployment("m", "openai/m")
    assert (await router.decide(None, "m", user("hi"), deployment)).mode == "rlm"
    assert (await router.decide("auto", "m", user("hi"), deployment)).mode == "direct"


async def test_length_bounds_decide_without_a_tokenizer_far_from_the_threshold() -> None:
    facts = CountingFacts()
    router = ModeRouter(RLMSettings(threshold_tokens=1000), facts)
    deployment = Deployment("m", "openai/m")
    assert (await router.decide(None, "m", user("short"), deployment)).mode == "direct"
    assert (await router.decide(None, "m", user("y" * 40_000), deployment)).mode == "rlm"
    assert facts.counted == 0
    near = await router.decide(None, "m", user("word " * 1000), deployment)  # ~5,000 bytes, ~1,000 tokens
    assert facts.counted == 1
    assert near.reason in ("over_threshold", "under_threshold")


async def test_a_huge_prompt_is_decided_without_the_tokenizer() -> None:
    # How fast is measured by bench/rlm.py; here: the tokenizer (5 MB/s) is never involved.
    facts = CountingFacts(128_000)
    decision = await ModeRouter(RLMSettings(), facts).decide(None, "m", user("z" * (40 * 1024 * 1024)),
                                                            Deployment("m", "openai/m"))
    assert decision.mode == "rlm"
    assert facts.counted == 0


def test_split_model() -> None:
    assert split_model("rlm/gpt-4o") == ("gpt-4o", True)
    assert split_model("gpt-4o") == ("gpt-4o", False)
    assert split_model("rlm/") == ("rlm/", False)


# ---------------------------------------------------------------------------------------------------------
# What the REPL gets as `context`, and what the root model is told


def test_one_user_message_is_a_str_context() -> None:
    run_input = build_input([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "abc"}])
    assert run_input.context == "abc"
    assert run_input.system == "Be terse."


def test_a_conversation_is_a_list_context() -> None:
    messages = [{"role": "user", "content": "doc one"}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "question?"}]}]
    run_input = build_input(messages)
    assert run_input.context == [{"role": "user", "content": "doc one"},
                                 {"role": "assistant", "content": "ok"},
                                 {"role": "user", "content": "question?"}]
    assert run_input.question == "question?"
    card = context_card(run_input, 4000)
    assert "list of 3 messages" in card and "[7, 2, 9]" in card and "4,000 characters" in card


def test_preview_shows_head_and_tail_of_long_questions() -> None:
    text = "HEAD" + "x" * 10_000 + "TAIL"
    shown = preview(text, 100)
    assert shown.startswith("HEAD") and shown.endswith("TAIL") and "9,808 characters not shown" in shown


# ---------------------------------------------------------------------------------------------------------
# The request's `rlm` object


def chat_body(**extra: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": user("q"), **extra})


def test_rlm_options_are_clamped_to_the_server_caps() -> None:
    chat = parse_chat_request(chat_body(rlm={"max_iterations": 100, "max_depth": 2, "max_subcalls": 0,
                                             "max_cost_usd": 5, "timeout_s": 10, "sub_model": "small"}))
    assert "rlm" not in chat.body  # the proxy's own field is never sent upstream
    settings = RLMSettings(max_iterations=20, max_depth=3, max_cost_usd=1.0, timeout_s=600)
    run = run_request(chat, "m", settings, CachePolicy(""))
    assert run.limits == RunLimits(max_iterations=20, max_depth=2, max_subcalls=0, max_cost_usd=1.0,
                                   timeout_s=10)
    assert (run.root_model, run.sub_model) == ("m", "small")


def test_root_and_sub_models_from_config() -> None:
    run = run_request(parse_chat_request(chat_body()), "m", RLMSettings(root_model="big", sub_model="small"),
                      CachePolicy(""))
    assert (run.root_model, run.sub_model) == ("big", "small")
    assert run.limits.max_cost_usd is None


@pytest.mark.parametrize(("options", "param"), [
    ("fast", "rlm"),
    ({"max_iterations": 0}, "rlm.max_iterations"),
    ({"max_iterations": 2.5}, "rlm.max_iterations"),
    ({"max_depth": True}, "rlm.max_depth"),
    ({"max_cost_usd": -1}, "rlm.max_cost_usd"),
    ({"timeout_s": "soon"}, "rlm.timeout_s"),
    ({"sub_model": ""}, "rlm.sub_model"),
    ({"depth": 2}, "rlm.depth"),
])
def test_bad_rlm_options_name_the_parameter(options: Any, param: str) -> None:
    with pytest.raises(ProxyError) as info:
        parse_chat_request(chat_body(rlm=options))
    assert info.value.status == 400
    assert info.value.param == param


async def test_an_unavailable_sandbox_is_a_503() -> None:
    async def failing() -> AsyncIterator[Any]:
        raise SandboxUnavailableError("a sandbox worker failed to start: it did not start properly")
        yield  # an async generator

    with pytest.raises(ProxyError) as info:
        async for _ in as_proxy_errors(failing()):
            pass
    assert (info.value.status, info.value.code) == (503, "sandbox_unavailable")


# ---------------------------------------------------------------------------------------------------------
# The cache's pure parts


def test_cache_keys_ignore_parameters_that_do_not_change_the_answer() -> None:
    messages = [{"role": "user", "content": "q"}]
    key = cache_key("rlm", "m", messages, {"temperature": 0, "user": "alice"}, "")
    assert key.startswith("rlm:v1:")
    assert key == cache_key("rlm", "m", messages, {"user": "bob", "temperature": 0}, "")
    assert key != cache_key("rlm", "m", messages, {"temperature": 1}, "")
    assert key != cache_key("rlm", "other", messages, {"temperature": 0}, "")
    assert key != cache_key("rlm", "m", messages, {"temperature": 0}, "key:abc")


@pytest.mark.parametrize(("header", "read", "write"), [
    (None, True, True), ("no-cache", False, True), ("no-store", True, False),
    ("No-Cache, no-store", False, False), ("max-age=0", True, True),
])
def test_cache_control_directives(header: str | None, read: bool, write: bool) -> None:
    assert CachePolicy.from_header(header, "") == CachePolicy("", read=read, write=write)


async def test_memory_store_is_a_bounded_lru_with_expiry() -> None:
    store = MemoryStore(max_bytes=1 << 20, max_entries=2)
    await store.set("a", b"1", ttl_s=60)
    await store.set("b", b"2", ttl_s=60)
    assert await store.get("a") == b"1"  # now "b" is the least recently used
    await store.set("c", b"3", ttl_s=60)
    assert await store.get("b") is None
    assert await store.get("a") == b"1" and await store.get("c") == b"3"
    await store.set("d", b"4", ttl_s=0)
    await asyncio.sleep(0.01)
    assert await store.get("d") is None


async def test_single_flight_makes_identical_concurrent_calls_once() -> None:
    lookups: list[str] = []
    cache = Cache(CacheSettings(), lookups.append)
    calls = 0

    async def produce() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return b"answer"

    results = await asyncio.gather(*(cache.fetch("k", CachePolicy(""), produce) for _ in range(5)))
    assert calls == 1
    assert [value for value, _ in results] == [b"answer"] * 5
    assert sorted(hit for _, hit in results) == [False, True, True, True, True]
    assert await cache.fetch("k", CachePolicy(""), produce) == (b"answer", True)
    assert await cache.fetch("k", CachePolicy("", read=False), produce) == (b"answer", False)
    assert calls == 2


async def test_a_failed_call_is_not_cached_and_its_waiters_see_the_error() -> None:
    cache = Cache(CacheSettings(), lambda result: None)

    async def fail() -> bytes:
        await asyncio.sleep(0.01)
        raise RuntimeError("upstream down")

    outcomes = await asyncio.gather(*(cache.fetch("k", CachePolicy(""), fail) for _ in range(3)),
                                    return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)

    async def succeed() -> bytes:
        return b"ok"

    assert await cache.fetch("k", CachePolicy(""), succeed) == (b"ok", False)
