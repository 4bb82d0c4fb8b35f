"""Records RLM runs as their events pass, keeps them in the run store, and serves them to the runs API.

A run being recorded lives in this process (`LiveRun`): its events are appended as they happen and
followers wake on each one. It is saved when it starts, at most every `SAVE_INTERVAL_S` while it works (so
another replica sees its progress), and when it ends, however it ends: answered, failed, or cancelled
because the client went away. Saving never slows or fails the run: it runs in a task, and a store failure
is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from proxy.auth import Identity
from proxy.config import CacheSettings, TrajectorySettings
from proxy.errors import ProxyError, store_unavailable
from proxy.rlm.engine import RunRequest
from proxy.rlm.events import Event, RunFinished
from proxy.rlm.prompts import build_input
from proxy.trajectories.record import (
    TERMINAL_EVENTS,
    context_text,
    event_dict,
    header,
    input_digests,
    input_shape,
    timeline,
)
from proxy.trajectories.secrets import MIN_SECRET_CHARS, Redactor
from proxy.trajectories.store import run_store

log = logging.getLogger("rlm_proxy")

SAVE_INTERVAL_S = 1.0
POLL_S = 0.5  # how often a follower of a run on another replica looks for its new events


class LiveRun:
    """A run this process is recording: its header and events so far."""

    def __init__(self, owner: str, head: dict[str, Any]) -> None:
        self.owner = owner
        self.header = head
        self.events: list[dict[str, Any]] = []
        self.saved_at = 0.0
        self.saving: asyncio.Task[None] | None = None
        self.dirty = False
        self.deleted = False
        self._started = time.monotonic()
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.header["status"] != "running"

    def add(self, event: dict[str, Any]) -> None:
        event["seq"] = len(self.events)
        event["t"] = round(time.monotonic() - self._started, 6)
        self.events.append(event)
        # Followers wait on the event of the moment; a new one is made for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    def end(self, status: str, event: dict[str, Any], **fields: Any) -> None:
        if self.done:
            return
        self.header.update(status=status, finished_at=time.time(), **fields)
        self.add(event)

    def record(self) -> dict[str, Any]:
        return {**self.header, "owner": self.owner, "events": self.events}

    async def follow(self, start: int) -> AsyncIterator[dict[str, Any]]:
        """Its events from `start`, then each new one as it comes, until the run ends."""
        sent = start
        while True:
            changed = self._changed  # taken before reading, so that no event falls between
            while sent < len(self.events):
                yield self.events[sent]
                sent += 1
            if self.done:
                return
            await changed.wait()


def not_found(run_id: str) -> ProxyError:
    return ProxyError(404, f"No run with id '{run_id}' is recorded for this key (it may have expired or been "
                      "deleted).", code="run_not_found")


class Trajectories:
    def __init__(self, settings: TrajectorySettings, cache: CacheSettings, secrets: Iterable[str]) -> None:
        self._settings = settings
        self._store = run_store(settings, cache)
        self._redact = Redactor(secrets)
        self._live: dict[str, LiveRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def recorded(self, events: AsyncIterator[Event], run: RunRequest, identity: Identity,
                 caller_keys: Sequence[str] = (), replay_of: str | None = None) -> AsyncIterator[Event]:
        """The run's events, recorded as they pass (unchanged when recording is off). `caller_keys`, what the
        request came with, are redacted from this run's record too: keys made through the admin API are
        known only by their hash, so only the request that presents one can tell what to hide. A replay
        names the run it replays in `replay_of`."""
        return (self._recording(events, run, identity, caller_keys, replay_of) if self._settings.enabled
                else events)

    async def _recording(self, events: AsyncIterator[Event], run: RunRequest, identity: Identity,
                         caller_keys: Sequence[str], replay_of: str | None) -> AsyncIterator[Event]:
        limit = self._settings.max_text_chars
        secrets = sorted((key for key in caller_keys if len(key) >= MIN_SECRET_CHARS), key=len, reverse=True)
        own = Redactor(secrets) if secrets else None

        def hidden(value: dict[str, Any]) -> dict[str, Any]:
            if own is None:
                return value
            encoded = orjson.dumps(value)
            cleaned = own(encoded)
            return value if cleaned is encoded else orjson.loads(cleaned)  # parsed again only if it held one

        run_input = build_input(run.messages)
        text = context_text(run_input.context)
        live = LiveRun(identity.key_hash, hidden(header(
            run, identity.alias, time.time(), input_shape(run, run_input, text, self._settings.store_context),
            replay_of)))
        self._live[run.run_id] = live
        self._save(live)
        # Hashing megabytes would hold up the run's first call: it runs in a thread (hashlib lets go of the
        # GIL), and the record has its digests before it tells how the run ended.
        digests = asyncio.ensure_future(asyncio.to_thread(input_digests, run_input, text))
        digests.add_done_callback(lambda done: self._add_digests(live, done))
        try:
            async for event in events:
                recorded = hidden(event_dict(event, limit))
                if isinstance(event, RunFinished):
                    await asyncio.wait([digests])
                    live.end("finished", recorded, **{k: recorded[k] for k in (
                        "answer", "finish_reason", "stopped", "totals")})
                else:
                    live.add(recorded)
                    if time.monotonic() - live.saved_at >= SAVE_INTERVAL_S:
                        self._save(live)
                yield event
        except ProxyError as error:
            details = {"status": error.status, **error.payload()["error"]}
            live.end("failed", {"type": "run_failed", "error": details}, error=details)
            raise
        except Exception as error:
            details = {"status": 500, "message": f"{type(error).__name__}: {error}", "type": "server_error",
                       "param": None, "code": "internal_error"}
            live.end("failed", {"type": "run_failed", "error": details}, error=details)
            raise
        finally:  # closed early (the client went away) or cancelled
            live.end("cancelled", {"type": "run_cancelled"})
            self._save(live)

    def _add_digests(self, live: LiveRun, digests: asyncio.Future[tuple[str, str]]) -> None:
        if not digests.cancelled() and digests.exception() is None:
            sha256, request_sha256 = digests.result()
            live.header["input"].update(sha256=sha256, request_sha256=request_sha256)
            if live.done:  # (a run that failed or was cancelled meanwhile was saved without them)
                self._save(live)

    # --- saving ------------------------------------------------------------------------------------------

    def _save(self, live: LiveRun) -> None:
        live.saved_at = time.monotonic()
        live.dirty = True
        if live.saving is None:
            live.saving = asyncio.get_running_loop().create_task(self._saving(live))
            self._tasks.add(live.saving)
            live.saving.add_done_callback(self._tasks.discard)

    async def _saving(self, live: LiveRun) -> None:
        run_id = live.header["id"]
        try:
            while live.dirty and not live.deleted:
                live.dirty = False
                summary = {**live.header, "owner": live.owner,
                           "input": {k: v for k, v in live.header["input"].items()
                                     if k not in ("context", "system")}}
                try:
                    await self._store.save(summary, self.encode(live.record()))
                except Exception as error:
                    log.warning("saving run %s failed (%s: %s)", run_id, type(error).__name__, error)
            if live.done and not live.deleted and self._settings.dir is not None:
                await asyncio.to_thread(self._write_jsonl, self._settings.dir, live)
        finally:
            live.saving = None
            if live.done and (live.deleted or not live.dirty):
                self._live.pop(run_id, None)

    def _write_jsonl(self, directory: Path, live: LiveRun) -> None:
        """One file per run: its header (with `version`) on the first line, then one event per line."""
        path = directory / f"{live.header['id']}.jsonl"
        partial = path.with_suffix(".jsonl.partial")
        try:
            with partial.open("wb") as file:
                file.write(self.encode(live.header) + b"\n")
                for event in live.events:
                    file.write(self.encode(event) + b"\n")
            os.replace(partial, path)
        except OSError as error:
            log.warning("writing %s failed (%s)", path, error)

    def encode(self, value: Any) -> bytes:
        """JSON without any known secret: the only way a record leaves this object."""
        return self._redact(orjson.dumps(value))

    # --- reading -----------------------------------------------------------------------------------------

    async def load(self, run_id: str, identity: Identity) -> dict[str, Any]:
        """The run's record (header and events) if the caller may see it, else the 404 of a missing run."""
        live = self._live.get(run_id)
        record = live.record() if live is not None and not live.deleted else await self._stored(run_id)
        if record is None or not (identity.master or record["owner"] == identity.key_hash):
            raise not_found(run_id)
        return record

    async def trajectory(self, run_id: str, identity: Identity) -> bytes:
        record = await self.load(run_id, identity)
        events = record.pop("events")
        del record["owner"]
        return self.encode(record | timeline(events))

    async def runs(self, identity: Identity, limit: int, after: str | None, key_alias: str | None,
                   model: str | None, status: str | None, since: float | None,
                   until: float | None) -> dict[str, Any]:
        """A page of the caller's runs, newest first (OpenAI's list shape)."""
        found: list[dict[str, Any]] = []
        more = False
        async with _store_errors(), contextlib.aclosing(  # type: ignore[type-var]
                self._store.newest_first(after)) as summaries:
            async for stored in summaries:
                live = self._live.get(stored["id"])
                summary = {**stored, **live.header} if live is not None else stored
                if not (identity.master or summary["owner"] == identity.key_hash):
                    continue
                if ((key_alias is not None and summary["key_alias"] != key_alias)
                        or (model is not None and model not in (summary["root_model"], summary["sub_model"]))
                        or (status is not None and summary["status"] != status)
                        or (since is not None and summary["started_at"] < since)
                        or (until is not None and summary["started_at"] >= until)):
                    continue
                if len(found) == limit:
                    more = True
                    break
                found.append({k: v for k, v in summary.items() if k != "owner"})
        return {"object": "list", "data": found, "first_id": found[0]["id"] if found else None,
                "last_id": found[-1]["id"] if found else None, "has_more": more}

    async def delete(self, run_id: str, identity: Identity) -> None:
        await self.load(run_id, identity)
        live = self._live.get(run_id)
        if live is not None:
            live.deleted = True
            if live.saving is not None:
                await asyncio.wait({live.saving})  # a save in flight must not bring it back
        async with _store_errors():
            await self._store.delete(run_id)

    async def follow(self, run_id: str, identity: Identity, start: int) -> AsyncIterator[dict[str, Any]]:
        """The run's events from `start`, then live ones until it ends; checked before the first is sent."""
        record = await self.load(run_id, identity)
        live = self._live.get(run_id)
        if live is not None:
            return live.follow(start)
        return self._polled(run_id, record["events"], start)

    async def _polled(self, run_id: str, events: list[dict[str, Any]],
                      start: int) -> AsyncIterator[dict[str, Any]]:
        """A run recorded elsewhere (another replica), read again from the store until it ends."""
        sent = start
        while True:
            for event in events[sent:]:
                yield event
                sent += 1
                if event["type"] in TERMINAL_EVENTS:
                    return
            await asyncio.sleep(POLL_S)
            record = await self._stored(run_id)
            if record is None:
                return
            events = record["events"]

    async def _stored(self, run_id: str) -> dict[str, Any] | None:
        async with _store_errors():
            raw = await self._store.load(run_id)
        return None if raw is None else orjson.loads(raw)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        await self._store.aclose()


@contextlib.asynccontextmanager
async def _store_errors() -> AsyncIterator[None]:
    """A failing store is the client's 503, never a 500."""
    try:
        yield
    except ProxyError:
        raise
    except Exception as error:
        raise store_unavailable("run store", "store_unavailable", error) from error
