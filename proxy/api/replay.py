"""POST /v1/rlm/runs/{id}/replay: a recorded run again, every model call served from the cache alone.

The replay runs the engine with a `CacheOnlyCaller` (no upstream client at all) on the recorded run's
models, limits, parameters, tools and cache scope, compares its events with the record as they come, and
stops at the first divergence. It is recorded as a run of its own, whose header names the run it replays
(`replay_of`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request

from proxy.api.deps import Services
from proxy.api.request import check_messages, optional, parse_json_body
from proxy.api.rlm import as_proxy_errors
from proxy.api.streaming import until_disconnect
from proxy.auth import Identity, presented_keys
from proxy.model_caller import CacheMiss, CacheOnlyCaller
from proxy.rlm.engine import RLMEngine
from proxy.rlm.events import Event, RunFinished
from proxy.trajectories.record import event_dict
from proxy.trajectories.replay import (
    Comparison,
    check_replayable,
    not_replayable,
    recorded_hits,
    replay_messages,
    replay_request,
)


async def replay(request: Request, services: Services, identity: Identity, run_id: str) -> dict[str, Any]:
    raw = await request.body()
    body = parse_json_body(raw) if raw and not raw.isspace() else {}  # empty: the record holds the input
    messages = optional(body, "messages", list, "an array")
    if messages is not None:
        check_messages(messages)
    record = await services.trajectories.load(run_id, identity)  # a key replays only its own runs
    check_replayable(record)
    if services.cache is None:
        raise not_replayable("this server has no cache (cache.enabled is false).")
    scope = record["request"]["cache"]["scope"]
    # The master key replays in the run's own scope; a key only in the scope it has now, so that a key
    # whose team changed since cannot read its old team's entries.
    if not identity.master and scope != identity.cache_scope(services.settings.cache.scope):
        raise not_replayable("its cache scope is no longer this key's (cache.scope or the key's team changed "
                             "since it ran); the master key can replay it.")
    run = replay_request(record, replay_messages(record, messages))
    caller = CacheOnlyCaller(services.registry, services.facts, services.cache,
                             recorded_hits(record["events"]))
    events = services.trajectories.recorded(
        as_proxy_errors(RLMEngine(caller, services.sandbox, services.settings.rlm).run(run)), run, identity,
        presented_keys(request.headers.get("authorization"), request.headers.get("x-api-key")),
        replay_of=run_id)
    comparison = Comparison(record)

    async def admitted() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        await services.admission.enter(identity.key_hash)  # a replay takes a sandbox worker like any run
        try:
            return await _compared(events, comparison, caller, services)
        finally:
            services.admission.leave(identity.key_hash)

    divergence, finished = await until_disconnect(request.receive, admitted())
    return {"object": "rlm.replay", "run_id": run_id, "replay_run_id": run.run_id,
            "exact": divergence is None, "upstream_calls": 0,  # CacheOnlyCaller has no way to a model
            "divergence": divergence, "answer": None if finished is None else finished["answer"],
            "recorded_answer": record["answer"],
            "answer_matched": finished is not None and finished["answer"] == record["answer"],
            "iterations": comparison.iterations, "code_blocks": comparison.code_blocks,
            "subcalls": comparison.subcalls}


async def _compared(events: AsyncIterator[Event], comparison: Comparison, caller: CacheOnlyCaller,
                    services: Services) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the first divergence, the replay's run_finished event in the record's form), either None; the
    replay stops at its first divergence."""
    limit = services.settings.trajectories.max_text_chars
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        try:
            async for event in events:
                # In the record's form (cut and redacted as the record was) to compare like with like.
                recorded = orjson.loads(services.trajectories.encode(event_dict(event, limit)))
                divergence = comparison.check(recorded, caller.miss)
                if isinstance(event, RunFinished):
                    return divergence, recorded
                if divergence is not None:
                    return divergence, None
        except CacheMiss as miss:
            return comparison.failed(caller.miss or miss), None
    raise AssertionError("an engine run always ends with RunFinished")
