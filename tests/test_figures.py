"""The report's figures are the SafeSQL templates' figures: on the same data, whether the
report reads the DuckDB file or asks a running owner through tickets; and the captured
picture (issue 12's vocabulary) computed by hand. Customer strings never inject markup."""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from rich.console import Console

from activitybi import Queue
from activitybi.query import templates
from activitybi.query.tickets import jsonable
from activitybi.reporting import status
from activitybi.reporting.figures import EPOCH, build_report, local_report
from activitybi.reporting.html import render_html
from activitybi.reporting.source import WarehouseBusy, connect_read_only
from activitybi.reporting.terminal import render_terminal

T0 = dt.datetime(2026, 11, 20, 9, 0, 0)
ANA, BO = "ana@x.io", "bo@y.io"
EVIL = "[/]<script>alert(1)</script>[bold red]"


def _ev(n: int, activity: str, customer: str, features: dict[str, Any], *, day: int = 0) -> dict[str, Any]:
    session = "cc1" if customer == ANA else "cc2"
    return {
        "ts": (T0 + dt.timedelta(days=day, seconds=n)).isoformat(),
        "activity": activity,
        "customer": customer,
        "feature_json": {"session_id": session, **features},
        "_session_id": session,
        "_source": "stdio",
    }


def captured() -> list[dict[str, Any]]:
    """A Claude Code session of Ana's seen by hooks, OpenTelemetry and transcripts, and
    one model call of Bo's."""
    model = {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "source": "otel"}
    return [
        _ev(1, "asked_question", ANA, {"prompt_length": 40, "source": "hook"}),
        _ev(2, "asked_question", ANA, {"prompt_length": 60, "source": "hook"}),
        _ev(3, "asked_question", ANA, {"prompt_length": 80, "source": "hook"}, day=1),
        _ev(
            4,
            "called_model",
            ANA,
            {
                **model,
                "model": "sonnet",
                "input_tokens": 1000,
                "output_tokens": 200,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": 5000,
                "cost_usd": 0.01,
                "request_id": "r1",
                "project": "/p/a",
            },
        ),
        _ev(
            5,
            "called_model",
            ANA,
            {
                **model,
                "model": "sonnet",
                "input_tokens": 10,
                "output_tokens": 5,
                "cost_usd": 0.02,
                "request_id": "r2",
                "project": "/p/b",
            },
        ),
        _ev(
            6,
            "called_model",
            ANA,
            {
                **model,
                "model": "haiku",
                "input_tokens": 7,
                "output_tokens": 3,
                "cost_usd": 0.001,
                "request_id": "r3",
                "project": "/p/a",
                "agent": "explorer",
                "source": "transcript",
            },
        ),
        _ev(7, "called_tool", ANA, {"tool": "Bash", "latency_ms": 10, "outcome": "ok", "source": "hook"}),
        _ev(8, "called_tool", ANA, {"tool": "Read", "latency_ms": 5, "source": "hook"}),  # outcome unknown
        _ev(
            9,
            "called_tool",
            ANA,
            {"tool": "search", "mcp_server": "github", "latency_ms": 100, "outcome": "ok", "source": "proxy"},
        ),
        _ev(
            10,
            "called_tool",
            ANA,
            {
                "tool": "search",
                "mcp_server": "github",
                "latency_ms": 300,
                "outcome": "rate limited",
                "source": "proxy",
            },
        ),
        _ev(
            11,
            "recorded_metric",
            ANA,
            {
                "name": "claude_code.cost.usage",
                "value": 0.25,
                "unit": "USD",
                "model": "sonnet",
                "day": "2026-11-20",
                "source": "otel",
            },
        ),
        _ev(
            12,
            "recorded_metric",
            ANA,
            {
                "name": "claude_code.cost.usage",
                "value": 0.5,
                "unit": "USD",
                "model": "sonnet",
                "day": "2026-11-20",
                "source": "otel",
            },
        ),
        _ev(
            13,
            "recorded_metric",
            ANA,
            {
                "name": "claude_code.lines_of_code.count",
                "value": 12,
                "type": "added",
                "day": "2026-11-21",
                "source": "otel",
            },
        ),
        _ev(
            14,
            "called_model",
            BO,
            {
                **model,
                "model": "opus",
                "input_tokens": 9,
                "output_tokens": 9,
                "cost_usd": 1.0,
                "request_id": "r4",
            },
        ),
        _ev(15, "learned_insight", ANA, {"subject": EVIL, "metric": "m", "value": EVIL}),
    ]


def _activitybi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["activitybi", *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture
def loaded(_home: Path) -> Path:
    """The captured events appended to the queue and loaded by the real uploader."""
    with Queue(str(_home / "queue")) as q:
        q.append_many(captured())
    _activitybi("upload", "--once", "--quiet")
    return _home


@pytest.fixture
def owner(loaded: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A running warehouse owner (`activitybi upload --follow`): it holds the file and runs tickets."""
    proc = subprocess.Popen(["activitybi", "upload", "--follow", "--quiet"])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connect_read_only(loaded / "warehouse.duckdb").close()
            except WarehouseBusy:
                break
            assert time.monotonic() < deadline, "the owner did not take the warehouse"
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def _template(home: Path, name: str, customer: templates.Scope, **params: Any) -> list[dict[str, Any]]:
    """A template run on its own, outside the report's code."""
    sql, values = templates.get(name).bind({"since": EPOCH.isoformat(), **params}, customer)
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        cur = con.execute(sql, values)
        columns = [d[0] for d in cur.description or ()]
        return [dict(zip(columns, map(jsonable, r), strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


SECTIONS = {
    "activities": ("activity_counts", {}),
    "tools": ("tool_latency", {}),
    "tool_servers": ("tool_calls_by_server", {}),
    "cost_by_model": ("cost_by_model", {}),
    "cost_by_project": ("cost_by_project", {}),
    "cost_by_session": ("cost_by_session", {"limit": 15}),
    "sessions": ("sessions", {"limit": 15}),
    "prompts_by_day": ("prompts_by_day", {}),
    "events_by_source": ("events_by_source", {}),
    "metrics_by_day": ("metrics_by_day", {}),
}


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("generated_at", "source", "note", "health")}


def test_the_captured_picture_by_hand(loaded: Path) -> None:
    r = build_report(loaded / "warehouse.duckdb", customer=ANA, home=loaded)
    t = r["totals"]
    assert (t["tool_calls"], t["tool_errors"]) == (4, 1)  # Read's unknown outcome is no error
    assert t["cost_usd"] == pytest.approx(0.031) and t["exchanges"] == 3
    tools = {x["tool"]: x for x in r["tools"]}
    assert (tools["Read"]["errors"], tools["Read"]["error_rate"]) == (0, 0)
    assert (tools["search"]["errors"], tools["search"]["error_rate"]) == (1, 0.5)
    servers = {x["mcp_server"]: x for x in r["tool_servers"]}
    assert servers["github"]["calls"] == 2 and servers["github"]["error_rate"] == 0.5
    assert (servers["github"]["p50_ms"], servers["github"]["p95_ms"]) == (200, 290)
    assert servers[None]["calls"] == 2 and servers[None]["errors"] == 0
    by_model = {(m["model"], m["agent"]): m for m in r["cost_by_model"]}
    assert set(by_model) == {("sonnet", None), ("haiku", "explorer")}  # Bo's opus is not Ana's
    sonnet = by_model["sonnet", None]
    assert (sonnet["exchanges"], sonnet["input_tokens"], sonnet["output_tokens"]) == (2, 1010, 205)
    assert (sonnet["cache_creation_input_tokens"], sonnet["cache_read_input_tokens"]) == (300, 5000)
    assert sonnet["cost_usd"] == pytest.approx(0.03)
    assert [(p["project"], p["agent"], p["cost_usd"]) for p in r["cost_by_project"]] == [
        ("/p/b", None, 0.02),
        ("/p/a", None, 0.01),
        ("/p/a", "explorer", 0.001),
    ]
    assert [(s["session_id"], s["agent"]) for s in r["cost_by_session"]] == [
        ("cc1", None),
        ("cc1", "explorer"),
    ]
    assert [(d["day"], d["prompts"], d["mean_prompt_length"]) for d in r["prompts_by_day"]] == [
        ("2026-11-20", 2, 50.0),
        ("2026-11-21", 1, 80.0),
    ]
    assert {s["source"]: s["events"] for s in r["events_by_source"]} == {
        "hook": 5,
        "otel": 5,
        "proxy": 2,
        "transcript": 1,
        "stdio": 1,  # the insight says no source: the transport column tells
    }
    assert [(m["day"], m["name"], m["value"], m["points"]) for m in r["metrics_by_day"]] == [
        ("2026-11-20", "claude_code.cost.usage", 0.75, 2),
        ("2026-11-21", "claude_code.lines_of_code.count", 12, 1),
    ]
    everyone = build_report(loaded / "warehouse.duckdb", home=loaded)
    assert everyone["totals"]["cost_usd"] == pytest.approx(1.031)
    assert {m["model"] for m in everyone["cost_by_model"]} == {"sonnet", "haiku", "opus"}


def test_the_report_is_the_templates_with_and_without_an_owner(
    loaded: Path, request: pytest.FixtureRequest
) -> None:
    direct = build_report(loaded / "warehouse.duckdb", customer=ANA, home=loaded)
    for key, (name, params) in SECTIONS.items():
        assert direct[key] == _template(loaded, name, ANA, **params), key
    assert direct["totals"] == _template(loaded, "overview", ANA)[0]
    everyone = build_report(loaded / "warehouse.duckdb", home=loaded)
    for key, (name, params) in SECTIONS.items():
        assert everyone[key] == _template(loaded, name, templates.EVERYONE, **params), key

    request.getfixturevalue("owner")
    through = local_report(loaded, customer=ANA)
    assert "query tickets" in through["source"] and "came through query tickets" in through["note"]
    assert _figures(through) == _figures(direct)


def test_customer_strings_are_shown_never_interpreted(loaded: Path, tmp_path: Path) -> None:
    with Queue(str(loaded / "queue")) as q:
        q.append(_ev(20, "called_tool", ANA, {"tool": EVIL, "mcp_server": EVIL, "outcome": EVIL}))
    _activitybi("upload", "--once", "--quiet")
    report = build_report(loaded / "warehouse.duckdb", home=loaded)
    assert EVIL in {t["tool"] for t in report["tools"]} and EVIL in {i["subject"] for i in report["insights"]}

    console = Console(record=True, width=400, file=io.StringIO())
    render_terminal(report, console)
    out = console.export_text()
    assert out.count("[/]<script>alert(1)</script>") >= 3  # tool, server, insight

    page = render_html(report)
    assert "<script" not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3

    status_dir = loaded / "status"
    status_dir.mkdir(exist_ok=True)
    (status_dir / f"server-{os.getpid()}.json").write_bytes(
        orjson.dumps(
            {
                "pid": os.getpid(),
                "source": EVIL,
                "tool_calls": 1,
                "tool_errors": 1,
                "last_errors": [{"at": time.time(), "tool": EVIL, "error": EVIL}],
            }
        )
    )
    console = Console(record=True, width=400, file=io.StringIO())
    status.show(loaded, console)
    assert console.export_text().count("[/]<script>alert(1)</script>") >= 2


def test_report_and_status_read_one_health(loaded: Path) -> None:
    with Queue(str(loaded / "queue")) as q:
        q.append_many([{"activity": "asked_question"}] * 3)
    health = build_report(loaded / "warehouse.duckdb", home=loaded)["health"]
    console = Console(record=True, width=200, file=io.StringIO())
    status.show(loaded, console)
    out = console.export_text()
    assert health["queue"]["pending"] == 3 and re.search(r"pending events\s*│\s*3\s", out)
    assert health["owner"] is None and "not running" in out
