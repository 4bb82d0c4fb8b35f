"""OpenTelemetry traces end to end: the official openai SDK sends requests (with a W3C `traceparent`) through
the real proxy (uvicorn, sandbox workers) to the mock upstream; the proxy exports over OTLP/HTTP to a real
receiver (bench.otlp_sink, in this process), which decodes the protobuf payloads."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from bench.otlp_sink import OTLPReceiver, ReceivedSpan
from proxy.mock_policy import needle_prompt
from tests.harness import MASTER_KEY, Mock, Server, StartProxy, rlm_config

KEY, VALUE = "amber-lantern", "6093417"
SERVER, CLIENT = Span.SpanKind.SPAN_KIND_SERVER, Span.SpanKind.SPAN_KIND_CLIENT
ERROR = Status.StatusCode.STATUS_CODE_ERROR


def trace_of(receiver: OTLPReceiver, trace_id: str, until: Callable[[list[ReceivedSpan]], bool],
             timeout_s: float = 20) -> list[ReceivedSpan]:
    """The spans of one trace, once `until(spans)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = [span for span in receiver.spans if span.trace_id == trace_id]
        if until(spans):
            return spans
        assert time.monotonic() < deadline, [(s.name, s.attributes) for s in spans]
        time.sleep(0.05)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    server = OTLPReceiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(mock_upstream: Mock, start_proxy: StartProxy, receiver: OTLPReceiver) -> Server:
    # The standard variables: the endpoint, and a short batch delay so that spans arrive at once.
    config = rlm_config(mock_upstream, rlm={"max_depth": 2}, otel={"service_name": "proxy-under-test"})
    config["model_list"].append({"model_name": "claude-native", "litellm_params": {  # Messages sent as is
        "model": "anthropic/mock-model", "api_base": mock_upstream.server.url, "api_key": "none"}})
    return start_proxy(config, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                    "OTEL_BSP_SCHEDULE_DELAY": "100"})


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def client(proxy: Server, header: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=120,
                         default_headers={"traceparent": header})


def children(spans: list[ReceivedSpan], parent: ReceivedSpan, name: str | None = None) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_id == parent.span_id and (name is None or s.name == name)]


def within(child: ReceivedSpan, parent: ReceivedSpan) -> bool:
    slack = 5_000_000  # 5 ms: a call's start is its end less its duration, on another clock reading
    return parent.start_ns - slack <= child.start_ns <= child.end_ns <= parent.end_ns + slack


def test_an_rlm_run_is_traced_under_the_callers_span(proxy: Server, receiver: OTLPReceiver) -> None:
    trace_id, caller_span, header = traceparent()
    prompt = needle_prompt(200_000, KEY, VALUE, depth=0.8) + " [[policy:rlm_query]]"
    raw = client(proxy, header).chat.completions.with_raw_response.create(
        model="mock", messages=[{"role": "user", "content": prompt}], extra_headers={"x-rlm-mode": "on"})
    assert raw.parse().choices[0].message.content == VALUE
    run_id = raw.headers["x-rlm-run-id"]
    spans = trace_of(receiver, trace_id, lambda got: any(s.kind == SERVER for s in got))

    (request,) = [s for s in spans if s.kind == SERVER]
    assert request.parent_id == caller_span  # the caller's trace, joined
    assert request.name == "POST /v1/chat/completions" and request.service == "proxy-under-test"
    assert request.attributes["http.route"] == "/v1/chat/completions"
    assert request.attributes["http.request.method"] == "POST"
    assert request.attributes["http.response.status_code"] == 200

    (run,) = children(spans, request, "rlm.run")
    assert run.attributes["rlm.run_id"] == run_id and run.attributes["rlm.depth"] == 1
    assert run.attributes["rlm.finish_reason"] == "stop" and run.attributes["rlm.max_depth_reached"] == 2
    assert within(run, request)
    iterations = children(spans, run, "rlm.iteration")
    nested_iterations = [s for s in spans if s.name == "rlm.iteration" and s.attributes["rlm.depth"] == 2]
    assert [i.attributes["rlm.iteration"] for i in iterations] == list(range(1, len(iterations) + 1))
    assert len(iterations) + len(nested_iterations) == run.attributes["rlm.iterations"]  # nested ones count
    for iteration in iterations:
        assert within(iteration, run)
        (root_call,) = children(spans, iteration, "chat mock")
        assert root_call.kind == CLIENT and within(root_call, iteration)
        assert root_call.attributes["gen_ai.operation.name"] == "chat"
        assert root_call.attributes["gen_ai.request.model"] == "mock"
        assert root_call.attributes["gen_ai.provider.name"] == "openai"
        assert root_call.attributes["gen_ai.usage.input_tokens"] > 0
        assert root_call.attributes["gen_ai.usage.output_tokens"] > 0
        assert root_call.attributes["rlm.call"] == "root" and root_call.attributes["rlm.cache_hit"] is False

    first_block = children(spans, iterations[0], "rlm.block")[0]
    assert first_block.attributes["rlm.block.outcome"] == "ok"
    assert first_block.attributes["rlm.block.cpu_s"] >= 0
    assert within(first_block, iterations[0])
    # The nested run that the first block's rlm_query started, with its own iterations and calls.
    (nested,) = children(spans, first_block, "rlm.run")
    assert nested.attributes["rlm.depth"] == 2 and within(nested, first_block)
    assert nested_iterations and all(i.parent_id == nested.span_id for i in nested_iterations)
    assert children(spans, nested_iterations[0], "chat mock")
    # Sub-calls hang under the block whose code made them, each with its own times.
    subcalls = [s for s in spans if s.name == "chat mock" and s.attributes["rlm.call"] == "sub"]
    assert len(subcalls) == run.attributes["rlm.subcalls"] >= 1
    blocks = {s.span_id: s for s in spans if s.name == "rlm.block"}
    for call in subcalls:
        assert call.parent_id in blocks and within(call, blocks[call.parent_id])
        assert call.attributes["gen_ai.usage.input_tokens"] > 0
    assert not [s for s in spans if s.status == ERROR]


def test_a_passthrough_request_gets_a_request_span_and_a_model_call_span(proxy: Server,
                                                                         receiver: OTLPReceiver) -> None:
    for stream in (False, True):
        trace_id, caller_span, header = traceparent()
        answer = client(proxy, header).chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "Say hi."}], stream=stream)
        if stream:
            list(answer)  # type: ignore[arg-type]
        spans = trace_of(receiver, trace_id, lambda got: len(got) == 2)
        (request,) = [s for s in spans if s.kind == SERVER]
        (call,) = children(spans, request)
        assert request.parent_id == caller_span
        assert call.name == "chat mock" and call.kind == CLIENT and within(call, request)
        assert call.attributes["gen_ai.provider.name"] == "openai"
        assert call.attributes["gen_ai.response.model"] == "mock-model"
        assert call.attributes["gen_ai.usage.input_tokens"] > 0
        assert call.attributes["gen_ai.usage.output_tokens"] > 0


def test_natively_forwarded_calls_are_named_by_what_they_do(proxy: Server, receiver: OTLPReceiver) -> None:
    trace_id, _, header = traceparent()
    headers = {"x-api-key": MASTER_KEY, "traceparent": header}
    body = {"model": "claude-native", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi."}]}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        assert httpx.post(proxy.url + path, json=body, headers=headers, timeout=30).status_code == 200
    spans = trace_of(receiver, trace_id, lambda got: len(got) == 4)
    calls = {s.name: s for s in spans if s.kind == CLIENT}
    assert set(calls) == {"chat claude-native", "count_tokens claude-native"}
    assert {s.attributes["gen_ai.provider.name"] for s in calls.values()} == {"anthropic"}
    assert calls["chat claude-native"].attributes["gen_ai.usage.output_tokens"] > 0


def test_errors_set_the_span_status_and_untraced_callers_start_a_trace(proxy: Server,
                                                                      receiver: OTLPReceiver) -> None:
    plain = openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0)
    failing = f"[[mock:status=500 times=10 id={secrets.token_hex(4)}]] Hi."
    with pytest.raises(openai.APIStatusError) as refused:
        plain.chat.completions.create(model="mock", messages=[{"role": "user", "content": failing}])
    assert refused.value.status_code == 502
    deadline = time.monotonic() + 20
    while not (failed := [s for s in receiver.spans if s.name == "chat mock" and s.status == ERROR]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (call,) = failed
    assert call.attributes["error.type"] == refused.value.body["code"]  # type: ignore[index]
    spans = trace_of(receiver, call.trace_id, lambda got: len(got) == 2)
    (request,) = [s for s in spans if s.span_id == call.parent_id]
    assert request.parent_id == ""  # no traceparent: the proxy's span starts the trace
    assert request.attributes["http.response.status_code"] == 502 and request.status == ERROR
    assert not [s for s in receiver.spans if s.attributes.get("url.path") in ("/readyz", "/livez")]
    assert receiver.paths == {"/v1/traces"}


def test_spans_still_buffered_are_exported_when_the_proxy_stops(mock_upstream: Mock, start_proxy: StartProxy,
                                                                 receiver: OTLPReceiver) -> None:
    proxy = start_proxy(rlm_config(mock_upstream, otel={"endpoint": receiver.url}),
                        env={"OTEL_BSP_SCHEDULE_DELAY": "600000"})  # nothing leaves before the shutdown
    trace_id, _, header = traceparent()
    client(proxy, header).chat.completions.create(model="mock", messages=[{"role": "user", "content": "Hi."}])
    time.sleep(0.5)
    assert not [s for s in receiver.spans if s.trace_id == trace_id]
    proxy.stop()
    assert len(trace_of(receiver, trace_id, lambda got: len(got) == 2, timeout_s=1)) == 2
