"""OpenTelemetry traces of requests, RLM runs and model calls.

Imported only when `otel.endpoint` (or OTEL_EXPORTER_OTLP_ENDPOINT) is set: with no endpoint, nothing of
OpenTelemetry is imported or runs.
"""
