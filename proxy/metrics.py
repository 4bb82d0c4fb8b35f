"""Prometheus metrics. Names and labels are a contract: dashboards and alert rules depend on them.

Each app owns its registry (no process-global state). With several uvicorn workers the CLI sets
`PROMETHEUS_MULTIPROC_DIR`; every process then writes its values to files there and a scrape of any
worker sums them all.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.errors import ProxyError
from proxy.metering import REQUEST_METERING
from proxy.model_facts import ModelFacts, usage_tokens
from proxy.registry import Deployment

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ADMISSION_REJECTIONS = ("queue_full", "queue_timeout")
LIMITS = ("rpm", "tpm", "budget", "parallel_requests", "parallel_rlm_runs")  # proxy/limits.py
LIMIT_SCOPES = ("key", "team")
OTHER = "other"
# Requests range from milliseconds (passthrough) to half an hour (RLM runs over huge inputs).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200,
                    1800)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITERATION_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)
SANDBOX_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# name -> (type, labels); what the proxy exports, for the dashboards' and rules' tests too.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rlm_proxy_requests_total": ("counter", ("mode", "model", "status")),
    "rlm_proxy_request_duration_seconds": ("histogram", ("mode", "model")),
    "rlm_proxy_overhead_seconds": ("histogram", ("mode",)),
    "rlm_proxy_in_flight_requests": ("gauge", ("mode",)),
    "rlm_proxy_rlm_iterations": ("histogram", ("model",)),
    "rlm_proxy_rlm_subcalls_total": ("counter", ("model",)),
    "rlm_proxy_rlm_stopped_total": ("counter", ("reason",)),
    "rlm_proxy_upstream_tokens_total": ("counter", ("model", "kind")),
    "rlm_proxy_upstream_cost_usd_total": ("counter", ("model",)),
    "rlm_proxy_upstream_errors_total": ("counter", ("model", "kind")),
    "rlm_proxy_cache_requests_total": ("counter", ("result",)),
    "rlm_proxy_sandbox_executions_total": ("counter", ("outcome",)),
    "rlm_proxy_sandbox_execution_seconds": ("histogram", ()),
    "rlm_proxy_rlm_runs_running": ("gauge", ()),
    "rlm_proxy_rlm_runs_queued": ("gauge", ()),
    "rlm_proxy_admission_rejected_total": ("counter", ("reason",)),
    "rlm_proxy_spend_usd_total": ("counter", ("key", "team")),
    "rlm_proxy_spend_saved_usd_total": ("counter", ("key", "team")),
    "rlm_proxy_limit_rejected_total": ("counter", ("limit", "scope")),
    "rlm_proxy_limits_unavailable_total": ("counter", ()),
}


class Metrics:
    def __init__(self, models: Iterable[str]) -> None:
        self._models = frozenset(models)
        self._multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        # In multiprocess mode values live in files, and a scrape reads them into a fresh registry.
        self.registry = CollectorRegistry()
        owner = None if self._multiprocess_dir else self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, METRICS[name][1], registry=owner)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, METRICS[name][1], buckets=buckets, registry=owner)

        self.requests = counter("rlm_proxy_requests_total", "Chat requests by mode, model and status class.")
        self.duration = histogram("rlm_proxy_request_duration_seconds", "Time to the end of the response.",
                                  DURATION_BUCKETS)
        self.overhead = histogram("rlm_proxy_overhead_seconds",
                                  "Request time not spent waiting on the upstream model.", OVERHEAD_BUCKETS)
        self.in_flight = Gauge("rlm_proxy_in_flight_requests", "Chat requests being served.",
                               METRICS["rlm_proxy_in_flight_requests"][1], registry=owner,
                               multiprocess_mode="livesum")
        self.iterations = histogram("rlm_proxy_rlm_iterations", "Root-model iterations per RLM run.",
                                    ITERATION_BUCKETS)
        self.subcalls = counter("rlm_proxy_rlm_subcalls_total", "Sub-model calls made by RLM runs.")
        self.stopped = counter("rlm_proxy_rlm_stopped_total", "How RLM runs ended.")
        self.tokens = counter("rlm_proxy_upstream_tokens_total", "Tokens reported by the upstream.")
        self.cost = counter("rlm_proxy_upstream_cost_usd_total", "Upstream spend in US dollars.")
        self.upstream_errors = counter("rlm_proxy_upstream_errors_total", "Failed upstream calls by kind.")
        self.cache = counter("rlm_proxy_cache_requests_total", "Sub-call cache lookups by result.")
        self.sandbox = counter("rlm_proxy_sandbox_executions_total", "Code blocks run, by outcome.")
        self.sandbox_seconds = histogram("rlm_proxy_sandbox_execution_seconds",
                                         "Wall time of one code block.", SANDBOX_BUCKETS)
        self.runs_running = Gauge("rlm_proxy_rlm_runs_running", "RLM runs holding an admission slot.",
                                  registry=owner, multiprocess_mode="livesum")
        self.runs_queued = Gauge("rlm_proxy_rlm_runs_queued", "RLM runs waiting for an admission slot.",
                                 registry=owner, multiprocess_mode="livesum")
        self.admission_rejected_total = counter("rlm_proxy_admission_rejected_total",
                                                "RLM runs refused by admission control, by reason.")
        for reason in ADMISSION_REJECTIONS:  # exported at 0: alert rules need the series before a refusal
            self.admission_rejected_total.labels(reason)
        self.limit_rejected = counter("rlm_proxy_limit_rejected_total",
                                      "Requests refused by a key's or team's limit, by limit and scope.")
        for limit in LIMITS:
            for scope in LIMIT_SCOPES:
                self.limit_rejected.labels(limit, scope)
        self.limits_unavailable = counter("rlm_proxy_limits_unavailable_total",
                                          "Limit checks and charges skipped: Redis failed (fail open).")
        # Per key alias and team (never a key or its hash), at most spend.metrics_max_labels series.
        self.spend = counter("rlm_proxy_spend_usd_total",
                             "Upstream spend in US dollars by key alias and team.")
        self.spend_saved = counter("rlm_proxy_spend_saved_usd_total",
                                   "What cached calls would have cost, by key alias and team.")

    def admission_changed(self, running: int, queued: int) -> None:
        self.runs_running.set(running)
        self.runs_queued.set(queued)

    def admission_rejected(self, reason: str) -> None:
        self.admission_rejected_total.labels(reason).inc()

    def model(self, name: str) -> str:
        """Only configured names become label values: a client cannot mint new series."""
        return name if name in self._models else OTHER

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._multiprocess_dir)
        return generate_latest(registry)


class UpstreamMetrics:
    """The upstream client's observer: tokens, spend and errors of every call that really went out."""

    def __init__(self, metrics: Metrics, facts: ModelFacts) -> None:
        self._metrics = metrics
        self._facts = facts

    def on_usage(self, deployment: Deployment, usage: dict[str, Any]) -> None:
        prompt_tokens, completion_tokens = usage_tokens(usage)
        cost = self._facts.cost_usd(deployment, prompt_tokens, completion_tokens)
        label = self._metrics.model(deployment.name)
        self._metrics.tokens.labels(label, "prompt").inc(prompt_tokens)
        self._metrics.tokens.labels(label, "completion").inc(completion_tokens)
        self._metrics.cost.labels(label).inc(cost)
        metering = REQUEST_METERING.get()
        if metering is not None:
            metering.add(deployment.name, prompt_tokens, completion_tokens, cost)

    def on_error(self, deployment: Deployment, error: ProxyError) -> None:
        self._metrics.upstream_errors.labels(self._metrics.model(deployment.name), error_kind(error)).inc()


# Error kinds are a fixed set: providers' own codes would be unbounded label values.
_KIND_FOR_CODE = {"upstream_unreachable": "unreachable", "upstream_malformed_response": "malformed",
                  "upstream_auth_failed": "auth", "context_length_exceeded": "context_length",
                  "upstream_timeout": "timeout", "rate_limit_exceeded": "rate_limit"}
_KIND_FOR_STATUS = {400: "bad_request", 404: "not_found", 429: "rate_limit", 504: "timeout"}


def error_kind(error: ProxyError) -> str:
    return _KIND_FOR_CODE.get(error.code) or _KIND_FOR_STATUS.get(error.status, "server_error")


class UpstreamClock:
    """Wall time during which at least one upstream call of a request was in flight (concurrent sub-calls
    overlap: counting each would exceed the request's own duration)."""

    def __init__(self) -> None:
        self.waited_s = 0.0
        self._active = 0
        self._since = 0.0

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        if self._active == 0:
            self._since = time.perf_counter()
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self.waited_s += time.perf_counter() - self._since


# The clock of the request being served; tasks started for it inherit it.
REQUEST_CLOCK: ContextVar[UpstreamClock | None] = ContextVar("rlm_proxy_request_clock", default=None)


@contextlib.contextmanager
def upstream_wait() -> Iterator[None]:
    clock = REQUEST_CLOCK.get()
    if clock is None:
        yield
        return
    with clock.waiting():
        yield
