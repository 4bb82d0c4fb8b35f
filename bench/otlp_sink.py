"""A small OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest (protobuf, optionally
gzip), decoded and kept; GET /stats counts what arrived. For bench.passthrough's traced target, and for the
tests, which assert on the spans.

    .venv/bin/python -m bench.otlp_sink --port 4318
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: int  # opentelemetry.proto.trace.v1.trace_pb2.Span.SpanKind
    trace_id: str  # hex
    span_id: str
    parent_id: str  # "" for a root span
    start_ns: int
    end_ns: int
    status: int  # Status.StatusCode
    attributes: dict[str, Any]
    service: str


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value"))


def decoded(request: ExportTraceServiceRequest) -> Iterator[ReceivedSpan]:
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ReceivedSpan(span.name, span.kind, span.trace_id.hex(), span.span_id.hex(),
                                   span.parent_span_id.hex(), span.start_time_unix_nano,
                                   span.end_time_unix_nano, span.status.code,
                                   {a.key: _value(a.value) for a in span.attributes},
                                   resource.get("service.name", ""))


class OTLPReceiver:
    """Serves on 127.0.0.1 in a thread until `close`."""

    def __init__(self, port: int = 0) -> None:
        self.spans: list[ReceivedSpan] = []
        self.exports = 0
        self.paths: set[str] = set()
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                spans = list(decoded(ExportTraceServiceRequest.FromString(body)))
                with lock:
                    receiver.exports += 1
                    receiver.paths.add(self.path)
                    receiver.spans.extend(spans)
                self._answer("application/x-protobuf", ExportTraceServiceResponse().SerializeToString())

            def do_GET(self) -> None:
                stats = {"exports": receiver.exports, "spans": len(receiver.spans)}
                self._answer("application/json", json.dumps(stats).encode())

            def _answer(self, content_type: str, body: bytes) -> None:
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    receiver = OTLPReceiver(parser.parse_args(argv).port)
    try:
        receiver.join()
    except KeyboardInterrupt:
        receiver.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
