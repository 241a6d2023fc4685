"""An OTLP/HTTP receiver: Claude Code's OpenTelemetry logs and metrics, and GenAI spans from
any agent, become stream events in the durable queue.

`POST /v1/logs`, `/v1/metrics`, `/v1/traces` take protobuf (`application/x-protobuf`) or
the protobuf JSON mapping (`application/json`, trace and span ids in hex as OTLP says),
gzip or not. Answers follow the OTLP specification: 200 with the `Export…ServiceResponse`
(`partial_success` counting what was rejected, and why), 400 for a malformed body, 413 over
`ACTIVITYBI_OTLP_MAX_BYTES`, 415 for another content type or encoding, 401 without a valid
bearer token where tokens are configured, 503 with `Retry-After` when the queue is full;
errors carry a `google.rpc.Status`. The reply is in the request's content type.

The mapping (also in the README). Logs and traces are decoded and mapped by the Rust core
(`rust/otlp.rs`, through `Queue.append_otlp`); metrics, which keep state per series, here.

- log events by `event.name`: `user_prompt` → `asked_question`; `api_request` →
  `called_model`; `tool_result` → `called_tool`; any other → `otel_<name>` (the name in
  lower case, other characters as `_`) with all the record's attributes in feature_json.
- metrics → `recorded_metric`, one per data point: feature_json `name`, `value`, `unit`,
  `day` (UTC), `temporality`, `model`, `type`, `session_id` and the point's other
  `attributes`. `value` is always the increase over the point's interval: a cumulative
  series is turned into deltas against its previous point, kept per series in
  `Home.otlp_series` (a new series, a new start time or a smaller value is a reset: the
  value counts from zero; a point that adds nothing is not recorded). Gauges keep their
  value; histograms record `value` = sum and `count` as sent.
- spans with `gen_ai.operation.name` `chat` (or `text_completion`, `generate_content`) →
  `called_model`, `execute_tool` → `called_tool`; other spans are not recorded.

Every event's activity_id is `facts.fact_id` of the customer and the source's key (the
Rust core's `fact_id` is byte-identical), so a re-sent export adds nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from activitybi import Queue, QueueFull, config
from activitybi._core import MalformedBody
from activitybi.capture import facts

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
RECORDED_METRIC = "recorded_metric"
PATHS = ("/v1/logs", "/v1/metrics", "/v1/traces")
_UTC0 = dt.datetime(1970, 1, 1)
_HEX_ID = re.compile(r"^(?:[0-9a-fA-F]{16}|[0-9a-fA-F]{32})$")
_IDENTITY = frozenset(
    {
        "session.id",
        "user.id",
        "user.email",
        "user.account_uuid",
        "organization.id",
        "app.version",
        "terminal.type",
    }
)
"""Attributes Claude Code puts on every metric point: not part of a metric's breakdown."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class OtlpError(Exception):
    """A request the receiver refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """What one export request becomes: events, and the records rejected with a reason."""

    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < 5:
            self.reasons.append(reason)


# --- the wire -------------------------------------------------------------------------------


def body_bytes(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """The request body without its Content-Encoding, at most `max_bytes` either way."""
    if len(body) > max_bytes:
        raise OtlpError(413, f"request body over {max_bytes} bytes")
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise OtlpError(415, f"unsupported Content-Encoding {encoding!r} (gzip or none)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise OtlpError(400, f"bad gzip body: {e}") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise OtlpError(413, f"request body over {max_bytes} bytes once decompressed")
    if not inflater.eof:
        raise OtlpError(400, "bad gzip body: truncated")
    return out


def _hex_ids(node: Any) -> None:
    """OTLP/JSON spells trace and span ids in hex; the protobuf JSON mapping, in base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"):
                if isinstance(value, str) and _HEX_ID.match(value):
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            elif isinstance(value, dict | list):
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                _hex_ids(item)


def parse(message: type[Message], body: bytes, content_type: str) -> Message:
    """The request message, or `OtlpError(400)`; unknown fields are ignored (OTLP says so)."""
    request = message()
    try:
        if content_type == PROTOBUF:
            request.ParseFromString(body)
        else:
            document = orjson.loads(body)
            if not isinstance(document, dict):
                raise OtlpError(400, "the JSON body is not an object")
            _hex_ids(document)
            json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (DecodeError, orjson.JSONDecodeError, json_format.ParseError, ValueError, TypeError) as e:
        raise OtlpError(400, f"malformed {content_type} body: {str(e)[:200]}") from None
    return request


def media_type(header: str) -> str:
    return header.partition(";")[0].strip().lower()


def encode(message: Message, content_type: str) -> bytes:
    if content_type == JSON:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()


def error_reply(status: int, message: str, content_type: str) -> Reply:
    content_type = content_type if content_type in (PROTOBUF, JSON) else PROTOBUF
    body = encode(status_pb2.Status(code=_RPC_CODES.get(status, 2), message=message), content_type)
    headers = [(b"retry-after", b"1")] if status == 503 else []
    return Reply(status, body, content_type, headers)


_RESPONSES: dict[str, tuple[type[Message], str]] = {
    "/v1/logs": (logs_service_pb2.ExportLogsServiceResponse, "rejected_log_records"),
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceResponse, "rejected_data_points"),
    "/v1/traces": (trace_service_pb2.ExportTraceServiceResponse, "rejected_spans"),
}

_RPC_CODES = {400: 3, 401: 16, 413: 8, 415: 3, 503: 14}
"""HTTP status → google.rpc.Code: INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED,
UNAVAILABLE (UNKNOWN otherwise)."""


# --- values ---------------------------------------------------------------------------------


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return None


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:  # strings first: Claude Code sends nearly every attribute as one
        v = kv.value
        out[kv.key] = v.string_value if v.WhichOneof("value") == "string_value" else _value(v)
    return out


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _ts(nanos: int) -> dt.datetime:
    """A point's time (now when it has none)."""
    if nanos <= 0:
        return dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return _UTC0 + dt.timedelta(microseconds=nanos // 1000)


def _digest(*parts: Any) -> str:
    return hashlib.blake2b(orjson.dumps(parts, default=str), digest_size=12).hexdigest()


# --- metrics --------------------------------------------------------------------------------


class SeriesState:
    """The last point of each cumulative series, so each point becomes its increase; kept
    in a small JSON file (0600) that survives restarts. One receiver per home owns it. A
    series silent for `SERIES_TTL_NS` is forgotten (Claude Code starts new series with each
    session), so the file stays small."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.series: dict[str, list[float]] = {}
        self.changed = False
        if path is not None and path.exists():
            try:
                loaded = orjson.loads(path.read_bytes())
                self.series = loaded if isinstance(loaded, dict) else {}
            except orjson.JSONDecodeError:
                self.series = {}

    def delta(self, key: str, start_ns: int, time_ns: int, value: float) -> float | None:
        """The increase since the series' previous point; None for a point not newer than it."""
        last = self.series.get(key)
        if last is not None and last[0] == start_ns and time_ns <= last[1]:
            return None
        self.series[key] = [start_ns, time_ns, value]
        self.changed = True
        if last is None or last[0] != start_ns or value < last[2]:
            return value
        return value - last[2]

    def save(self, now_ns: int | None = None) -> None:
        if self.path is None or not self.changed:
            return
        horizon = (time.time_ns() if now_ns is None else now_ns) - SERIES_TTL_NS
        self.series = {k: v for k, v in self.series.items() if v[1] >= horizon}
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(self.series))
        os.replace(tmp, self.path)
        self.changed = False


SERIES_TTL_NS = 7 * 24 * 3600 * 10**9


def _point_value(point: Any) -> float | None:
    kind = point.WhichOneof("value")
    if kind == "as_int":
        return float(point.as_int)
    if kind == "as_double":
        return float(point.as_double)
    return None


_TEMPORALITY: dict[int, str] = {
    metrics_pb2.AGGREGATION_TEMPORALITY_DELTA: "delta",
    metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE: "cumulative",
}


def _metric_event(
    customer: str,
    metric: Any,
    point: Any,
    attrs: Mapping[str, Any],
    resource: Mapping[str, Any],
    series: str,
    temporality: str,
    value: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    session = _text(attrs.get("session.id", resource.get("session.id")))
    ts = _ts(point.time_unix_nano)
    breakdown = {k: v for k, v in attrs.items() if k not in _IDENTITY and k not in ("model", "type")}
    return facts.event(
        RECORDED_METRIC,
        activity_id=facts.fact_id(customer, RECORDED_METRIC, series, str(point.time_unix_nano)),
        customer=customer,
        source="otel",
        ts=ts,
        session_id=session,
        features={
            "name": metric.name,
            "value": int(value) if value.is_integer() else value,
            "unit": metric.unit or None,
            "day": ts.date().isoformat(),
            "temporality": temporality,
            "model": _text(attrs.get("model")),
            "type": _text(attrs.get("type")),
            "attributes": breakdown or None,
            **extra,
        },
    )


def metric_events(request: Any, customer: str, state: SeriesState) -> Batch:
    batch = Batch()
    with state.lock:
        for resource_metrics in request.resource_metrics:
            resource = attributes(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    _metric(batch, customer, metric, resource, state)
        state.save()
    return batch


def _metric(
    batch: Batch, customer: str, metric: Any, resource: Mapping[str, Any], state: SeriesState
) -> None:
    kind = metric.WhichOneof("data")
    if kind in ("sum", "gauge"):
        data = getattr(metric, kind)
        temporality = "gauge" if kind == "gauge" else _TEMPORALITY.get(data.aggregation_temporality)
        if temporality is None:
            batch.reject(f"{metric.name}: no aggregation temporality")
            return
        for point in data.data_points:
            value = _point_value(point)
            if value is None:
                batch.reject(f"{metric.name}: a data point without a value")
                continue
            attrs = attributes(point.attributes)
            series = _digest(customer, metric.name, sorted(attrs.items()), sorted(resource.items()))
            if temporality == "cumulative":
                delta = state.delta(series, point.start_time_unix_nano, point.time_unix_nano, value)
                if not delta:  # an old point, or nothing new since the previous one
                    continue
                value = delta
            batch.events.append(
                _metric_event(customer, metric, point, attrs, resource, series, temporality, value, {})
            )
    elif kind in ("histogram", "exponential_histogram", "summary"):
        data = getattr(metric, kind)
        temporality = _TEMPORALITY.get(getattr(data, "aggregation_temporality", 0), "cumulative")
        for point in data.data_points:
            attrs = attributes(point.attributes)
            series = _digest(customer, metric.name, sorted(attrs.items()), sorted(resource.items()))
            batch.events.append(
                _metric_event(
                    customer,
                    metric,
                    point,
                    attrs,
                    resource,
                    series,
                    temporality,
                    point.sum,
                    {"count": point.count},
                )
            )
    else:
        batch.reject(f"{metric.name}: no data")


# --- the receiver ---------------------------------------------------------------------------


class Receiver:
    """Turns one export request into queue events and its reply. Thread-safe; blocking
    (decoding and the queue): an ASGI front runs it in a worker thread. `queue` gives the
    queue to write to (the server's writer reopens its queue after a failure)."""

    def __init__(
        self,
        queue: Callable[[], Queue],
        *,
        max_bytes: int | None = None,
        capture_content: bool | None = None,
        series: SeriesState | None = None,
    ) -> None:
        settings = config.settings()
        self.queue = queue
        self.max_bytes = settings.otlp_max_bytes if max_bytes is None else max_bytes
        self.capture_content = settings.capture_content if capture_content is None else capture_content
        self.series = series if series is not None else SeriesState(config.Home.current().otlp_series)

    def export(self, path: str, body: bytes, content_type: str, encoding: str, customer: str) -> Reply:
        kind = media_type(content_type)
        if kind not in (PROTOBUF, JSON):
            return error_reply(415, f"unsupported Content-Type {kind!r} ({PROTOBUF} or {JSON})", kind)
        try:
            raw = body_bytes(body, encoding, self.max_bytes)
            if path == "/v1/metrics":
                request = parse(metrics_service_pb2.ExportMetricsServiceRequest, raw, kind)
                batch = metric_events(request, customer, self.series)
                self._append(batch)
                rejected, why = batch.rejected, "; ".join(batch.reasons)
            else:
                rejected, why = self._append_facts(path, raw, kind, customer)
        except OtlpError as e:
            return error_reply(e.status, str(e), kind)
        except QueueFull:
            return error_reply(503, "the queue is full: retry later", kind)
        response_type, field_name = _RESPONSES[path]
        response = response_type()
        if rejected:
            partial = response.partial_success  # type: ignore[attr-defined]
            setattr(partial, field_name, rejected)
            partial.error_message = why
        return Reply(200, encode(response, kind), kind)

    def _append_facts(self, path: str, raw: bytes, kind: str, customer: str) -> tuple[int, str]:
        """Logs and traces: decoded, mapped, encoded and appended by the Rust core
        (`Queue.append_otlp`). A JSON body is read into the message here and handed over as
        protobuf, so there is one mapping. Returns the records rejected and why."""
        signal: Literal["logs", "traces"] = "logs" if path == "/v1/logs" else "traces"
        if kind == JSON:
            message: type[Message] = (
                logs_service_pb2.ExportLogsServiceRequest
                if signal == "logs"
                else trace_service_pb2.ExportTraceServiceRequest
            )
            raw = parse(message, raw, kind).SerializeToString()
        try:
            _, rejected, why = self.queue().append_otlp(
                signal, raw, customer, capture_content=self.capture_content
            )
        except MalformedBody as e:
            raise OtlpError(400, f"malformed {kind} body: {e}") from None
        return rejected, why

    def _append(self, batch: Batch) -> None:
        """All at once; when the queue refuses the batch (an event too large), one by one,
        rejecting only those it refuses."""
        if not batch.events:
            return
        try:
            self.queue().append_many(batch.events)
        except ValueError:
            for event in batch.events:
                try:
                    self.queue().append(event)
                except ValueError as e:
                    batch.reject(f"{event['activity']}: {e}")


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class OtlpApp:
    """The ASGI app of the receiver. The customer is the bearer token's where `tokens` is
    given (no token or an unknown one: 401), else `customer`. A `user.email` resource
    attribute never chooses the customer: a token allows one customer, its own."""

    def __init__(
        self,
        receiver: Receiver,
        *,
        tokens: Mapping[str, str] | None = None,
        customer: str | None = None,
    ) -> None:
        if tokens is None and not customer:
            raise ValueError("the OTLP receiver needs a customer or bearer tokens")
        self.receiver = receiver
        self.tokens = tokens
        self.customer = customer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PATHS:
            return await _send(send, Reply(404, b"not found", "text/plain"))
        await _send(send, await self.handle(scope, receive))

    async def handle(self, scope: Scope, receive: Receive) -> Reply:
        headers = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}
        kind = media_type(headers.get(b"content-type", ""))
        if scope["method"] != "POST":
            reply = error_reply(405, "POST only", kind)
            reply.headers.append((b"allow", b"POST"))
            return reply
        customer = self.customer
        if self.tokens is not None:
            token = _bearer(scope)
            customer = self.tokens.get(token) if token else None
            if customer is None:
                reply = error_reply(401, "a valid bearer token is required", kind)
                reply.headers.append((b"www-authenticate", b"Bearer"))
                return reply
        assert customer is not None
        limit = self.receiver.max_bytes
        declared = headers.get(b"content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return error_reply(413, f"request body over {limit} bytes", kind)
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return Reply(400, b"", "text/plain")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return error_reply(413, f"request body over {limit} bytes", kind)
            chunks.append(chunk)
            more = message.get("more_body", False)
        import anyio

        return await anyio.to_thread.run_sync(
            self.receiver.export,
            scope["path"],
            b"".join(chunks),
            kind,
            headers.get(b"content-encoding", ""),
            customer,
        )


async def _send(send: Send, reply: Reply) -> None:
    headers = [
        (b"content-type", reply.content_type.encode()),
        (b"content-length", str(len(reply.body)).encode()),
        *reply.headers,
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
