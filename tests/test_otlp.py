"""The OTLP/HTTP receiver as a real process (`python -m activitybi collect`), fed by the
OpenTelemetry SDK's own OTLP exporters and by hand-made JSON and gzip bodies; rows checked
in DuckDB after `activitybi upload --once`."""

from __future__ import annotations

import base64
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from activitybi.capture import facts

pytestmark = pytest.mark.slow

CUSTOMER = "ana@example.com"
RESOURCE = Resource.create(
    {"service.name": "claude-code", "user.email": "someone.else@example.com", "app.version": "2.1.0"}
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Collector:
    """`activitybi collect` (or another command that listens) in a process of its own."""

    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = ("collect",),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "ACTIVITYBI_HOME": str(home), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "activitybi", *command, "--port", str(self.port), *args],
            env=self.env,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"collect did not start: {self.proc.stderr.read()!r}") from None  # type: ignore[union-attr]
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def post(
        self, path: str, body: bytes, content_type: str, *, headers: dict[str, str] | None = None
    ) -> tuple[int, str, bytes]:
        request = urllib.request.Request(
            self.url + path,
            data=body,
            method="POST",
            headers={"Content-Type": content_type, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, r.headers["Content-Type"], r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    def upload(self) -> list[dict[str, Any]]:
        """Stops the collector (sealing its queue segment), uploads, returns the rows."""
        self.stop()
        subprocess.run(
            [sys.executable, "-m", "activitybi", "upload", "--once", "--quiet"],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        con = duckdb.connect(str(Path(self.env["ACTIVITYBI_HOME"]) / "warehouse.duckdb"), read_only=True)
        try:
            cur = con.execute(
                "SELECT activity_id, activity, customer, _source, _session_id, feature_json "
                "FROM claude_stream ORDER BY ts, activity_id"
            )
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        finally:
            con.close()
        for row in rows:
            row["feature_json"] = orjson.loads(row["feature_json"])
        return rows


@pytest.fixture
def collector(_home: Path) -> Iterator[Collector]:
    c = Collector(_home, "--customer", CUSTOMER)
    yield c
    c.stop()


def emit_claude_code_logs(endpoint: str) -> None:
    """Claude Code's events as its SDK sends them: attributes are strings."""
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint)))
    logger = provider.get_logger("com.anthropic.claude_code.events")
    common = {"session.id": "sess-1", "user.email": "someone.else@example.com"}
    records: list[dict[str, Any]] = [
        {"event.name": "user_prompt", "prompt.id": "p-1", "prompt_length": "42", "prompt": "secret text"},
        {
            "event.name": "api_request",
            "model": "claude-sonnet-4-5",
            "cost_usd": "0.0123",
            "duration_ms": "2100",
            "input_tokens": "1200",
            "output_tokens": "340",
            "cache_read_tokens": "5000",
            "cache_creation_tokens": "77",
            "request_id": "req_011",
            "query_source": "subagent",
        },
        {
            "event.name": "tool_result",
            "tool_name": "mcp__github__create_issue",
            "tool_use_id": "toolu_01",
            "success": "false",
            "error": "permission denied",
            "duration_ms": "85",
        },
        {"event.name": "api_error", "model": "claude-sonnet-4-5", "status_code": "529", "attempt": "2"},
    ]
    for i, attributes in enumerate(records):
        logger.emit(
            body=f"claude_code.{attributes['event.name']}",
            attributes={**common, **attributes, "event.sequence": str(i)},
            timestamp=1_795_000_000_000_000_000 + i * 1_000_000,
        )
    provider.shutdown()


def emit_metrics(endpoint: str, temporality: AggregationTemporality) -> None:
    """Two exports of the same counters: 1.5 then 2.0 more dollars; 100 then 50 tokens."""
    exporter = OTLPMetricExporter(endpoint=endpoint, preferred_temporality={Counter: temporality})
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    meter = provider.get_meter("com.anthropic.claude_code")
    cost = meter.create_counter("claude_code.cost.usage", unit="USD")
    tokens = meter.create_counter("claude_code.token.usage", unit="tokens")
    attrs = {"session.id": "sess-1", "model": "claude-sonnet-4-5"}
    cost.add(1.5, attrs)
    tokens.add(100, {**attrs, "type": "input"})
    assert reader.force_flush()
    time.sleep(0.01)
    cost.add(2.0, attrs)
    tokens.add(50, {**attrs, "type": "input"})
    assert reader.force_flush()
    provider.shutdown()


def emit_genai_spans(endpoint: str) -> None:
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    tracer = provider.get_tracer("an.agent.sdk")
    with tracer.start_as_current_span("chat claude-opus-4-1") as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "claude-opus-4-1",
                "gen_ai.response.id": "msg_01",
                "gen_ai.usage.input_tokens": 900,
                "gen_ai.usage.output_tokens": 120,
                "gen_ai.conversation.id": "conv-9",
            }
        )
        with tracer.start_as_current_span("execute_tool search") as tool:
            tool.set_attributes(
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "search",
                    "gen_ai.tool.call.id": "call_7",
                }
            )
            tool.set_status(Status(StatusCode.ERROR, "timed out"))
    with tracer.start_as_current_span("GET /health"):
        pass
    provider.shutdown()


def test_sdk_exporters_to_duckdb(collector: Collector) -> None:
    emit_claude_code_logs(collector.url + "/v1/logs")
    emit_claude_code_logs(collector.url + "/v1/logs")  # sent twice: one row per fact
    emit_metrics(collector.url + "/v1/metrics", AggregationTemporality.CUMULATIVE)
    emit_genai_spans(collector.url + "/v1/traces")
    rows = collector.upload()
    assert {r["customer"] for r in rows} == {CUSTOMER}  # the configured one, not user.email
    assert {r["_source"] for r in rows} == {"otel"}
    activities = sorted(r["activity"] for r in rows)
    assert activities == sorted(
        ["asked_question", "called_model", "called_tool", "otel_api_error", "called_model", "called_tool"]
        + ["recorded_metric"] * 4
    ), activities
    prompt = next(r for r in rows if r["activity"] == "asked_question")
    assert prompt["activity_id"] == facts.fact_id(CUSTOMER, "asked_question", "p-1")
    assert prompt["feature_json"] == {
        "prompt_length": 42,
        "source": "otel",
        "session_id": "sess-1",
    }  # no text: content capture is off
    model = next(r for r in rows if r["activity"] == "called_model" and r["_session_id"] == "sess-1")
    assert model["activity_id"] == facts.fact_id(CUSTOMER, "called_model", "req_011")
    f = model["feature_json"]
    assert (f["model"], f["input_tokens"], f["output_tokens"], f["cost_usd"]) == (
        "claude-sonnet-4-5",
        1200,
        340,
        0.0123,
    )
    assert (f["cache_read_input_tokens"], f["cache_creation_input_tokens"]) == (5000, 77)
    assert (f["agent"], f["request_id"], f["latency_ms"]) == ("subagent", "req_011", 2100.0)
    tool = next(r for r in rows if r["activity"] == "called_tool" and r["_session_id"] == "sess-1")
    assert tool["activity_id"] == facts.fact_id(CUSTOMER, "called_tool", "toolu_01")
    f = tool["feature_json"]
    assert (f["tool"], f["mcp_server"], f["outcome"], f["latency_ms"]) == (
        "mcp__github__create_issue",
        "github",
        "permission denied",
        85.0,
    )
    unknown = next(r for r in rows if r["activity"] == "otel_api_error")
    assert unknown["feature_json"]["attributes"]["status_code"] == "529"
    # Cumulative counters become increases: 1.5 then 2.0 dollars, 100 then 50 tokens.
    metrics = [r["feature_json"] for r in rows if r["activity"] == "recorded_metric"]
    cost = sorted(m["value"] for m in metrics if m["name"] == "claude_code.cost.usage")
    tokens = sorted(m["value"] for m in metrics if m["name"] == "claude_code.token.usage")
    assert (cost, tokens) == ([1.5, 2.0], [50, 100])
    m = next(m for m in metrics if m["name"] == "claude_code.token.usage")
    assert (m["unit"], m["type"], m["model"], m["session_id"], m["temporality"]) == (
        "tokens",
        "input",
        "claude-sonnet-4-5",
        "sess-1",
        "cumulative",
    )
    assert len(m["day"]) == 10
    chat = next(r for r in rows if r["activity"] == "called_model" and r["_session_id"] == "conv-9")
    f = chat["feature_json"]
    assert (f["model"], f["input_tokens"], f["output_tokens"], f["request_id"]) == (
        "claude-opus-4-1",
        900,
        120,
        "msg_01",
    )
    call = next(r for r in rows if r["activity"] == "called_tool" and r["_session_id"] != "sess-1")
    assert (call["feature_json"]["tool"], call["feature_json"]["outcome"]) == ("search", "timed out")
    assert call["activity_id"] == facts.fact_id(CUSTOMER, "called_tool", "call_7")


def test_delta_metrics(collector: Collector) -> None:
    emit_metrics(collector.url + "/v1/metrics", AggregationTemporality.DELTA)
    metrics = [r["feature_json"] for r in collector.upload()]
    assert sorted(m["value"] for m in metrics if m["name"] == "claude_code.cost.usage") == [1.5, 2.0]
    assert {m["temporality"] for m in metrics} == {"delta"}


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def log_request(*events: tuple[str, str]) -> logs_service_pb2.ExportLogsServiceRequest:
    """Claude Code `api_request` events, (request id, input tokens) each."""
    records = [
        logs_pb2.LogRecord(
            time_unix_nano=1_795_000_000_000_000_000,
            attributes=[
                _kv("event.name", "api_request"),
                _kv("request_id", rid),
                _kv("input_tokens", tokens),
                _kv("session.id", "s"),
            ],
            trace_id=bytes(range(16)),
            span_id=bytes(range(8)),
        )
        for rid, tokens in events
    ]
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=records)])]
    )


def otlp_json(message: Any) -> bytes:
    """OTLP/JSON: the protobuf JSON mapping, with trace and span ids in hex."""
    doc = json_format.MessageToDict(message)

    def hexify(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("traceId", "spanId", "parentSpanId"):
                    node[k] = base64.b64decode(v).hex()
                else:
                    hexify(v)
        elif isinstance(node, list):
            for item in node:
                hexify(item)

    hexify(doc)
    return orjson.dumps(doc)


def test_json_gzip_partial_success_and_errors(_home: Path) -> None:
    c = Collector(_home, "--customer", CUSTOMER, env={"ACTIVITYBI_OTLP_MAX_BYTES": "4096"})
    try:
        # JSON, both spellings of ids (OTLP hex, protobuf base64), and gzip protobuf: one row each.
        status, ctype, body = c.post("/v1/logs", otlp_json(log_request(("r1", "10"))), "application/json")
        assert (status, ctype) == (200, "application/json") and orjson.loads(body) == {}
        plain_json = json_format.MessageToJson(log_request(("r2", "20"))).encode()
        assert c.post("/v1/logs", plain_json, "application/json; charset=utf-8")[0] == 200
        packed = gzip.compress(log_request(("r3", "30"), ("r1", "10")).SerializeToString())
        status, ctype, body = c.post(
            "/v1/logs", packed, "application/x-protobuf", headers={"Content-Encoding": "gzip"}
        )
        assert (status, ctype) == (200, "application/x-protobuf")
        assert not logs_service_pb2.ExportLogsServiceResponse.FromString(body).HasField("partial_success")

        # A data point without a value is rejected and named; the others land.
        metric = metrics_pb2.Metric(
            name="claude_code.session.count",
            sum=metrics_pb2.Sum(
                aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_DELTA,
                is_monotonic=True,
                data_points=[
                    metrics_pb2.NumberDataPoint(time_unix_nano=1_795_000_000_000_000_000, as_int=1),
                    metrics_pb2.NumberDataPoint(time_unix_nano=1_795_000_001_000_000_000),
                ],
            ),
        )
        request = metrics_service_pb2.ExportMetricsServiceRequest(
            resource_metrics=[
                metrics_pb2.ResourceMetrics(scope_metrics=[metrics_pb2.ScopeMetrics(metrics=[metric])])
            ]
        )
        status, ctype, body = c.post("/v1/metrics", otlp_json(request), "application/json")
        reply = json_format.Parse(body, metrics_service_pb2.ExportMetricsServiceResponse())
        assert status == 200 and reply.partial_success.rejected_data_points == 1
        assert "without a value" in reply.partial_success.error_message

        # Traces in JSON with hex ids.
        span = trace_pb2.Span(
            trace_id=bytes(range(16)),
            span_id=bytes(range(8)),
            name="chat",
            start_time_unix_nano=1_795_000_000_000_000_000,
            end_time_unix_nano=1_795_000_000_500_000_000,
            attributes=[_kv("gen_ai.operation.name", "chat"), _kv("gen_ai.request.model", "m")],
        )
        request_t = trace_service_pb2.ExportTraceServiceRequest(
            resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[span])])]
        )
        assert c.post("/v1/traces", otlp_json(request_t), "application/json")[0] == 200

        def refused(status: int, *args: Any, **kw: Any) -> str:
            got, ctype, body = c.post(*args, **kw)
            assert got == status, (got, body)
            if ctype == "application/json":
                return str(orjson.loads(body)["message"])
            return str(status_pb2.Status.FromString(body).message)

        assert "malformed" in refused(400, "/v1/logs", b"\xff\xff\xff", "application/x-protobuf")
        assert "malformed" in refused(400, "/v1/logs", b"{not json", "application/json")
        assert "gzip" in refused(
            400, "/v1/logs", b"not gzip", "application/x-protobuf", headers={"Content-Encoding": "gzip"}
        )
        assert "Content-Type" in refused(415, "/v1/logs", b"x", "text/plain")
        assert "Content-Encoding" in refused(
            415, "/v1/logs", b"x", "application/x-protobuf", headers={"Content-Encoding": "br"}
        )
        assert "4096" in refused(413, "/v1/logs", b"\x00" * 5000, "application/x-protobuf")
        bomb = gzip.compress(b"\x00" * 100_000)
        assert "decompressed" in refused(
            413, "/v1/logs", bomb, "application/x-protobuf", headers={"Content-Encoding": "gzip"}
        )
        rows = c.upload()
    finally:
        c.stop()
    calls = [r["feature_json"] for r in rows if r["activity"] == "called_model"]
    assert sorted((f["request_id"], f.get("input_tokens")) for f in calls) == [
        ("000102030405060708090a0b0c0d0e0f:0001020304050607", None),
        ("r1", 10),
        ("r2", 20),
        ("r3", 30),
    ]
    assert [r["feature_json"]["value"] for r in rows if r["activity"] == "recorded_metric"] == [1]


def test_tokens_choose_the_customer(_home: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok-a": "alice@a.io", "tok-b": "bob@b.io"}))
    c = Collector(_home, "--tokens", str(tokens))
    try:
        body = log_request(("same-request", "5")).SerializeToString()
        assert c.post("/v1/logs", body, "application/x-protobuf")[0] == 401
        assert (
            c.post("/v1/logs", body, "application/x-protobuf", headers={"Authorization": "Bearer nope"})[0]
            == 401
        )
        for token in ("tok-a", "tok-b"):
            status = c.post(
                "/v1/logs", body, "application/x-protobuf", headers={"Authorization": f"Bearer {token}"}
            )
            assert status[0] == 200
        rows = c.upload()
    finally:
        c.stop()
    # The same request id from two customers: two rows, ids apart.
    assert sorted(r["customer"] for r in rows) == ["alice@a.io", "bob@b.io"]
    assert len({r["activity_id"] for r in rows}) == 2


def test_collect_without_a_customer_says_so(_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ACTIVITYBI_CUSTOMER"}
    done = subprocess.run(
        [sys.executable, "-m", "activitybi", "collect"],
        env={**env, "ACTIVITYBI_HOME": str(_home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "no customer" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_mounted_on_serve_http(_home: Path, tmp_path: Path) -> None:
    """`serve --http` answers OTLP too, each request as its bearer token's customer."""
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok-a": "alice@a.io"}))
    server = Collector(_home, "--tokens", str(tokens), command=("serve", "--http"))
    try:
        body = log_request(("via-serve", "7")).SerializeToString()
        assert server.post("/v1/logs", body, "application/x-protobuf")[0] == 401
        auth = {"Authorization": "Bearer tok-a"}
        assert server.post("/v1/logs", body, "application/x-protobuf", headers=auth)[0] == 200
        rows = server.upload()
    finally:
        server.stop()
    assert [(r["customer"], r["feature_json"]["input_tokens"]) for r in rows] == [("alice@a.io", 7)]
