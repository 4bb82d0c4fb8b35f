"""OpenTelemetry pieces in process, with the SDK's in-memory exporter: a run's spans built from its events,
FastAPI's request spans joining the caller's trace, and the `otel` settings."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy.cache import CachePolicy
from proxy.config import ConfigError, OTelSettings, load_settings
from proxy.errors import ProxyError
from proxy.registry import ModelRegistry
from proxy.rlm.budget import RunLimits
from proxy.rlm.engine import RunRequest
from proxy.rlm.events import (
    BlockExecuted,
    BlockStarted,
    Event,
    IterationStarted,
    ModelCall,
    RootReplied,
    RunFinished,
    RunStats,
    SubcallsDispatched,
    SubcallsFinished,
)
from proxy.telemetry.tracing import Tracing

CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
RUN = RunRequest(messages=[{"role": "user", "content": "x"}], root_model="root", sub_model="sub",
                 limits=RunLimits(max_iterations=5, max_depth=2, max_subcalls=10, max_cost_usd=None,
                                  timeout_s=60),
                 cache=CachePolicy(scope="k"))


def tracing_to(exporter: InMemorySpanExporter) -> Tracing:
    registry = ModelRegistry([], {})  # no model_list: any name is an OpenAI-style model without a provider
    return Tracing(OTelSettings(endpoint="http://collector:4318"), registry, exporter)


def call(model: str, started_at: float, duration_s: float = 0.01, error: str | None = None) -> ModelCall:
    return ModelCall(model=model, prompt_chars=10, text="" if error else "answer", error=error,
                     prompt_tokens=7, completion_tokens=3, cost_usd=0.001, cached=False,
                     duration_s=duration_s, cache_key="", started_at=started_at)


def finished() -> RunFinished:
    return RunFinished(answer="42", finish_reason="length", stopped="max_iterations",
                       stats=RunStats(iterations=3, subcalls=2, blocks=2, prompt_tokens=30,
                                      completion_tokens=9, coverage=0.5, max_depth=2))


async def events_of(items: Sequence[Event | Exception]) -> AsyncIterator[Event]:
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


async def drained(tracing: Tracing, items: Sequence[Event | Exception], take: int | None = None) -> None:
    """The run's events read through its spans, all of them or the first `take` (then closed)."""
    events = tracing.run_events(events_of(items), RUN)
    try:
        async for _ in events:
            if take is not None:
                take -= 1
                if take == 0:
                    break
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def spans_of(tracing: Tracing, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracing.provider.force_flush()
    return list(exporter.get_finished_spans())


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def parent_of(spans: list[ReadableSpan], span: ReadableSpan) -> ReadableSpan:
    assert span.parent is not None
    (parent,) = [s for s in spans if s.context.span_id == span.parent.span_id]
    return parent


async def test_run_spans_follow_iterations_blocks_nested_runs_and_calls() -> None:
    exporter = InMemorySpanExporter()
    tracing = tracing_to(exporter)
    now = time.time() - 60  # the events' own times place the spans, not when they are read
    await drained(tracing, [
        IterationStarted(iteration=1, depth=1, prompt_chars=100, at=now),
        RootReplied(iteration=1, depth=1, call=call("root", now)),
        BlockStarted(iteration=1, block=1, depth=1, code="rlm_query(...)"),
        IterationStarted(iteration=1, depth=2),  # a nested run, started by the block's code
        RootReplied(iteration=1, depth=2, call=call("root", now)),
        BlockStarted(iteration=1, block=1, depth=2, code="llm_query(...)"),
        SubcallsDispatched(count=2, depth=2),
        # The second sub-call waited for a slot: it starts later than it was dispatched.
        SubcallsFinished(count=2, depth=2, errors=1, duration_s=0.5,
                         calls=(call("sub", now, 0.2), call("sub", now + 0.3, 0.2, error="Error: boom"))),
        BlockExecuted(iteration=1, block=1, depth=2, outcome="ok", duration_s=0.1, output_chars=5),
        BlockExecuted(iteration=1, block=1, depth=1, outcome="error", duration_s=0.3, output_chars=9,
                      coverage=0.5, cpu_s=0.02, peak_rss_bytes=1000),
        IterationStarted(iteration=2, depth=1, at=now + 2),
        RootReplied(iteration=2, depth=1, call=call("root", now)),
        RootReplied(iteration=2, depth=1, call=call("root", now), final=True),  # after the limit stopped it
        finished()])
    spans = spans_of(tracing, exporter)

    (top,) = [s for s in named(spans, "rlm.run") if s.attributes["rlm.depth"] == 1]
    assert top.parent is None and top.attributes["rlm.run_id"] == RUN.run_id
    assert top.attributes["rlm.stopped"] == "max_iterations" and top.attributes["rlm.iterations"] == 3
    assert top.attributes["rlm.coverage"] == 0.5 and top.attributes["rlm.max_depth_reached"] == 2
    first, second = sorted((s for s in named(spans, "rlm.iteration") if s.attributes["rlm.depth"] == 1),
                           key=lambda s: s.attributes["rlm.iteration"])
    assert parent_of(spans, first) is top and parent_of(spans, second) is top
    assert first.start_time == int(now * 1e9) and first.end_time == second.start_time == int((now + 2) * 1e9)

    (block,) = [s for s in named(spans, "rlm.block") if s.attributes["rlm.depth"] == 1]
    assert parent_of(spans, block) is first
    assert block.attributes["rlm.block.outcome"] == "error" and block.status.status_code is StatusCode.ERROR
    assert block.attributes["rlm.block.cpu_s"] == 0.02 and block.attributes["rlm.coverage"] == 0.5
    (nested,) = [s for s in named(spans, "rlm.run") if s.attributes["rlm.depth"] == 2]
    assert parent_of(spans, nested) is block and nested.end_time <= block.end_time

    root_calls = named(spans, "chat root")
    assert len(root_calls) == 4 and all(s.kind is SpanKind.CLIENT for s in root_calls)
    final = [s for s in root_calls if parent_of(spans, s) is top]
    assert len(final) == 1  # the final answer's call belongs to the run, not to an iteration
    assert {parent_of(spans, s).name for s in root_calls} == {"rlm.iteration", "rlm.run"}
    assert root_calls[0].attributes["gen_ai.operation.name"] == "chat"
    assert root_calls[0].attributes["gen_ai.request.model"] == "root"
    assert root_calls[0].attributes["gen_ai.usage.input_tokens"] == 7
    assert root_calls[0].attributes["gen_ai.usage.output_tokens"] == 3
    assert "gen_ai.provider.name" not in root_calls[0].attributes  # a bare model name names no provider

    subcalls = sorted(named(spans, "chat sub"), key=lambda s: s.start_time)
    (nested_block,) = [s for s in named(spans, "rlm.block") if s.attributes["rlm.depth"] == 2]
    assert all(parent_of(spans, s) is nested_block for s in subcalls)
    assert subcalls[1].start_time - subcalls[0].start_time == pytest.approx(0.3e9, abs=1e6)
    assert subcalls[0].end_time - subcalls[0].start_time == pytest.approx(0.2e9, abs=1e6)
    assert subcalls[1].status.status_code is StatusCode.ERROR
    assert subcalls[1].attributes["error.type"] == "_OTHER"
    assert all(s.attributes["rlm.call"] == "sub" and s.attributes["rlm.depth"] == 2 for s in subcalls)


async def test_a_failed_run_ends_its_spans_with_the_error() -> None:
    exporter = InMemorySpanExporter()
    tracing = tracing_to(exporter)
    with pytest.raises(ProxyError):
        await drained(tracing, [IterationStarted(iteration=1, depth=1), BlockStarted(1, 1, 1, "x"),
                                ProxyError(503, "no worker", code="sandbox_unavailable")])
    spans = spans_of(tracing, exporter)
    assert sorted(s.name for s in spans) == ["rlm.block", "rlm.iteration", "rlm.run"]  # all ended
    (run,) = named(spans, "rlm.run")
    assert run.status.status_code is StatusCode.ERROR
    assert run.attributes["error.type"] == "sandbox_unavailable"
    assert [event.name for event in run.events] == ["exception"]


async def test_a_run_closed_early_ends_its_spans_as_cancelled() -> None:
    exporter = InMemorySpanExporter()
    tracing = tracing_to(exporter)
    await drained(tracing, [IterationStarted(iteration=1, depth=1), BlockStarted(1, 1, 1, "x"),
                            IterationStarted(iteration=1, depth=2), finished()], take=3)
    spans = spans_of(tracing, exporter)
    assert len(spans) == 5  # both runs, both iterations, the block
    (top,) = [s for s in named(spans, "rlm.run") if s.attributes["rlm.depth"] == 1]
    assert top.attributes["rlm.cancelled"] is True and top.status.status_code is StatusCode.UNSET


async def test_request_spans_join_the_callers_trace_and_runs_hang_under_them() -> None:
    exporter = InMemorySpanExporter()
    tracing = tracing_to(exporter)
    app = FastAPI(telemetry=tracing.fastapi_telemetry())

    @app.post("/v1/things/{name}")
    async def run_one(name: str) -> dict[str, Any]:
        await drained(tracing, [IterationStarted(iteration=1, depth=1), finished()])
        return {"name": name}

    @app.get("/livez")
    async def livez() -> dict[str, Any]:
        return {}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        traced = await client.post("/v1/things/a", headers=caller)
        assert traced.status_code == 200
        assert (await client.post("/v1/things/b")).status_code == 200
        assert (await client.get("/livez")).status_code == 200
    spans = spans_of(tracing, exporter)

    joined, fresh = [s for s in spans if s.kind is SpanKind.SERVER]
    assert format(joined.context.trace_id, "032x") == CALLER_TRACE
    assert joined.parent is not None and format(joined.parent.span_id, "016x") == CALLER_SPAN
    assert joined.name == "POST /v1/things/{name}" and joined.attributes["http.route"] == "/v1/things/{name}"
    assert joined.attributes["http.response.status_code"] == 200
    assert fresh.parent is None and fresh.context.trace_id != joined.context.trace_id
    runs = named(spans, "rlm.run")
    assert [parent_of(spans, run) for run in runs] == [joined, fresh]
    assert not [s for s in spans if s.attributes.get("url.path") == "/livez"]  # otel.exclude_paths
    assert {s.resource.attributes["service.name"] for s in spans} == {"rlm-proxy"}


def test_the_standard_endpoint_variable_enables_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert load_settings().otel.endpoint == "http://collector:4318"
    monkeypatch.setenv("RLM_PROXY_OTEL__ENDPOINT", "https://tempo:4318")  # the proxy's own variable wins
    assert load_settings().otel.endpoint == "https://tempo:4318"


@pytest.mark.parametrize(("otel", "message"), [
    ({"endpoint": "collector:4318"}, "otel.endpoint"),
    ({"sample_ratio": 1.5}, "otel.sample_ratio"),
    ({"service_name": ""}, "otel.service_name"),
    ({"exporter": "grpc"}, "otel.exporter"),
])
def test_bad_otel_settings_are_refused(tmp_path: Any, otel: dict[str, Any], message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"otel: {otel!r}".replace("'", '"'))
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_without_an_endpoint_nothing_of_opentelemetry_is_set_up() -> None:
    code = ("import sys\nfrom proxy.app import create_app\nfrom proxy.config import Settings\n"
            "app = create_app(Settings())\n"
            "assert app.state.services.tracing is None\n"
            "assert 'proxy.telemetry.tracing' not in sys.modules, 'tracing imported'\n"
            "assert 'opentelemetry.sdk.trace' not in sys.modules, 'the SDK imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert done.returncode == 0, done.stderr
