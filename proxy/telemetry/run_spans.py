"""An RLM run's spans, built from its events as they pass, so that the engine knows nothing of tracing.

run → iteration → {root model call, code block → its sub-calls, nested runs}; a nested run (depth > 1) is a
child of the block whose code started it, and ends when that block does. Iterations, blocks and nested runs
start and end at their events' times (when the engine made them, not when they were read); model calls
carry their own start and duration.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from proxy.rlm.engine import RunRequest
from proxy.rlm.events import (
    BlockExecuted,
    BlockStarted,
    Event,
    IterationStarted,
    ModelCall,
    RootReplied,
    RunFinished,
    SubcallsFinished,
)
from proxy.telemetry.genai import call_attributes, call_span_name, error_type

NS = 1_000_000_000


@dataclass
class _Level:
    """The open spans of the run at one depth."""

    run: Span
    iteration: Span | None = None
    block: Span | None = None
    number: int = 0  # of the latest iteration

    def innermost(self) -> Span:
        return self.block or self.iteration or self.run

    def end(self, now: int) -> None:
        for span in (self.block, self.iteration, self.run):
            if span is not None:
                span.end(end_time=now)


class RunSpans:
    def __init__(self, tracer: Tracer, run: RunRequest, parent: Context,
                 provider_of: Callable[[str], str | None]) -> None:
        self._tracer = tracer
        self._run = run
        self._parent = parent
        self._provider_of = provider_of
        self._levels: dict[int, _Level] = {}

    def start(self, now: int) -> None:
        limits = self._run.limits
        self._levels[1] = _Level(self._tracer.start_span(
            "rlm.run", context=self._parent, start_time=now,
            attributes={"rlm.run_id": self._run.run_id, "rlm.depth": 1,
                        "rlm.root_model": self._run.root_model, "rlm.sub_model": self._run.sub_model,
                        "rlm.max_iterations": limits.max_iterations,
                        "rlm.max_depth": limits.max_depth, "rlm.max_subcalls": limits.max_subcalls}))

    def observe(self, event: Event) -> None:
        now = _ns(event.at)
        match event:
            case IterationStarted():
                level = self._level(event.depth, now)
                if level.iteration is not None:
                    level.iteration.end(end_time=now)
                level.number = event.iteration
                level.iteration = self._child("rlm.iteration", level.run, now, {
                    "rlm.iteration": event.iteration, "rlm.depth": event.depth,
                    "rlm.prompt_chars": event.prompt_chars})
            case RootReplied():
                level = self._level(event.depth, now)
                parent = level.iteration or level.run
                if event.final:  # asked for after the loop stopped: the run's own step, not an iteration's
                    self._end_iteration(level, _ns(event.call.started_at))
                    parent = level.run
                self._model_call(event.call, parent, "root", event.depth, event.iteration)
            case BlockStarted():
                level = self._level(event.depth, now)
                level.block = self._child("rlm.block", level.iteration or level.run, now, {
                    "rlm.iteration": event.iteration, "rlm.block": event.block, "rlm.depth": event.depth})
            case BlockExecuted():
                self._end_below(event.depth, now)  # the nested runs this block's code started are over
                level = self._level(event.depth, now)
                if level.block is not None:
                    block, level.block = level.block, None
                    block.set_attributes({"rlm.block.outcome": event.outcome,
                                          "rlm.block.duration_s": event.duration_s,
                                          "rlm.block.output_chars": event.output_chars,
                                          "rlm.coverage": event.coverage})
                    if event.cpu_s is not None:
                        block.set_attribute("rlm.block.cpu_s", event.cpu_s)
                    if event.peak_rss_bytes is not None:
                        block.set_attribute("rlm.block.peak_rss_bytes", event.peak_rss_bytes)
                    if event.outcome != "ok":
                        block.set_status(Status(StatusCode.ERROR, event.outcome))
                    block.end(end_time=now)
            case SubcallsFinished():
                level = self._level(event.depth, now)
                for call in event.calls:
                    self._model_call(call, level.innermost(), "sub", event.depth, level.number)
            case RunFinished():
                stats = event.stats
                top = self._levels[1].run
                top.set_attributes({
                    "rlm.finish_reason": event.finish_reason, "rlm.iterations": stats.iterations,
                    "rlm.code_blocks": stats.blocks, "rlm.subcalls": stats.subcalls,
                    "rlm.cached_subcalls": stats.cached_subcalls, "rlm.subcall_errors": stats.subcall_errors,
                    "rlm.prompt_tokens": stats.prompt_tokens,
                    "rlm.completion_tokens": stats.completion_tokens,
                    "rlm.cost_usd": stats.cost_usd, "rlm.cost_saved_usd": stats.cost_saved_usd,
                    "rlm.coverage": stats.coverage, "rlm.max_depth_reached": stats.max_depth})
                if event.stopped is not None:
                    top.set_attribute("rlm.stopped", event.stopped)
                self._end_below(0, now)

    def failed(self, error: Exception, now: int) -> None:
        if 1 in self._levels:
            top = self._levels[1].run
            top.record_exception(error, timestamp=now)
            top.set_status(Status(StatusCode.ERROR, str(error)))
            top.set_attribute("error.type", error_type(error))
        self._end_below(0, now)

    def close(self, now: int) -> None:
        """Ends what is still open: the run was closed before its end (its client went away)."""
        if 1 in self._levels:
            self._levels[1].run.set_attribute("rlm.cancelled", True)
        self._end_below(0, now)

    def _level(self, depth: int, now: int) -> _Level:
        level = self._levels.get(depth)
        if level is None:  # the first event of a nested run
            above = self._levels.get(depth - 1)
            parent = above.innermost() if above is not None else self._levels[1].run
            level = self._levels[depth] = _Level(self._child(
                "rlm.run", parent, now, {"rlm.run_id": self._run.run_id, "rlm.depth": depth}))
        return level

    def _end_below(self, depth: int, now: int) -> None:
        for deeper in sorted((d for d in self._levels if d > depth), reverse=True):
            self._levels.pop(deeper).end(now)

    @staticmethod
    def _end_iteration(level: _Level, at: int) -> None:
        if level.iteration is not None:
            level.iteration.end(end_time=at)
            level.iteration = None

    def _child(self, name: str, parent: Span, now: int, attributes: dict[str, str | int | float]) -> Span:
        return self._tracer.start_span(name, context=trace.set_span_in_context(parent), start_time=now,
                                       attributes=attributes)

    def _model_call(self, call: ModelCall, parent: Span, role: str, depth: int, iteration: int) -> None:
        started = _ns(call.started_at)
        attributes: dict[str, str | int | float | bool] = {
            **call_attributes("chat", call.model, self._provider_of(call.model), call.prompt_tokens,
                              call.completion_tokens),
            "rlm.call": role, "rlm.depth": depth, "rlm.cache_hit": call.cached, "rlm.cost_usd": call.cost_usd,
            "rlm.prompt_chars": call.prompt_chars, "rlm.iteration": iteration}
        span = self._tracer.start_span(call_span_name("chat", call.model),
                                       context=trace.set_span_in_context(parent), kind=SpanKind.CLIENT,
                                       start_time=started, attributes=attributes)
        if call.error is not None:
            span.set_attribute("error.type", "_OTHER")  # the caller's message is no low-cardinality type
            span.set_status(Status(StatusCode.ERROR, call.error))
        span.end(end_time=started + int(call.duration_s * NS))


def _ns(seconds: float) -> int:
    return int(seconds * NS)


async def traced_run(spans: RunSpans, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """The run's events, unchanged, with its spans made as they pass."""
    spans.start(time.time_ns())
    try:
        async for event in events:
            spans.observe(event)
            yield event
    except Exception as error:
        spans.failed(error, time.time_ns())
        raise
    finally:
        spans.close(time.time_ns())
        await events.aclose()  # type: ignore[attr-defined]
