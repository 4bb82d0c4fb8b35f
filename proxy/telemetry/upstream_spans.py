"""The CLIENT span of each passthrough model call. An RLM run's calls go through `complete_routed`, which
is left alone: their spans are built from the run's events (proxy/telemetry/run_spans.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from proxy.balancer import Balancer
from proxy.config import UpstreamSettings
from proxy.metering import REQUEST_METERING
from proxy.registry import ModelGroup, Target
from proxy.telemetry.genai import call_attributes, call_span_name, error_type, provider_name
from proxy.upstream import Upstream, UpstreamObserver, UsageOf

# What a native dialect's paths do, when it is not a chat (GenAI names no operation for counting tokens).
_FORWARDED_OPERATIONS = {"/messages/count_tokens": "count_tokens"}


class TracedUpstream(Upstream):
    def __init__(self, tracer: Tracer, settings: UpstreamSettings, observer: UpstreamObserver, *,
                 balancer: Balancer, resolve: Callable[[str], ModelGroup]) -> None:
        super().__init__(settings, observer, balancer=balancer, resolve=resolve)
        self._tracer = tracer

    async def complete(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        with self._call_span("chat", target) as span:
            return _answered(span, await super().complete(target, body))

    async def embed(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        with self._call_span("embeddings", target) as span:
            return _answered(span, await super().embed(target, body))

    async def complete_text(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        with self._call_span("text_completion", target) as span:
            return _answered(span, await super().complete_text(target, body))

    async def forward(self, target: Target, path: str, body: dict[str, Any], usage_of: UsageOf,
                      headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        with self._call_span(_FORWARDED_OPERATIONS.get(path, "chat"), target) as span:
            return _answered(span, await super().forward(target, path, body, usage_of, headers))

    def stream(self, target: Target, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._traced_items("chat", target, super().stream(target, body))

    def stream_text(self, target: Target, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._traced_items("text_completion", target, super().stream_text(target, body))

    def forward_events(self, target: Target, path: str, body: dict[str, Any], usage_of: UsageOf,
                       headers: Mapping[str, str] | None = None) -> AsyncIterator[dict[str, Any]]:
        events = super().forward_events(target, path, body, usage_of, headers)
        return self._traced_items("chat", target, events)

    @contextmanager
    def _call_span(self, operation: str, target: Target) -> Iterator[Span]:
        """The call's span; an exception is recorded and sets its status. Not made current: nothing under
        it makes spans, and a stream's items may be read from other tasks."""
        attributes = call_attributes(operation, target.name, provider_name(target))
        span = self._tracer.start_span(call_span_name(operation, target.name), kind=SpanKind.CLIENT,
                                       attributes=attributes)
        try:
            yield span
        except Exception as error:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
            span.set_attribute("error.type", error_type(error))
            raise
        finally:
            _note_usage(span)
            span.end()

    async def _traced_items(self, operation: str, target: Target,
                        items: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        with self._call_span(operation, target) as span:
            try:
                first = True
                async for item in items:
                    if first:
                        _note_response_model(span, item)
                        first = False
                    yield item
            finally:
                await items.aclose()  # type: ignore[attr-defined]


def _answered(span: Span, answer: dict[str, Any]) -> dict[str, Any]:
    _note_response_model(span, answer)
    return answer


def _note_response_model(span: Span, item: dict[str, Any]) -> None:
    # Chat and text completions and Messages carry `model` at the top, a Responses event in its `response`.
    response = item.get("response")
    model = item.get("model") or (response.get("model") if isinstance(response, dict) else None)
    if isinstance(model, str):
        span.set_attribute("gen_ai.response.model", model)


def _note_usage(span: Span) -> None:
    """The tokens the request's metering saw: a passthrough request makes this one call (with retries)."""
    metering = REQUEST_METERING.get()
    if metering is None:
        return
    spends = metering.by_model.values()
    span.set_attributes({"gen_ai.usage.input_tokens": sum(spend.prompt_tokens for spend in spends),
                         "gen_ai.usage.output_tokens": sum(spend.completion_tokens for spend in spends)})

