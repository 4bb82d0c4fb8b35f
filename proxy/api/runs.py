"""The runs API: the records of RLM runs (proxy/trajectories), and their replays (proxy/api/replay.py). A key
sees only its own runs (any other run gets the 404 of a run that does not exist); the master key sees every
run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from proxy.api.deps import IdentityDep, Services, get_services
from proxy.api.replay import replay
from proxy.api.rlm import HEARTBEAT, with_heartbeats
from proxy.api.streaming import SSEResponse
from proxy.errors import ProxyError, invalid_request
from proxy.trajectories.recorder import Trajectories

RunStatus = Literal["running", "finished", "failed", "cancelled"]


async def recording(request: Request) -> Services:
    services = await get_services(request)
    if not services.settings.trajectories.enabled:
        raise ProxyError(404, "Runs are not recorded on this server (trajectories.enabled is false).",
                         code="trajectories_disabled")
    return services


RecordingDep = Annotated[Services, Depends(recording)]
router = APIRouter()


@router.get("/v1/rlm/runs")
async def list_runs(services: RecordingDep, identity: IdentityDep,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None,
                    key_alias: str | None = None, model: str | None = None, status: RunStatus | None = None,
                    since: float | None = None, until: float | None = None) -> Response:
    """The caller's runs, newest first; `since` and `until` are Unix times of the start."""
    if key_alias is not None and not identity.master:
        raise ProxyError(403, "Only the master key can filter runs by key_alias: a key sees its own runs.",
                         code="master_key_required", param="key_alias")
    page = await services.trajectories.runs(identity, limit, after, key_alias, model, status, since, until)
    return _json(services.trajectories, page)


@router.get("/v1/rlm/runs/{run_id}")
async def get_run(run_id: str, services: RecordingDep, identity: IdentityDep) -> Response:
    return Response(await services.trajectories.trajectory(run_id, identity), media_type="application/json")


@router.delete("/v1/rlm/runs/{run_id}")
async def delete_run(run_id: str, services: RecordingDep, identity: IdentityDep) -> Response:
    await services.trajectories.delete(run_id, identity)
    return _json(services.trajectories, {"id": run_id, "object": "rlm.run.deleted", "deleted": True})


@router.post("/v1/rlm/runs/{run_id}/replay")
async def replay_run(run_id: str, request: Request, services: RecordingDep,
                     identity: IdentityDep) -> Response:
    """The run again with every model call served from the cache; where it diverged, if it did."""
    return _json(services.trajectories, await replay(request, services, identity, run_id))


@router.get("/v1/rlm/runs/{run_id}/events")
async def run_events(run_id: str, request: Request, services: RecordingDep,
                     identity: IdentityDep) -> Response:
    """Server-sent events: the run's events so far, then live ones until it ends. Each carries its `seq` as
    the SSE id, so that a client reconnecting with Last-Event-ID gets the rest, each event once."""
    last = request.headers.get("last-event-id")
    if last is not None and not last.strip().isdigit():
        raise invalid_request("Last-Event-ID must be the id (a number) of an event of this run.",
                              param="last-event-id")
    start = 0 if last is None else int(last) + 1
    events = await services.trajectories.follow(run_id, identity, start)
    return SSEResponse(_sse(services.trajectories, events, services.settings.rlm.heartbeat_s))


async def _sse(trajectories: Trajectories, events: AsyncIterator[dict[str, Any]],
               heartbeat_s: float) -> AsyncIterator[bytes]:
    async for event in with_heartbeats(events, heartbeat_s):
        if event is None:
            yield HEARTBEAT
            continue
        yield (b"id: %d\nevent: %s\ndata: " % (event["seq"], event["type"].encode())
               + trajectories.encode(event) + b"\n\n")


def _json(trajectories: Trajectories, value: Any) -> Response:
    return Response(trajectories.encode(value), media_type="application/json")
