"""The receiver's logs and traces mapping (done by the Rust core, `Queue.append_otlp`)
against rows computed here, independently, from the rules the README states: generated
records with every attribute type, `event.timestamp` forms, bodies, unknown events,
repeated keys, in protobuf and in JSON. Both sides' events go through a real queue, so the
lines are compared byte for byte."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from activitybi import Queue, QueueReader, Redactor
from activitybi.capture import facts
from activitybi.capture.otlp import Receiver, SeriesState

CUSTOMER = "ana@example.com"
T0 = 1_795_000_000_123_456_789
EPOCH = dt.datetime(1970, 1, 1)

# --- records ---------------------------------------------------------------------------------

VALUES: list[Any] = [
    "1200",
    " 12.5 ",
    "1_000",
    "abc",
    "",
    "1e3",
    "nan",
    "true",
    "False",
    'naïve ✓ "q" \\ \n',
    "mcp__github__create_issue",
    "mcp__solo",
    "subagent",
    7,
    0,
    -3,
    2.75,
    -0.5,
    1e16,
    1e-5,
    0.0,
    True,
    False,
    None,
    b"\x12\x34",
    b"",
    ["a", 1, 2.5, None, {"k": "v"}, b"\x01"],
    [],
    {"x": 1, "y": [True, "it's"], "z": {"deep": 1e-7}},
    {},
]
STAMPS: list[Any] = [
    "2026-01-15T10:00:00.123Z",
    "2026-01-15T10:00:00.123456789+02:00",
    "2026-01-15 10:00",
    "20260115T100000",
    "2026-W03-4",
    "2026-01-15T25:00:00",
    "2026-01-15T10:00:00.5-05:30",
    "not a time",
    1_795_000_000,
    "",
]
NAMES: list[Any] = [
    "user_prompt",
    "api_request",
    "tool_result",
    "claude_code.api_request",
    "claude_code.tool_result",
    "claude_code.user_prompt",
    "api_error",
    "MCP Server.Connection!",
    "***",
    "claude_code.",
    "",
    None,
    5,
]
KEYS = {
    "user_prompt": ["prompt_length", "prompt"],
    "api_request": [
        "model",
        "cost_usd",
        "duration_ms",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_creation_tokens",
        "request_id",
        "query_source",
        "speed",
        "effort",
    ],
    "tool_result": [
        "tool_name",
        "tool_use_id",
        "success",
        "error",
        "duration_ms",
        "decision_type",
        "decision_source",
        "tool_result_size_bytes",
    ],
    "": ["status_code", "attempt", "user.email", "note"],
}
SPAN_KEYS = [
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.response.id",
    "gen_ai.conversation.id",
    "session.id",
    "gen_ai.agent.name",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.tool.name",
    "gen_ai.tool.call.id",
    "error.type",
]


def any_value(v: Any) -> AnyValue:
    if v is None:
        return AnyValue()
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[kv(k, x) for k, x in v.items()]))
    return AnyValue(string_value=v)


def kv(key: str, v: Any) -> KeyValue:
    return KeyValue(key=key, value=any_value(v))


def log_request(rng: random.Random, n: int) -> logs_service_pb2.ExportLogsServiceRequest:
    resources = []
    for r in range(2):
        records = []
        for i in range(n):
            name = rng.choice(NAMES)
            kind = name.removeprefix("claude_code.") if isinstance(name, str) else ""
            attrs: list[KeyValue] = []
            if name is not None:
                attrs.append(kv("event.name", name))
            for key in KEYS.get(kind, KEYS[""]):
                if rng.random() < 0.7:
                    attrs.append(kv(key, rng.choice(VALUES)))
            if rng.random() < 0.8:
                attrs.append(kv("session.id", rng.choice(["sess-1", "", 42, None])))
            if rng.random() < 0.7:
                attrs.append(kv("prompt.id", rng.choice([f"p-{i}", "", 3, 1.5, None, ["x"]])))
            attrs.append(kv("event.sequence", rng.choice([i, str(i), 2.5])))
            if rng.random() < 0.6:
                attrs.append(kv("event.timestamp", rng.choice(STAMPS)))
            if attrs and rng.random() < 0.2:  # a repeated key: the last value counts
                attrs.append(kv(attrs[-1].key, rng.choice(VALUES)))
            rng.shuffle(attrs)
            nanos = T0 + (r * n + i) * 1_000_003_001
            record = logs_pb2.LogRecord(
                time_unix_nano=0 if i % 5 == 0 else nanos,
                observed_time_unix_nano=nanos,
                attributes=attrs,
                event_name=rng.choice(["", "claude_code.tool_result", "api_error"]),
            )
            if rng.random() < 0.5:
                record.body.CopyFrom(any_value(rng.choice(["claude_code.api_request", "hello", 3, None])))
            records.append(record)
        resource = Resource(attributes=[kv("service.name", "claude-code"), kv("session.id", f"res-{r}")])
        resources.append(
            logs_pb2.ResourceLogs(resource=resource, scope_logs=[logs_pb2.ScopeLogs(log_records=records)])
        )
    return logs_service_pb2.ExportLogsServiceRequest(resource_logs=resources)


def span_request(rng: random.Random, n: int) -> trace_service_pb2.ExportTraceServiceRequest:
    spans = []
    for i in range(n):
        attrs = [
            kv("gen_ai.operation.name", rng.choice(["chat", "text_completion", "execute_tool", "embeddings"]))
        ]
        attrs += [kv(k, rng.choice(VALUES)) for k in SPAN_KEYS if rng.random() < 0.4]
        start = T0 + i * 7_000_001
        span = trace_pb2.Span(
            trace_id=rng.randbytes(16),
            span_id=rng.randbytes(8),
            name=rng.choice(["chat", "", "execute_tool search"]),
            start_time_unix_nano=start,
            end_time_unix_nano=start + rng.choice([62_500, 5_000_000, 1_234_567_891, -5]),
            attributes=attrs,
        )
        if rng.random() < 0.5:
            span.status.code = rng.choice(
                [
                    trace_pb2.Status.STATUS_CODE_UNSET,
                    trace_pb2.Status.STATUS_CODE_OK,
                    trace_pb2.Status.STATUS_CODE_ERROR,
                ]
            )
            span.status.message = rng.choice(["", "timed out"])
        spans.append(span)
    resource = Resource(attributes=[kv("session.id", rng.choice(["res-s", 9]))])
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(resource=resource, scope_spans=[trace_pb2.ScopeSpans(spans=spans)])
        ]
    )


# --- the rules, written again from the README -----------------------------------------------


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "bytes_value":
        return v.bytes_value.hex()
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return as_dict(v.kvlist_value.values)
    return getattr(v, kind)


def as_dict(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in kvs:
        out[item.key] = value(item.value)
    return out


def text(x: Any) -> str | None:
    return None if x is None or x == "" else str(x)


def to_int(x: Any) -> int | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int):
        return x
    try:
        return int(float(x))
    except (TypeError, ValueError, OverflowError):
        return None


def to_float(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def when(nanos: int, stamp: Any) -> dt.datetime:
    if isinstance(stamp, str):
        try:
            t = dt.datetime.fromisoformat(stamp)
            return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t
        except ValueError:
            pass
    return EPOCH + dt.timedelta(microseconds=nanos // 1000)


def digest(*parts: Any) -> str:
    return hashlib.blake2b(orjson.dumps(parts, default=str), digest_size=12).hexdigest()


def expected_log(record: Any, resource: dict[str, Any], content: bool) -> dict[str, Any]:
    a = as_dict(record.attributes)
    name = a.get("event.name") or record.event_name
    if not isinstance(name, str) or not name:
        body = value(record.body) if record.HasField("body") else None
        name = body if isinstance(body, str) and body else "event"
    name = name.removeprefix("claude_code.")
    nanos = record.time_unix_nano or record.observed_time_unix_nano
    stamp = a.get("event.timestamp")
    t = when(nanos, stamp)
    ts = facts.iso_ts(t)
    session = text(a["session.id"] if "session.id" in a else resource.get("session.id"))
    prompt_id = a.get("prompt.id")
    record_key = digest(session, prompt_id, a.get("event.sequence"), name, t.isoformat())
    common: dict[str, Any] = {"customer": CUSTOMER, "source": "otel", "ts": ts, "session_id": session}
    if name == "user_prompt":
        return facts.asked_question(
            **common,
            prompt_id=text(prompt_id) or record_key,
            prompt_length=to_int(a.get("prompt_length")),
            prompt=text(a.get("prompt")) if content else None,
        )
    if name == "api_request":
        return facts.called_model(
            **common,
            request_id=text(a.get("request_id")) or record_key,
            model=text(a.get("model")),
            input_tokens=to_int(a.get("input_tokens")),
            output_tokens=to_int(a.get("output_tokens")),
            cache_creation_input_tokens=to_int(a.get("cache_creation_tokens")),
            cache_read_input_tokens=to_int(a.get("cache_read_tokens")),
            cost_usd=to_float(a.get("cost_usd")),
            agent="subagent" if text(a.get("query_source")) == "subagent" else None,
            latency_ms=to_float(a.get("duration_ms")),
            query_source=text(a.get("query_source")),
            speed=text(a.get("speed")),
            effort=text(a.get("effort")),
            prompt_id=text(prompt_id),
        )
    if name == "tool_result":
        tool = text(a.get("tool_name"))
        success = a.get("success")
        parts = tool.split("__") if tool else []
        return facts.called_tool(
            **common,
            tool_use_id=text(a.get("tool_use_id")) or record_key,
            tool=tool,
            outcome="ok"
            if success is True or str(success).lower() == "true"
            else text(a.get("error")) or "error",
            latency_ms=to_float(a.get("duration_ms")),
            mcp_server=parts[1] if tool and tool.startswith("mcp__") and len(parts) >= 3 else None,
            decision_type=text(a.get("decision_type")),
            decision_source=text(a.get("decision_source")),
            tool_result_size_bytes=to_int(a.get("tool_result_size_bytes")),
            prompt_id=text(prompt_id),
        )
    words = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:80] or "event"
    activity = f"otel_{words}"
    return facts.event(
        activity,
        activity_id=facts.fact_id(CUSTOMER, activity, record_key),
        **common,
        features={"event_name": name, "attributes": a},
    )


def expected_span(span: Any, resource: dict[str, Any]) -> dict[str, Any] | None:
    a = as_dict(span.attributes)
    operation = a.get("gen_ai.operation.name")
    if operation not in ("chat", "text_completion", "generate_content", "execute_tool"):
        return None
    latency = round(max(0, span.end_time_unix_nano - span.start_time_unix_nano) / 1e6, 3)
    span_key = f"{span.trace_id.hex()}:{span.span_id.hex()}"
    common: dict[str, Any] = {
        "customer": CUSTOMER,
        "source": "otel",
        "ts": facts.iso_ts(when(span.start_time_unix_nano, None)),
        "session_id": text(
            a.get("gen_ai.conversation.id") or a.get("session.id") or resource.get("session.id")
        ),
        "latency_ms": latency,
    }
    if operation != "execute_tool":
        return facts.called_model(
            **common,
            request_id=text(a.get("gen_ai.response.id")) or span_key,
            model=text(a.get("gen_ai.response.model") or a.get("gen_ai.request.model")),
            input_tokens=to_int(a.get("gen_ai.usage.input_tokens")),
            output_tokens=to_int(a.get("gen_ai.usage.output_tokens")),
            cache_creation_input_tokens=to_int(
                a.get("gen_ai.usage.cache_creation.input_tokens")
                or a.get("gen_ai.usage.cache_creation_input_tokens")
            ),
            cache_read_input_tokens=to_int(
                a.get("gen_ai.usage.cache_read.input_tokens") or a.get("gen_ai.usage.cache_read_input_tokens")
            ),
            agent=text(a.get("gen_ai.agent.name")),
            provider=text(a.get("gen_ai.provider.name") or a.get("gen_ai.system")),
        )
    failed = span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    return facts.called_tool(
        **common,
        tool_use_id=text(a.get("gen_ai.tool.call.id")) or span_key,
        tool=text(a.get("gen_ai.tool.name")) or span.name,
        outcome=(text(span.status.message) or text(a.get("error.type")) or "error") if failed else "ok",
        agent=text(a.get("gen_ai.agent.name")),
    )


def expected_events(request: Any, content: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
        for rl in request.resource_logs:
            resource = as_dict(rl.resource.attributes)
            out += [expected_log(r, resource, content) for sl in rl.scope_logs for r in sl.log_records]
    else:
        for rs in request.resource_spans:
            resource = as_dict(rs.resource.attributes)
            out += [e for ss in rs.scope_spans for s in ss.spans if (e := expected_span(s, resource))]
    return out


# --- the comparison --------------------------------------------------------------------------


def lines(queue_dir: Path) -> list[bytes]:
    with QueueReader(str(queue_dir)) as reader:
        return reader.read(max_lines=1_000_000)[0]


def received(tmp_path: Path, name: str, bodies: list[tuple[str, bytes, str]], content: bool) -> list[bytes]:
    queue = Queue(str(tmp_path / name))
    receiver = Receiver(lambda: queue, max_bytes=64 << 20, capture_content=content, series=SeriesState(None))
    for path, body, kind in bodies:
        reply = receiver.export(path, body, kind, "", CUSTOMER)
        assert reply.status == 200, reply.body
    queue.close()
    return lines(tmp_path / name)


def reference(tmp_path: Path, name: str, events: list[dict[str, Any]]) -> list[bytes]:
    with Queue(str(tmp_path / name)) as queue:
        queue.append_many(events)
    return lines(tmp_path / name)


@pytest.mark.parametrize("content", [False, True])
def test_rows_match_the_rules(tmp_path: Path, content: bool) -> None:
    rng = random.Random(12 + content)
    requests: list[tuple[str, Any]] = [("/v1/logs", log_request(rng, 150)) for _ in range(3)]
    requests += [("/v1/traces", span_request(rng, 150)) for _ in range(3)]
    want: list[dict[str, Any]] = []
    bodies = []
    for path, request in requests:
        want += expected_events(request, content)
        bodies.append((path, request.SerializeToString(), "application/x-protobuf"))
    expected = reference(tmp_path, "reference", want)
    got = received(tmp_path, "protobuf", bodies, content)
    assert len(got) == len(expected) > 500
    for g, e in zip(got, expected, strict=True):
        assert g == e
    # The same requests as JSON give the same lines; sent again, the same ids.
    as_json = [(path, json_format.MessageToJson(r).encode(), "application/json") for path, r in requests]
    assert received(tmp_path, "json", as_json, content) == expected
    activities = {orjson.loads(line)["activity"] for line in got}
    assert {"asked_question", "called_model", "called_tool", "otel_api_error", "otel_event"} <= activities


def test_malformed_bodies_are_refused_and_write_nothing(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "q"))
    receiver = Receiver(lambda: queue, max_bytes=1 << 20, capture_content=False, series=SeriesState(None))
    good = log_request(random.Random(1), 3).SerializeToString()

    def field(number: int, payload: bytes) -> bytes:  # a length-delimited field
        return bytes([number << 3 | 2, len(payload)]) + payload

    # An attribute whose string value is not UTF-8 (protobuf's own classes refuse to build one).
    attribute = field(1, b"event.name") + field(2, field(1, b"\xff"))
    raw = field(1, field(2, field(2, field(6, attribute))))
    for path, body in (
        ("/v1/logs", b"\xff\xff\xff"),
        ("/v1/traces", b"\x0a\x05\x0a\x03"),
        ("/v1/logs", good[:-3]),
        ("/v1/logs", raw),
    ):
        reply = receiver.export(path, body, "application/x-protobuf", "", CUSTOMER)
        assert reply.status == 400, body
        assert status_pb2.Status.FromString(reply.body).message.startswith("malformed")
    queue.close()
    assert lines(tmp_path / "q") == []


def test_oversized_events_are_rejected_alone_and_lines_are_redacted(tmp_path: Path) -> None:
    """The same checks and redaction as every append: an event over the cap is named in the
    partial success, the others land, and the redactor sees every line."""
    redactor = Redactor("", b"k" * 32)
    queue = Queue(str(tmp_path / "q"), max_event_bytes=2048, redactor=redactor)
    receiver = Receiver(lambda: queue, max_bytes=1 << 20, capture_content=False, series=SeriesState(None))
    records = [
        logs_pb2.LogRecord(
            time_unix_nano=T0,
            attributes=[kv("event.name", "api_error"), kv("event.sequence", i), kv("note", note)],
        )
        for i, note in enumerate(["mail bob@example.com", "x" * 4000, "fine"])
    ]
    request = logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=records)])]
    )
    reply = receiver.export("/v1/logs", request.SerializeToString(), "application/x-protobuf", "", CUSTOMER)
    partial = logs_service_pb2.ExportLogsServiceResponse.FromString(reply.body).partial_success
    assert reply.status == 200 and partial.rejected_log_records == 1
    assert (
        partial.error_message.startswith("otel_api_error: event is")
        and "2048-byte cap" in partial.error_message
    )
    queue.close()
    got = lines(tmp_path / "q")
    want = [orjson.loads(redactor.redact(orjson.dumps(e).decode())) for e in expected_events(request, False)]
    assert [orjson.loads(line) for line in got] == [want[0], want[2]]
    assert b"bob@example.com" not in got[0] and CUSTOMER.encode() in got[0]
