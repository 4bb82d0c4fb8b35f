"""RLM mode pieces every route shares: the run a request asks for, the run's events with metrics and error
statuses, its summary and progress lines, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from proxy.api.request import ChatRequest
from proxy.api.rlm_tools import client_tools
from proxy.cache import CachePolicy
from proxy.config import RLMSettings
from proxy.errors import ProxyError, invalid_request
from proxy.metrics import Metrics
from proxy.rlm.budget import RunLimits
from proxy.rlm.engine import FinalAnswerTimeout, RunRequest
from proxy.rlm.events import (
    BlockExecuted,
    Event,
    IterationStarted,
    RunFinished,
    SubcallsDispatched,
    SubcallsFinished,
)
from sandbox import SandboxUnavailableError

HEARTBEAT = b": keepalive\n\n"
T = TypeVar("T")
ANSWER_DELTA_CHARS = 2000


@dataclass(frozen=True)
class _Unsupported:
    """A request parameter whose `refused` values an RLM answer cannot honour, and why."""

    param: str
    refused: Callable[[Any], bool]
    why: str
    code: str = "unsupported_value"


def _forces_a_tool(choice: Any) -> bool:
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools")
        return not (isinstance(allowed, dict) and allowed.get("mode") == "auto")
    return choice not in ("auto", "none")


# An RLM answer is one text that the root model gives through FINAL(...), or calls of the client's tools
# that it chose to make: no second choice, no forced tool call (the root model must be free to write code
# first), no token log-probabilities, no guaranteed JSON, no audio. (README, "RLM mode": what is used,
# ignored and refused.)
_UNSUPPORTED = (
    _Unsupported("n", lambda n: n != 1 or isinstance(n, bool), "it gives exactly one choice ('n' must be 1)"),
    _Unsupported("tool_choice", _forces_a_tool,
                 "its root model must be free to work with code before it calls a tool (only 'auto' and "
                 "'none' are possible)"),
    _Unsupported("function_call", lambda call: call not in ("auto", "none"),
                 "its root model must be free to work with code before it calls a function (only 'auto' and "
                 "'none' are possible)"),
    _Unsupported("logprobs", bool, "it has no token log-probabilities"),
    _Unsupported("top_logprobs", bool, "it has no token log-probabilities", code="unsupported_parameter"),
    _Unsupported("response_format", lambda spec: not isinstance(spec, dict) or spec.get("type") != "text",
                 "it cannot guarantee JSON output (only type 'text' is possible)"),
    _Unsupported("modalities", lambda kinds: "audio" in (kinds if isinstance(kinds, list) else [kinds]),
                 "it answers in text only"),
    _Unsupported("audio", lambda _: True, "it answers in text only", code="unsupported_parameter"),
)


def check_rlm_contract(body: Mapping[str, Any]) -> None:
    """Refuse what RLM mode cannot honour, rather than answer without it (a Chat Completions body)."""
    for rule in _UNSUPPORTED:
        value = body.get(rule.param)
        if value is not None and rule.refused(value):
            raise invalid_request(
                f"RLM mode cannot honour '{rule.param}' as given: {rule.why}. Remove it, or ask for direct "
                f"mode (header 'x-rlm-mode: off', model name without 'rlm/').", param=rule.param,
                code=rule.code)


def run_request(chat: ChatRequest, model: str, settings: RLMSettings, cache: CachePolicy) -> RunRequest:
    """The run a request asks for, its limits clamped to the server's caps, its cache scoped to the caller;
    what RLM mode cannot honour is refused."""
    check_rlm_contract(chat.body)
    options = chat.rlm
    caps = [c for c in (options.max_cost_usd, settings.max_cost_usd) if c is not None]
    limits = RunLimits(
        max_iterations=min(options.max_iterations or settings.max_iterations, settings.max_iterations),
        max_depth=min(options.max_depth or settings.max_depth, settings.max_depth),
        max_subcalls=min(settings.max_subcalls if options.max_subcalls is None else options.max_subcalls,
                         settings.max_subcalls),
        max_cost_usd=min(caps) if caps else None,
        timeout_s=min(options.timeout_s or settings.timeout_s, settings.timeout_s),
    )
    return RunRequest(messages=chat.messages, root_model=settings.root_model or model,
                      sub_model=options.sub_model or settings.sub_model or model, limits=limits,
                      root_params=chat.body, cache=cache, tools=client_tools(chat.body))


async def last_event(events: AsyncIterator[Event]) -> RunFinished:
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, RunFinished):
                return event
    raise AssertionError("an engine run always ends with RunFinished")


# How a run ended, as the `reason` label of rlm_proxy_rlm_stopped_total.
_STOP_REASONS = {None: "final", "max_iterations": "max_iterations", "max_subcalls": "budget",
                 "max_cost_usd": "budget", "timeout_s": "timeout"}


async def as_proxy_errors(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """The engine knows nothing of HTTP: its one expected failure of its own gets a status here."""
    try:
        async for event in events:
            yield event
    except SandboxUnavailableError as error:
        raise ProxyError(503, f"RLM mode is unavailable: {error}", code="sandbox_unavailable",
                         error_type="server_error", headers={"retry-after": "5"}) from error
    except FinalAnswerTimeout as error:
        raise ProxyError(504, str(error), code="upstream_timeout") from error
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def observed(events: AsyncIterator[Event], metrics: Metrics, run: RunRequest) -> AsyncIterator[Event]:
    """The run's events, recorded in the metrics as they pass."""
    finished = False
    try:
        async for event in events:
            if isinstance(event, BlockExecuted):
                metrics.sandbox.labels(event.outcome).inc()
                metrics.sandbox_seconds.observe(event.duration_s)
            elif isinstance(event, SubcallsDispatched):
                metrics.subcalls.labels(metrics.model(run.sub_model)).inc(event.count)
            elif isinstance(event, RunFinished):
                finished = True
                metrics.iterations.labels(metrics.model(run.root_model)).observe(event.stats.iterations)
                metrics.stopped.labels(_STOP_REASONS[event.stopped]).inc()
            yield event
    except Exception:
        metrics.stopped.labels("error").inc()
        raise
    except BaseException:  # cancelled, or closed by a client that went away
        if not finished:
            metrics.stopped.labels("cancelled").inc()
        raise
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def summary(run_id: str, finished: RunFinished) -> dict[str, Any]:
    stats = finished.stats
    return {"run_id": run_id, "iterations": stats.iterations, "subcalls": stats.subcalls,
            "cached_subcalls": stats.cached_subcalls, "subcall_errors": stats.subcall_errors,
            "code_blocks": stats.blocks, "cost_usd": round(stats.cost_usd, 8),
            "cost_saved_usd": round(stats.cost_saved_usd, 8), "stopped": finished.stopped,
            "context_coverage": round(stats.coverage, 4), "max_depth": stats.max_depth,
            "duration_s": round(stats.duration_s, 3)}


def progress_line(event: Event) -> str | None:
    """One short line per step, sent as `reasoning_content` while the run works."""
    depth = f" (depth {event.depth})" if not isinstance(event, RunFinished) and event.depth > 1 else ""
    match event:
        case IterationStarted():
            return f"Iteration {event.iteration}{depth}: asking the root model.\n"
        case BlockExecuted():
            return (f"Iteration {event.iteration}{depth}, code block {event.block}: {event.outcome} in "
                    f"{event.duration_s:.2f} s, {event.output_chars:,} characters of output.\n")
        case SubcallsDispatched():
            return f"Sending {event.count} sub-call{'s' * (event.count != 1)}{depth}.\n"
        case SubcallsFinished():
            errors = f", {event.errors} failed" if event.errors else ""
            plural = "s" * (event.count != 1)
            return f"{event.count} sub-call{plural} answered in {event.duration_s:.1f} s{errors}.\n"
    return None


async def with_heartbeats(events: AsyncIterator[T], interval_s: float) -> AsyncIterator[T | None]:
    """The events, with None whenever `interval_s` passes without one (time to send a keep-alive)."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield None
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield event
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await events.aclose()  # type: ignore[attr-defined]
