"""Prometheus metrics at /metrics and `activitybi status`."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import anyio
import httpx2
from prometheus_client import generate_latest

from activitybi import Queue
from activitybi.owner.uploader import Uploader
from activitybi.reporting.metrics import OwnerMetrics
from activitybi.warehouse import TransientError
from tests.mcp_clients import HttpServer, http_session


def test_http_metrics_and_status(_home: Path) -> None:
    server = HttpServer(_home, {"tok": "m@x.io"}, env={"ACTIVITYBI_OPERATOR_TOKEN": "op"})
    try:

        async def go() -> None:
            async with http_session(server.url, "tok") as s:
                await s.call_tool("log_event", {"activity": "asked_question"})
                await s.call_tool("log_event", {"activity": "Not A Name"})
                await s.call_tool("get_context", {})

        anyio.run(go)
        metrics = f"http://127.0.0.1:{server.port}/metrics"
        assert httpx2.get(metrics).status_code == 401  # the operator's, not everyone's
        body = httpx2.get(metrics, headers={"Authorization": "Bearer op"}).text
        assert 'activitybi_tool_latency_seconds_count{tool="log_event"} 2.0' in body
        assert 'activitybi_tool_errors_total{tool="log_event"} 1.0' in body
        assert 'activitybi_cache_misses_total{tier="memory"}' in body
        assert "activitybi_queue_pending" in body
        deadline = time.monotonic() + 15
        while True:  # status files are written every 2 s; the last error shows its tool
            out = subprocess.run(
                ["activitybi", "status"],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "ACTIVITYBI_HOME": str(_home), "COLUMNS": "200"},
            ).stdout
            if f"│ {server.proc.pid} " in out and "rows in claude_stream" in out and "log_event" in out:
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.5)
        assert "pending events" in out
    finally:
        server.stop()


def test_traces_export_a_span_per_tool_call(_home: Path, tmp_path: Path) -> None:
    """With the otel extra and ACTIVITYBI_TRACES=console, each tools/call is a span."""
    from tests.mcp_clients import stdio_session, text

    errlog = (tmp_path / "server.stderr").open("w+")

    async def go() -> None:
        async with stdio_session(_home, "t@x.io", errlog=errlog, ACTIVITYBI_TRACES="console") as s:
            assert len(text(await s.call_tool("log_event", {"activity": "traced_step"}))) == 26

    anyio.run(go)
    errlog.seek(0)
    spans = errlog.read()
    errlog.close()
    assert '"name": "tools/call log_event"' in spans
    assert '"gen_ai.tool.name": "log_event"' in spans


def test_owner_counts_warehouse_failures_in_a_row(qdir: Path) -> None:
    """activitybi_warehouse_consecutive_failures (ActivitybiWarehouseFailing) rises with each
    failed call and is 0 again after a success."""
    seen: list[object] = []

    class Flaky:
        kind = "duckdb"
        fails = 3

        def checkpoint(self, queue_id: str) -> None:
            seen.append(up.health()["consecutive_failures"])
            if self.fails:
                self.fails -= 1
                raise TransientError("the warehouse is down")

        def load(self, rows: list[object], queue_id: str, checkpoint: object) -> int:
            return len(rows)

    with Queue(str(qdir)) as q:
        q.append({"activity": "asked_question"})
    up = Uploader(qdir, Flaky())  # type: ignore[arg-type]
    up.drain()
    assert seen == [0, 1, 2, 3]
    body = generate_latest(OwnerMetrics(up.health).registry).decode()
    assert "activitybi_warehouse_consecutive_failures 0.0" in body
    assert "activitybi_uploader_retries_total 3.0" in body
