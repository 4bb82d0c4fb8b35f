"""A run's trajectory record: its header, its events in a stable JSON form, and the timeline built from them.

The events are the record's one source of truth: the SSE stream sends them as they are, the JSONL file holds
one per line after the header, and `timeline` arranges them by iteration and block for GET. The format is
versioned (`FORMAT_VERSION`); README "Seeing inside a run" documents it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any

import orjson

from proxy.rlm.engine import ROOT_PARAMS, RunRequest
from proxy.rlm.events import (
    BlockExecuted,
    BlockStarted,
    Event,
    IterationStarted,
    ModelCall,
    RootReplied,
    RunFinished,
    SubcallsDispatched,
    SubcallsFinished,
)
from proxy.rlm.prompts import RunInput

FORMAT_VERSION = 1
PREVIEW_CHARS = 200  # of the input's head and tail
HASH_SLICE_CHARS = 1 << 20
TERMINAL_EVENTS = ("run_finished", "run_failed", "run_cancelled")


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and a note of what was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} more characters]"


def input_shape(run: RunRequest, run_input: RunInput, text: str, store_context: bool) -> dict[str, Any]:
    """What the run was given (`run_input`, its context as `text`): its kind, size and edges; the whole of
    it only when asked. Its digests (`input_digests`) are None until the recorder fills them in."""
    context = run_input.context
    shape: dict[str, Any] = {
        "type": "str" if isinstance(context, str) else "list", "messages": len(run.messages),
        "chars": len(text), "sha256": None, "request_sha256": None,
        "head": text[:PREVIEW_CHARS], "tail": text[-PREVIEW_CHARS:] if len(text) > PREVIEW_CHARS else ""}
    if store_context:
        shape["context"] = context
        shape["system"] = run_input.system
    return shape


def context_text(context: str | list[dict[str, str]]) -> str:
    return context if isinstance(context, str) else orjson.dumps(context).decode()


def input_digests(run_input: RunInput, text: str) -> tuple[str, str]:
    """SHA-256 of the context (`text`), and of everything the run takes from the messages: the context, the
    question, the system text and the tool results (a replay's messages must match both)."""
    digest = hashlib.sha256()
    for start in range(0, len(text), HASH_SLICE_CHARS):  # never a whole encoded copy of a large input
        digest.update(text[start:start + HASH_SLICE_CHARS].encode("utf-8", "surrogatepass"))
    sha256 = digest.hexdigest()
    rest = {"context": sha256, "system": run_input.system, "tool_results": run_input.tool_results,
            # Of a str context the question is the context itself.
            "question": None if isinstance(run_input.context, str) else run_input.question}
    return sha256, hashlib.sha256(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)).hexdigest()


def header(run: RunRequest, key_alias: str, started_at: float, input_: dict[str, Any],
           replay_of: str | None = None) -> dict[str, Any]:
    limits = run.limits
    return {"object": "rlm.run", "version": FORMAT_VERSION, "id": run.run_id, "status": "running",
            "key_alias": key_alias, "root_model": run.root_model, "sub_model": run.sub_model,
            "limits": {"max_iterations": limits.max_iterations, "max_depth": limits.max_depth,
                       "max_subcalls": limits.max_subcalls, "max_cost_usd": limits.max_cost_usd,
                       "timeout_s": limits.timeout_s},
            "request": request_facts(run), "replay_of": replay_of,
            "input": input_, "started_at": started_at, "finished_at": None, "answer": None,
            "finish_reason": None, "stopped": None, "totals": None, "error": None}


def request_facts(run: RunRequest) -> dict[str, Any]:
    """What else the root model's calls depend on, kept so that the run can be replayed: its sampling
    parameters, the client's tools, and the cache's scope and use."""
    tools = run.tools
    return {"root_params": {k: run.root_params[k] for k in ROOT_PARAMS if k in run.root_params},
            "tools": None if tools is None else {"tools": list(tools.tools), "choice": tools.choice,
                                                 "parallel": tools.parallel},
            "cache": {"scope": run.cache.scope, "read": run.cache.read, "write": run.cache.write}}


def call_dict(call: ModelCall, limit: int) -> dict[str, Any]:
    fields = asdict(call)
    fields["text"] = cut(call.text, limit)
    fields["prompt"] = cut(call.prompt, limit)
    return fields


def event_dict(event: Event, limit: int) -> dict[str, Any]:
    """An engine event in the record's form; texts cut to `limit` characters."""
    return {**_event_fields(event, limit), "at": event.at}


def _event_fields(event: Event, limit: int) -> dict[str, Any]:
    match event:
        case IterationStarted():
            return {"type": "iteration_started", "depth": event.depth, "iteration": event.iteration,
                    "prompt_chars": event.prompt_chars}
        case RootReplied():
            return {"type": "root_replied", "depth": event.depth, "iteration": event.iteration,
                    "final": event.final, "call": call_dict(event.call, limit)}
        case BlockStarted():
            return {"type": "block_started", "depth": event.depth, "iteration": event.iteration,
                    "block": event.block, "code": cut(event.code, limit)}
        case BlockExecuted():
            return {"type": "block_executed", "depth": event.depth, "iteration": event.iteration,
                    "block": event.block, "outcome": event.outcome, "duration_s": event.duration_s,
                    "output_chars": event.output_chars, "output": cut(event.output, limit),
                    "coverage": event.coverage, "cpu_s": event.cpu_s, "peak_rss_bytes": event.peak_rss_bytes,
                    "read_map": list(event.read_map)}
        case SubcallsDispatched():
            return {"type": "subcalls_dispatched", "depth": event.depth, "count": event.count}
        case SubcallsFinished():
            return {"type": "subcalls_finished", "depth": event.depth, "count": event.count,
                    "errors": event.errors, "duration_s": event.duration_s,
                    "calls": [call_dict(call, limit) for call in event.calls]}
        case RunFinished():
            return {"type": "run_finished", "answer": cut(event.answer, limit),
                    "finish_reason": event.finish_reason, "stopped": event.stopped,
                    "tool_calls": list(event.tool_calls), "totals": totals(event)}
    raise AssertionError(f"no record form for {type(event).__name__}")


def totals(finished: RunFinished) -> dict[str, Any]:
    stats = finished.stats
    return {"iterations": stats.iterations, "code_blocks": stats.blocks, "subcalls": stats.subcalls,
            "cached_subcalls": stats.cached_subcalls, "subcall_errors": stats.subcall_errors,
            "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "cost_usd": stats.cost_usd, "cost_saved_usd": stats.cost_saved_usd, "coverage": stats.coverage,
            "max_depth": stats.max_depth, "duration_s": stats.duration_s}


def timeline(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The events arranged for reading: iterations (nested runs' ones included, each with its `parent`
    block), their root reply and code blocks, each block's sub-calls; and the top level's coverage over
    time as [seconds since the start, fraction read] pairs."""
    iterations: list[dict[str, Any]] = []
    latest: dict[int, dict[str, Any]] = {}  # the current iteration at each depth
    running: dict[int, dict[str, Any]] = {}  # the block running at each depth
    coverage: list[list[float]] = []
    for event in events:
        kind, depth = event["type"], event.get("depth", 1)
        if kind == "iteration_started":
            parent = running.get(depth - 1)
            entry = {"depth": depth, "iteration": event["iteration"], "t": event["t"],
                     "prompt_chars": event["prompt_chars"], "reply": None, "final_reply": None, "blocks": [],
                     "parent": None if parent is None else {"iteration": parent["iteration"],
                                                            "block": parent["block"]}}
            iterations.append(entry)
            latest[depth] = entry
        elif kind == "root_replied" and depth in latest:
            latest[depth]["final_reply" if event["final"] else "reply"] = event["call"]
        elif kind == "block_started" and depth in latest:
            block = {"block": event["block"], "iteration": event["iteration"], "t": event["t"],
                     "code": event["code"], "outcome": None, "output": None, "duration_s": None,
                     "subcalls": []}
            latest[depth]["blocks"].append(block)
            running[depth] = block
        elif kind == "block_executed" and depth in running:
            running.pop(depth).update({k: event.get(k) for k in (
                "outcome", "output", "duration_s", "coverage", "cpu_s", "peak_rss_bytes", "read_map")})
            if depth == 1:
                coverage.append([event["t"], event["coverage"]])
        elif kind == "subcalls_finished" and depth in running:
            running[depth]["subcalls"].extend(event["calls"])
    return {"iterations": iterations, "coverage": coverage}
