"""The app's tracing: a tracer provider built from `otel` settings (held by the app, never set globally),
exporting over OTLP/HTTP in batches, and what makes the spans of requests, runs and passthrough calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from starlette.types import Scope

from proxy.balancer import Balancer
from proxy.config import OTelSettings, UpstreamSettings
from proxy.errors import ProxyError
from proxy.registry import ModelGroup, ModelRegistry
from proxy.rlm.engine import RunRequest
from proxy.rlm.events import Event
from proxy.telemetry.genai import provider_name
from proxy.telemetry.run_spans import RunSpans, traced_run
from proxy.telemetry.upstream_spans import TracedUpstream
from proxy.upstream import Upstream, UpstreamObserver

TRACES_PATH = "/v1/traces"  # OTLP/HTTP's, under the collector's base URL


def otlp_exporter(settings: OTelSettings) -> OTLPSpanExporter:
    assert settings.endpoint is not None
    headers = {name: value.get_secret_value() for name, value in settings.headers.items()}
    return OTLPSpanExporter(endpoint=settings.endpoint.rstrip("/") + TRACES_PATH, headers=headers or None)


class Tracing:
    def __init__(self, settings: OTelSettings, registry: ModelRegistry, exporter: SpanExporter) -> None:
        # The caller's sampling decision stands; traces the proxy starts itself are sampled at the ratio.
        self.provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.service_name}),
                                       sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("rlm-proxy")
        self._registry = registry
        self._exclude_paths = frozenset(settings.exclude_paths)

    def fastapi_telemetry(self) -> TelemetryConfig:
        """FastAPI's own request spans (SERVER kind, HTTP conventions, the caller's `traceparent` as their
        parent, current while the request is served), on this provider; no metrics or logs (the proxy has
        Prometheus metrics), no spans of FastAPI's internals."""
        return {"tracer_provider": self.provider, "metrics": False, "logs": False, "operation_spans": False,
                "auto_configure": False, "exclude": self._excluded}

    def _excluded(self, scope: Scope) -> bool:
        return scope.get("path") in self._exclude_paths

    def upstream(self, settings: UpstreamSettings, observer: UpstreamObserver, *, balancer: Balancer,
                 resolve: Callable[[str], ModelGroup]) -> Upstream:
        """The upstream client, its passthrough calls traced."""
        return TracedUpstream(self.tracer, settings, observer, balancer=balancer, resolve=resolve)

    def run_events(self, events: AsyncIterator[Event], run: RunRequest) -> AsyncIterator[Event]:
        """The run's events with its spans, under the span current now (the request's)."""
        return traced_run(RunSpans(self.tracer, run, context.get_current(), self._provider_of), events)

    def _provider_of(self, model: str) -> str | None:
        try:
            return provider_name(self._registry.resolve(model))
        except ProxyError:
            return None

    def shutdown(self) -> None:
        """Exports what is still buffered, then stops (blocking: at most the exporter's timeout)."""
        self.provider.shutdown()
