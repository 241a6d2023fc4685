"""OpenTelemetry traces, from the `otel` extra. The MCP SDK already opens a span per
request (`tools/call log_event`, with the tool's name); this exports them: over OTLP/HTTP
when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, to stderr when `ACTIVITYBI_TRACES=console`.
Nothing is imported unless one of them is set."""

from __future__ import annotations

import sys
from collections.abc import Callable


def setup(service: str) -> Callable[[], None] | None:
    """Installs an exporting tracer provider; returns its shutdown (which flushes)."""
    from activitybi import config

    settings = config.settings()
    endpoint = settings.otlp_endpoint
    console = settings.traces == "console"
    if not (endpoint or console):
        return None
    from activitybi import extras

    try:
        extras.require("opentelemetry.sdk.trace", "otel", "exporting traces")
    except extras.MissingExtra as e:
        print(f"activitybi: {e}", file=sys.stderr)  # traces are optional: the server still starts
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if console:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown
