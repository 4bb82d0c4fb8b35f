"""Replaying a recorded run against the cache: the run its record asks for again, and the comparison of the
replay's events with the recorded ones, up to the first difference (`Comparison`).

A replay's calls come from the cache alone (model_caller.CacheOnlyCaller), so with every call cached it
makes the same code, outputs and answer as the record; otherwise the first call missing from the cache, or
the first output that came out differently, is where it diverged. README "Seeing inside a run" documents it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from proxy.cache import CachePolicy
from proxy.errors import ProxyError, invalid_request
from proxy.model_caller import CacheMiss
from proxy.rlm.budget import RunLimits
from proxy.rlm.engine import ClientTools, RunRequest
from proxy.rlm.prompts import build_input
from proxy.trajectories.record import context_text, cut, input_digests

PREVIEW_CHARS = 200  # of a missed call's prompt
# What a replay must reproduce of each recorded event: no timings, no token counts.
COMPARED = {"iteration_started": ("depth", "iteration", "prompt_chars"),
            "root_replied": ("depth", "iteration", "final", "call"),
            "block_started": ("depth", "iteration", "block", "code"),
            "block_executed": ("depth", "iteration", "block", "outcome", "output"),
            "subcalls_dispatched": ("depth", "count"),
            "subcalls_finished": ("depth", "count", "errors", "calls"),
            "run_finished": ("answer", "finish_reason", "stopped", "tool_calls")}
CALL_FIELDS = ("model", "prompt", "text", "error", "cache_key")
BLOCK_EVENTS = ("block_started", "block_executed", "subcalls_dispatched", "subcalls_finished")


def not_replayable(why: str) -> ProxyError:
    return ProxyError(409, f"This run cannot be replayed: {why}", code="run_not_replayable")


def check_replayable(record: dict[str, Any]) -> None:
    """Refuse a run that a replay could not reproduce at all."""
    if record["status"] != "finished":
        raise not_replayable(f"it is {record['status']}; only a finished run can be replayed.")
    if "request" not in record or "request_sha256" not in record["input"]:
        raise not_replayable("it was recorded before runs could be replayed (its record lacks the request's "
                             "parameters and the digest of its whole input).")
    cache = record["request"]["cache"]
    if not (cache["read"] or cache["write"]):
        raise not_replayable("it was made with 'Cache-Control: no-cache, no-store', so none of its model "
                             "calls went through the cache.")
    if not any(call["cache_key"] for call in recorded_calls(record["events"])):
        raise not_replayable("none of its model calls went through the cache (the cache was off, or every "
                             "call failed).")


def replay_messages(record: dict[str, Any], messages: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The messages to replay the run with: the request's, whose digests must match the record's, or, when
    the record holds the input (trajectories.store_context), messages rebuilt from it."""
    shape = record["input"]
    if messages is not None:
        if (problem := input_mismatch(shape, messages)) is not None:
            raise invalid_request(f"'messages' are not this run's input: {problem}.", param="messages",
                                  code="input_mismatch")
        return messages
    if "context" not in shape:
        raise invalid_request("The record holds only the shape of this run's input (trajectories."
                              "store_context was off): send the original request's 'messages' (in Chat "
                              "Completions form).", param="messages", code="input_required")
    stored = stored_messages(shape)
    if (problem := input_mismatch(shape, stored)) is not None:
        raise not_replayable(f"its stored input does not match its digest ({problem}); a secret in it may "
                             "have been redacted. Send the original request's 'messages'.")
    return stored


def input_mismatch(shape: dict[str, Any], messages: list[dict[str, Any]]) -> str | None:
    """How `messages` differ from the recorded input, or None when they are the same input for the run."""
    run_input = build_input(messages)
    text = context_text(run_input.context)
    sha256, request_sha256 = input_digests(run_input, text)
    if sha256 != shape["sha256"]:
        return (f"their context has {len(text):,} characters and SHA-256 {sha256[:16]}…, the recorded one "
                f"{shape['chars']:,} characters and {shape['sha256'][:16]}…")
    if request_sha256 != shape["request_sha256"]:
        return "the context is the same, but the question, the system messages or the tool results differ"
    return None


def stored_messages(shape: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages that give the engine the recorded input: a list context is such messages already; a str
    context was the one user message, after the system text."""
    context = shape["context"]
    if isinstance(context, list):
        return context
    system = shape.get("system")
    return [*([{"role": "system", "content": system}] if system is not None else []),
            {"role": "user", "content": context}]


def replay_request(record: dict[str, Any], messages: list[dict[str, Any]]) -> RunRequest:
    """The recorded run again: its models, limits, parameters, tools and cache scope; reading the cache
    only (a replay writes nothing)."""
    facts = record["request"]
    tools = facts["tools"]
    return RunRequest(
        messages=messages, root_model=record["root_model"], sub_model=record["sub_model"],
        limits=RunLimits(**record["limits"]), root_params=facts["root_params"],
        cache=CachePolicy(facts["cache"]["scope"], read=True, write=False),
        tools=None if tools is None else ClientTools(tuple(tools["tools"]), tools["choice"],
                                                     tools["parallel"]))


def recorded_calls(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for event in events:
        if event["type"] == "root_replied":
            yield event["call"]
        elif event["type"] == "subcalls_finished":
            yield from event["calls"]


def recorded_hits(events: list[dict[str, Any]]) -> dict[str, deque[bool]]:
    """Per cache key, whether each recorded call with that key was a cache hit, in order."""
    hits: dict[str, deque[bool]] = {}
    for call in recorded_calls(events):
        if call["cache_key"]:
            hits.setdefault(call["cache_key"], deque()).append(call["cached"])
    return hits


class Comparison:
    """The recorded events, walked alongside the replay's (in the record's form): `check` each replay
    event in turn; the first difference is the divergence. Also counts what the replay did."""

    def __init__(self, record: dict[str, Any]) -> None:
        self._expected = [event for event in record["events"] if event["type"] in COMPARED]
        self._write = record["request"]["cache"]["write"]
        self._next = 0
        self._iteration: dict[int, int] = {}  # the recorded run's position at each depth
        self._block: dict[int, int] = {}
        self.iterations = self.code_blocks = self.subcalls = 0

    def check(self, event: dict[str, Any], miss: CacheMiss | None) -> dict[str, Any] | None:
        """The divergence at this replay event, or None when it is the recorded one. `miss` is the replay's
        first cache miss so far: the cause when the event lacks a call the record has."""
        kind = event["type"]
        self.iterations += kind == "iteration_started"
        self.code_blocks += kind == "block_executed"
        self.subcalls += event["count"] if kind == "subcalls_finished" else 0
        if self._next == len(self._expected):
            return {"kind": "mismatch", "at": {"seq": None, "event": kind}, "field": "type",
                    "expected": None, "actual": kind}
        expected = self._take()
        if miss is not None and (recorded := self._missed_call(expected, event, miss)) is not None:
            return self._cache_miss(expected, recorded, miss)
        return self._difference(expected, event)

    def failed(self, miss: CacheMiss) -> dict[str, Any]:
        """The divergence where the replay failed at a top-level root call that the cache did not hold."""
        expected = self._take() if self._next < len(self._expected) else None
        if expected is None or expected["type"] != "root_replied":
            return {"kind": "cache_miss", "at": {"seq": None, "event": "root_replied"},
                    **self._miss_details(miss, None)}
        return self._cache_miss(expected, expected["call"], miss)

    def _take(self) -> dict[str, Any]:
        expected = self._expected[self._next]
        self._next += 1
        depth = expected.get("depth", 1)
        if expected["type"] == "iteration_started":
            self._iteration[depth] = expected["iteration"]
        elif expected["type"] == "block_started":
            self._block[depth] = expected["block"]
        return expected

    def _where(self, expected: dict[str, Any]) -> dict[str, Any]:
        depth = expected.get("depth", 1)
        where: dict[str, Any] = {"seq": expected["seq"], "event": expected["type"], "depth": depth,
                                 "iteration": self._iteration.get(depth)}
        if expected["type"] in BLOCK_EVENTS:
            where["block"] = self._block.get(depth)
        return where

    @staticmethod
    def _missed_call(expected: dict[str, Any], event: dict[str, Any],
                     miss: CacheMiss) -> dict[str, Any] | None:
        """The recorded call that `miss` is, when this replay event lacks it: a root reply that did not come
        (a nested run's root call failed), or a sub-call that failed with the miss."""
        if expected["type"] == "root_replied" and event["type"] != "root_replied":
            return expected["call"]
        if expected["type"] == "subcalls_finished" and event["type"] == "subcalls_finished":
            for index, call in enumerate(event["calls"]):
                if call["error"] == miss.message and index < len(expected["calls"]):
                    return expected["calls"][index]
        return None

    def _cache_miss(self, expected: dict[str, Any], recorded: dict[str, Any],
                    miss: CacheMiss) -> dict[str, Any]:
        return {"kind": "cache_miss", "at": self._where(expected), **self._miss_details(miss, recorded)}

    def _miss_details(self, miss: CacheMiss, recorded: dict[str, Any] | None) -> dict[str, Any]:
        sub_call = len(miss.messages) == 1 and miss.messages[0]["role"] == "user"
        details: dict[str, Any] = {
            "call": "sub_call" if sub_call else "root", "model": miss.model,
            "prompt_preview": cut(miss.messages[-1]["content"], PREVIEW_CHARS), "cache_key": miss.key,
            "recorded_cache_key": None if recorded is None else recorded["cache_key"]}
        details["reason"], details["why"] = self._why_missed(miss, recorded)
        # A call that was never in the cache stops every replay of this run at the same place.
        details["replayable"] = details["reason"] not in ("not_cached", "not_stored")
        return details

    def _why_missed(self, miss: CacheMiss, recorded: dict[str, Any] | None) -> tuple[str, str]:
        if recorded is None:
            return "different_call", "the record has no such call here"
        if not recorded["cache_key"]:
            how = f"it failed: {recorded['error']}" if recorded["error"] else "made with the cache off"
            return "not_cached", f"the recorded call bypassed the cache ({how})"
        if recorded["cache_key"] != miss.key:
            return "different_call", "its prompt or parameters differ from the recorded call's (another key)"
        if not (recorded["cached"] or self._write):
            return "not_stored", "the recorded call was answered by the model under 'Cache-Control: no-store'"
        return "evicted", "its cache entry is gone (expired, evicted or flushed)"

    def _difference(self, expected: dict[str, Any], event: dict[str, Any]) -> dict[str, Any] | None:
        if event["type"] != expected["type"]:
            return self._mismatch(expected, "type", expected["type"], event["type"])
        for field in COMPARED[expected["type"]]:
            want, got = expected[field], event[field]
            if field == "call":
                pairs = [(f"call.{name}", want[name], got[name]) for name in CALL_FIELDS]
            elif field == "calls":
                pairs = [(f"calls[{index}].{name}", one[name], other[name])
                         for index, (one, other) in enumerate(zip(want, got, strict=False))
                         for name in CALL_FIELDS]
            else:
                pairs = [(field, want, got)]
            for name, one, other in pairs:
                if one != other:
                    return self._mismatch(expected, name, one, other)
        return None

    def _mismatch(self, expected: dict[str, Any], field: str, want: Any, got: Any) -> dict[str, Any]:
        return {"kind": "mismatch", "at": self._where(expected), "field": field, "expected": want,
                "actual": got}
