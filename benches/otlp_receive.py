"""OTLP receiver throughput against decoding the same payloads with opentelemetry-proto.

Builds Claude Code-shaped export requests (log events with the attributes Claude Code
sends, as strings; and GenAI spans), serialised as protobuf. Then, best of `--repeat`
rounds, the first four taken in turn within each round so that they see the same load:

- decode alone: `Export…ServiceRequest.FromString(payload)`; also in a fresh process that
  only builds the payloads and decodes them, since upb's speed depends on the state of the
  process's heap. Ratios are against the faster of the two;
- decode and read: the same, plus every record's attributes into a dict (the least a
  consumer of opentelemetry-proto does with a record);
- the receiver in process: `Receiver.export` of the same payloads, end to end (decode, map
  to the vocabulary, deterministic ids, append to a real queue, encode the reply). This is
  the figure the target compares with decoding alone: both start from the payload's bytes
  and neither pays for HTTP;
- the same, redacting: its queue has the default redaction policy, as the queues of
  `activitybi collect` and `serve --http` do;
- the receiver over HTTP (last figure, taken before the others): a real `activitybi collect`
  process, one keep-alive connection, so it adds the client's and the server's HTTP work.

Ratios receiver / baseline are printed (target: at least 0.5 of the faster decode alone).

With ``--baseline-core SO``, only ``Queue.append_otlp`` of this build against another build
of ``activitybi._core`` loaded into the same process (e.g. main's installed one), in
interleaved rounds on queues that keep filling (so that background fdatasyncs and rotations
happen as in a long-running receiver): medians and best rounds, CPU and wall time.

Run: python benches/otlp_receive.py [--requests N] [--records M] [--repeat R] [--baseline-core SO]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2
from queue_append import load_core

from activitybi import Queue, Redactor
from activitybi.capture.otlp import Receiver, SeriesState

T0 = 1_795_000_000_000_000_000
COMMON = {"session.id": "sess-1", "user.id": "u" * 64, "organization.id": "org-1", "app.version": "2.1.0"}


def kvs(d: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in d.items()]


def log_payload(request: int, n: int) -> bytes:
    records = []
    for i in range(n):
        uid = f"{request}-{i}"
        kind = i % 3
        if kind == 0:
            attrs = {
                "event.name": "api_request",
                "model": "claude-sonnet-4-5",
                "cost_usd": "0.0123",
                "duration_ms": "2100",
                "input_tokens": "1200",
                "output_tokens": "340",
                "cache_read_tokens": "5000",
                "cache_creation_tokens": "77",
                "request_id": f"req_{uid}",
            }
        elif kind == 1:
            attrs = {
                "event.name": "tool_result",
                "tool_name": "Bash",
                "tool_use_id": f"toolu_{uid}",
                "success": "true",
                "duration_ms": "85",
                "decision_type": "accept",
                "decision_source": "config",
                "tool_result_size_bytes": "1024",
            }
        else:
            attrs = {"event.name": "user_prompt", "prompt_length": "42"}
        attrs |= COMMON | {"prompt.id": f"p-{uid}", "event.sequence": str(i)}
        records.append(
            logs_pb2.LogRecord(
                time_unix_nano=T0 + i,
                body=AnyValue(string_value="claude_code." + attrs["event.name"]),
                attributes=kvs(attrs),
            )
        )
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=Resource(attributes=kvs({"service.name": "claude-code"})),
                scope_logs=[logs_pb2.ScopeLogs(log_records=records)],
            )
        ]
    ).SerializeToString()


def span_payload(request: int, n: int) -> bytes:
    spans = []
    for i in range(n):
        attrs = (
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "claude-opus-4-1",
                "gen_ai.response.id": f"msg_{request}_{i}",
                "gen_ai.conversation.id": "conv-1",
            }
            if i % 2 == 0
            else {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "search",
                "gen_ai.tool.call.id": f"c_{request}_{i}",
            }
        )
        span = trace_pb2.Span(
            trace_id=os.urandom(16),
            span_id=os.urandom(8),
            name="chat",
            start_time_unix_nano=T0 + i,
            end_time_unix_nano=T0 + i + 5_000_000,
            attributes=kvs(attrs),
        )
        span.attributes.add(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=900))
        span.attributes.add(key="gen_ai.usage.output_tokens", value=AnyValue(int_value=120))
        spans.append(span)
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=spans)])]
    ).SerializeToString()


def best(run: Callable[[], None], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def best_in_turn(runs: dict[str, Callable[[], None]], repeat: int) -> dict[str, float]:
    """Best time of each, the runs taken in turn within each round (same machine load)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def read_attributes(kvs: Any) -> dict[str, Any]:
    """The idiomatic way to read attributes with opentelemetry-proto alone."""
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in kvs}


def decode_logs(payloads: list[bytes], read: bool) -> None:
    for p in payloads:
        request = logs_service_pb2.ExportLogsServiceRequest.FromString(p)
        if read:
            for rl in request.resource_logs:
                for sl in rl.scope_logs:
                    for record in sl.log_records:
                        read_attributes(record.attributes)


def decode_spans(payloads: list[bytes], read: bool) -> None:
    for p in payloads:
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(p)
        if read:
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        read_attributes(span.attributes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def over_http(home: Path, batches: dict[str, list[bytes]], repeat: int) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "ACTIVITYBI_HOME": str(home / "http"), "ACTIVITYBI_OTLP_MAX_BYTES": str(64 << 20)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "activitybi",
            "collect",
            "--port",
            str(port),
            "--customer",
            "bench@example.com",
        ],
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        out = {}
        for path, payloads in batches.items():

            def post(payloads: list[bytes] = payloads, path: str = path) -> None:
                for p in payloads:
                    conn.request("POST", path, p, {"Content-Type": "application/x-protobuf"})
                    r = conn.getresponse()
                    r.read()
                    assert r.status == 200, r.status

            out[path] = best(post, repeat)
        conn.close()
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def given(queue: Queue) -> Callable[[], Queue]:
    return lambda: queue


def in_cpu_time(logs: list[bytes], spans: list[bytes], n: int, repeat: int) -> None:
    """The Rust path alone (`Queue.append_otlp`, no HTTP layer) against decoding alone, in
    this thread's CPU time, taken in turn: less disturbed by a loaded machine than wall time."""
    home = Path(tempfile.mkdtemp(prefix="otlp-cpu-"))
    try:
        with Queue(str(home / "queue"), max_pending=100 * repeat * n) as queue:
            runs: list[tuple[Literal["logs", "traces"], list[bytes], Callable[[list[bytes], bool], None]]] = [
                ("logs", logs, decode_logs),
                ("traces", spans, decode_spans),
            ]
            for signal, payloads, decode in runs:
                rust: list[float] = []
                alone: list[float] = []
                for _ in range(repeat):
                    start = time.thread_time()
                    for p in payloads:
                        queue.append_otlp(signal, p, "bench@example.com")
                    rust.append(time.thread_time() - start)
                    start = time.thread_time()
                    decode(payloads, False)
                    alone.append(time.thread_time() - start)
                ratios = ", ".join(f"{d / r:.2f}x" for r, d in zip(rust, alone, strict=True))
                print(f"{signal}: append_otlp / decode alone, CPU time, each round: {ratios}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def against_build(logs: list[bytes], spans: list[bytes], n: int, so: Path, rounds: int) -> None:
    """`Queue.append_otlp` of this build against the build at `so`, in interleaved rounds."""
    builds = {"this build": Queue, "baseline": load_core(so).Queue}
    home = Path(tempfile.mkdtemp(prefix="otlp-ab-"))
    try:
        for kind, payloads in (("logs", logs), ("traces", spans)):
            queues = {
                k: cls(str(home / f"{kind}-{i}"), max_pending=n * rounds)
                for i, (k, cls) in enumerate(builds.items())
            }
            cpu: dict[str, list[float]] = {k: [] for k in builds}
            wall: dict[str, list[float]] = {k: [] for k in builds}
            for r in range(rounds):
                for k in list(queues) if r % 2 == 0 else list(queues)[::-1]:
                    append_otlp = queues[k].append_otlp
                    c, w = time.thread_time(), time.perf_counter()
                    for p in payloads:
                        append_otlp(kind, p, "bench@example.com")
                    cpu[k].append(time.thread_time() - c)
                    wall[k].append(time.perf_counter() - w)
            for q in queues.values():
                q.close()
            for what, t in (("CPU", cpu), ("wall", wall)):
                base, this = t["baseline"], t["this build"]
                ratio = statistics.median(b / x for b, x in zip(base, this, strict=True))
                print(
                    f"{kind}, {what} time: this build {n / statistics.median(this):,.0f} records/s "
                    f"(best round {n / min(this):,.0f}), baseline {n / statistics.median(base):,.0f} "
                    f"(best {n / min(base):,.0f}); baseline / this build: {ratio:.2f}x "
                    f"(median of {rounds} rounds' ratios)"
                )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--records", type=int, default=500)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument(
        "--cpu",
        action="store_true",
        help="only Queue.append_otlp against decoding alone, in CPU time (and for perf record)",
    )
    p.add_argument(
        "--baseline-core", type=Path, help="a build of activitybi._core to compare append_otlp with"
    )
    p.add_argument("--decode-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    logs = [log_payload(r, a.records) for r in range(a.requests)]
    spans = [span_payload(r, a.records) for r in range(a.requests)]
    n = a.requests * a.records
    if a.decode_only:
        times = {"logs": best(partial(decode_logs, logs, False), a.repeat)}
        times["spans"] = best(partial(decode_spans, spans, False), a.repeat)
        return print(json.dumps(times))
    if a.cpu:
        return in_cpu_time(logs, spans, n, a.repeat)
    if a.baseline_core is not None:
        return against_build(logs, spans, n, a.baseline_core, max(a.repeat, 21))
    home = Path(tempfile.mkdtemp(prefix="otlp-bench-"))
    try:
        queue = Queue(str(home / "queue"), max_pending=100 * n)
        # As `activitybi collect` and `serve --http` open theirs: the default redaction policy.
        redacting = Queue(str(home / "redacting"), max_pending=100 * n, redactor=Redactor("", b"k" * 32))

        def receive(queue: Queue, path: str, payloads: list[bytes]) -> Callable[[], None]:
            receiver = Receiver(
                given(queue), max_bytes=64 << 20, capture_content=False, series=SeriesState(None)
            )

            def run() -> None:
                for p in payloads:
                    assert (
                        receiver.export(path, p, "application/x-protobuf", "", "bench@example.com").status
                        == 200
                    )

            return run

        http_times = over_http(home, {"/v1/logs": logs, "/v1/traces": spans}, a.repeat)
        child = [sys.executable, __file__, "--decode-only", "--requests", str(a.requests)]
        child += ["--records", str(a.records), "--repeat", str(a.repeat)]
        fresh = json.loads(subprocess.run(child, check=True, capture_output=True).stdout)
        size = sum(map(len, logs)) / a.requests / 1024
        print(f"{a.requests} requests x {a.records} records, {size:.0f} KiB each (logs); best of {a.repeat}")
        print(f"{'':42} {'records/s':>12} {'/ decode':>9} {'/ decode+read':>14}")
        for label, path, payloads, decode in (
            ("logs", "/v1/logs", logs, decode_logs),
            ("spans", "/v1/traces", spans, decode_spans),
        ):
            t = best_in_turn(
                {
                    "decode alone": partial(decode, payloads, False),
                    "decode + read attributes": partial(decode, payloads, True),
                    "receiver in process": receive(queue, path, payloads),
                    "receiver in process, redacting": receive(redacting, path, payloads),
                },
                a.repeat,
            )
            t["receiver over HTTP (redacting)"] = http_times[path]
            t = {"decode alone, fresh process": fresh[label], **t}
            # The baseline is the faster decode: how fast upb decodes depends on the state of
            # the process's heap (within one process it is steady, between processes that
            # ran different code it is not), and the target is against decoding at its best.
            alone, read = min(t["decode alone"], fresh[label]), t["decode + read attributes"]
            for i, (name, took) in enumerate(t.items()):
                ratios = f"{alone / took:>8.2f}x {read / took:>13.2f}x" if i >= 3 else ""
                print(f"{label + ': ' + name:42} {n / took:>12,.0f} {ratios}")
        queue.close()
        redacting.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
