"""`activitybi report`: figures from a hand-built stream, and the HTML page in a real
headless Chromium (Debian's `chromium`), driven over the DevTools protocol."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from rich.console import Console

from activitybi import Queue
from activitybi.reporting.figures import build_report, local_report
from activitybi.reporting.html import render_html
from activitybi.reporting.source import WarehouseBusy
from activitybi.reporting.terminal import render_terminal
from activitybi.warehouse.duckdb import DuckDBWarehouse

T0 = dt.datetime(2026, 11, 20, 9, 0, 0)


def _event(
    wh: DuckDBWarehouse,
    n: int,
    activity: str,
    customer: str,
    session: str,
    features: dict[str, Any] | None = None,
    *,
    at: dt.datetime | None = None,
) -> None:
    ts = at or T0 + dt.timedelta(seconds=n)
    wh.execute(
        "INSERT INTO claude_stream (activity_id, ts, customer, activity, feature_json, "
        "_session_id, _source, _ingested_at, _customer_key) VALUES (?, ?, ?, ?, ?, ?, 'stdio', ?, ?)",
        [
            f"a{n:04d}",
            ts,
            customer,
            activity,
            orjson.dumps(features).decode() if features else None,
            session,
            ts + dt.timedelta(milliseconds=100 * (n % 5 + 1)),
            customer,
        ],
    )


@pytest.fixture
def stream(tmp_path: Path) -> Path:
    """Ana: two sessions, six tool calls (one failed), three exchanges; Bo: one costly
    exchange; one of Ana's calls is from 2020."""
    path = tmp_path / "wh.duckdb"
    wh = DuckDBWarehouse(path)
    wh.init()
    n = iter(range(1, 1000))
    for latency, outcome in ((10, "ok"), (20, "ok"), (30, "ok"), (40, "error"), (100, "ok")):
        _event(
            wh,
            next(n),
            "called_tool",
            "ana@x.io",
            "s1",
            {"tool": "log_event", "latency_ms": latency, "outcome": outcome},
        )
    for latency in (1, 3):
        _event(
            wh,
            next(n),
            "called_tool",
            "ana@x.io",
            "s1",
            {"tool": "get_context", "latency_ms": latency, "outcome": "ok"},
        )
    _event(wh, next(n), "asked_question", "ana@x.io", "s1", {"question": "why?"})
    _event(
        wh,
        next(n),
        "received_answer",
        "ana@x.io",
        "s1",
        {"model": "sonnet", "input_tokens": 1000, "output_tokens": 200, "cost_usd": 0.006},
    )
    _event(
        wh,
        next(n),
        "received_answer",
        "ana@x.io",
        "s2",
        {"model": "sonnet", "input_tokens": 500, "output_tokens": 100, "cost_usd": 0.003},
    )
    _event(
        wh,
        next(n),
        "received_answer",
        "ana@x.io",
        "s2",
        {"model": "haiku", "input_tokens": 300, "output_tokens": 50, "cost_usd": 0.00055},
    )
    _event(wh, next(n), "asked_question", "bo@y.io", "s3", {"question": "how much?"})
    _event(
        wh,
        next(n),
        "received_answer",
        "bo@y.io",
        "s3",
        {"model": "opus", "input_tokens": 10_000, "output_tokens": 2_000, "cost_usd": 1.0},
    )
    _event(
        wh,
        next(n),
        "called_tool",
        "ana@x.io",
        "s0",
        {"tool": "log_event", "latency_ms": 5000, "outcome": "ok"},
        at=dt.datetime(2020, 1, 1),
    )
    for i, (customer, subject, metric, value) in enumerate(
        (
            ("ana@x.io", "repo", "ci_minutes", 14.2),
            ("ana@x.io", "preferences", "tone", "terse"),
            ("bo@y.io", "spend", "budget", 100),
        )
    ):
        wh.execute(
            "INSERT INTO insight_atoms VALUES (?, ?, ?, ?, ?, NULL, ?)",
            [f"i{i}", customer, subject, metric, orjson.dumps(value).decode(), T0 + dt.timedelta(minutes=i)],
        )
    wh.close()
    return path


def test_figures_of_a_hand_built_stream(stream: Path, _home: Path) -> None:
    r = build_report(stream, home=_home)
    t = r["totals"]
    assert (t["events"], t["customers"], t["sessions"]) == (14, 2, 4)
    assert (t["tool_calls"], t["tool_errors"]) == (8, 1)
    assert t["cost_usd"] == pytest.approx(1.00955)
    assert (t["input_tokens"], t["output_tokens"]) == (11_800, 2_350)

    r = build_report(stream, since=dt.date(2026, 1, 1), home=_home)
    tools = {x["tool"]: x for x in r["tools"]}
    assert tools["log_event"]["calls"] == 5
    assert tools["log_event"]["p50_ms"] == 30
    assert tools["log_event"]["p95_ms"] == pytest.approx(88)  # 40 + 0.8 * (100 - 40)
    assert tools["log_event"]["errors"] == 1 and tools["log_event"]["error_rate"] == 0.2
    assert (tools["get_context"]["p50_ms"], tools["get_context"]["p95_ms"]) == (2, 2.9)
    models = {m["model"]: m for m in r["cost_by_model"]}
    assert [m["model"] for m in r["cost_by_model"]] == ["opus", "sonnet", "haiku"]
    assert models["sonnet"] == {
        "model": "sonnet",
        "agent": None,
        "exchanges": 2,
        "input_tokens": 1500,
        "output_tokens": 300,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cost_usd": 0.009,
    }
    assert [(s["session_id"], s["cost_usd"]) for s in r["cost_by_session"]] == [
        ("s3", 1.0),
        ("s1", 0.006),
        ("s2", 0.00355),
    ]
    assert r["sessions_total"] == 3  # s0 is from 2020
    assert {a["activity"]: a["events"] for a in r["activities"]} == {
        "called_tool": 7,
        "received_answer": 4,
        "asked_question": 2,
    }
    assert r["timeline"]["bucket"] == "second"
    assert sum(p["events"] for p in r["timeline"]["points"]) == 13
    assert r["totals"]["lag_p95_ms"] == 500

    mine = build_report(stream, customer="ana@x.io", home=_home)
    assert mine["totals"]["customers"] == 1 and mine["totals"]["events"] == 12
    assert "opus" not in {m["model"] for m in mine["cost_by_model"]}
    assert [(i["subject"], i["value"]) for i in mine["insights"]] == [
        ("preferences", "terse"),
        ("repo", 14.2),
    ]


def test_terminal_report_shows_the_figures(stream: Path, _home: Path) -> None:
    console = Console(record=True, width=140, file=io.StringIO())
    render_terminal(build_report(stream, since=dt.date(2026, 1, 1), home=_home), console)
    out = console.export_text()
    for needle in (
        "13 events",
        "3 sessions",
        "Tool calls",
        "88.00 ms",
        "20.0%",
        "Cost by model",
        "opus",
        "$1.00",
        "Recent insights",
        "ci_minutes",
        "Health",
        "0 events pending",
    ):
        assert needle in out, needle


def test_health_counts_pending_events_and_quarantined_lines(stream: Path, _home: Path) -> None:
    with Queue(str(_home / "queue")) as q:
        q.append_many([{"activity": "asked_question"}] * 7)
    (_home / "quarantine").mkdir(parents=True)
    (_home / "quarantine" / "uploader.jsonl").write_text(
        '{"reason": "not JSON", "line": "x"}\n{"reason": "no activity", "line": "{}"}\n'
    )
    h = build_report(stream, home=_home)["health"]
    assert h["queue"]["pending"] == 7 and h["queue"]["sealed_segments"] == 1
    assert h["quarantine"]["lines"] == 2 and h["quarantine"]["last_reason"] == "no activity"
    assert h["owner"] is None


def test_a_warehouse_held_by_its_owner_is_a_clear_error(stream: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
            "print('ready', flush=True); time.sleep(60)",
            str(stream),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(WarehouseBusy) as caught:
            build_report(stream)
        assert caught.value.pid == holder.pid
        assert f"PID {holder.pid}" in str(caught.value) and "activitybi report" in str(caught.value)
    finally:
        holder.kill()
        holder.wait()


def test_while_a_server_owns_the_warehouse_the_report_comes_through_its_tickets(_home: Path) -> None:
    """A running `activitybi serve` (Claude Desktop open) holds DuckDB through its owner
    process: `activitybi report` then asks that owner, with SafeSQL tickets."""
    from tests.mcp_clients import stdio_session

    async def run() -> None:
        async with stdio_session(_home, "ana@x.io") as s:
            for i in range(3):
                await s.call_tool(
                    "log_event",
                    {
                        "activity": "asked_question",
                        "model": "sonnet",
                        "input_tokens": 100,
                        "cost_usd": 0.5 * (i + 1),
                    },
                )
            await s.call_tool("log_insight", {"subject": "repo", "metric": "ci_minutes", "value": 9})
            await s.call_tool("log_event", {"activity": "Bad Name"})  # a failed call
            with Queue(str(_home / "queue")) as q:
                deadline = time.monotonic() + 30
                while q.stats()["pending"] and time.monotonic() < deadline:
                    await anyio.sleep(0.05)
            proc = await anyio.run_process(
                ["activitybi", "report", "--html", str(_home / "r.html")],
                check=False,
                env={
                    **os.environ,
                    "ACTIVITYBI_HOME": str(_home),
                    "ACTIVITYBI_CUSTOMER": "ana@x.io",
                    "COLUMNS": "160",
                },
            )
            out = proc.stdout.decode()
            assert proc.returncode == 0, out + proc.stderr.decode()
            assert "came through query tickets" in out and "ana@x.io" in out
            assert "$3.00" in out and "ci_minutes" in out
            report = local_report(_home, customer="ana@x.io")
            t = report["totals"]
            assert t["cost_usd"] == 3.0 and t["input_tokens"] == 300 and t["sessions"] == 1
            assert t["tool_calls"] >= 5 and t["tool_errors"] == 1
            assert {a["activity"]: a["events"] for a in report["activities"]}["asked_question"] == 3
            assert [i["metric"] for i in report["insights"]] == ["ci_minutes"]
            assert "<svg" in (_home / "r.html").read_text()

    anyio.run(run)


def test_a_missing_warehouse_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="activitybi upload --once"):
        build_report(tmp_path / "nothing.duckdb")


# ----------------------------------------------------------------------- headless Chromium


class Chromium:
    """Headless Chromium over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    it reads commands on fd 3 and answers on fd 4, NUL-separated), so no websocket
    library and no port are needed."""

    def __init__(self, profile: Path) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        assert exe, "chromium is missing: apt-get install chromium (scripts/test.sh does)"
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def wire() -> None:  # in the child: commands on fd 3, answers on fd 4
            a, b = os.dup(cmd_r), os.dup(out_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=wire,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _recv(self, until: Any, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = orjson.loads(raw)
                if "method" in msg:
                    self.events.append(msg)
                if until(msg):
                    return dict(msg)
            ready, _, _ = select.select([self._out_r], [], [], max(0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._out_r, 1 << 16)
            if not chunk:
                raise EOFError("chromium exited")
            self._buf += chunk

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, orjson.dumps(msg) + b"\0")
        wanted = self._id
        answer = self._recv(lambda m: m.get("id") == wanted)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return dict(answer["result"])

    def load(self, url: str) -> tuple[str, list[str]]:
        """Loads `url`; returns the session and every console message, uncaught exception,
        failed load and request the page made (as text)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session=s)
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=s)
        self._recv(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == s)
        self.call("Runtime.evaluate", {"expression": "1", "awaitPromise": True}, session=s)
        problems = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                args = [a.get("value") for a in p.get("args", [])]
                problems.append(f"console.{p['type']}: {args}")
            elif e["method"] == "Runtime.exceptionThrown":
                problems.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                problems.append(f"log: {p['entry']['text']}")
            elif e["method"] == "Network.requestWillBeSent" and p["request"]["url"] != url:
                problems.append(f"request: {p['request']['url']}")
        return s, problems

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
        )
        return result["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(EOFError, OSError, RuntimeError, TimeoutError):
            self.call("Browser.close")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)


@pytest.fixture
def chromium(tmp_path: Path) -> Any:
    browser = Chromium(tmp_path / "chromium-profile")
    yield browser
    browser.close()


@pytest.mark.chromium
def test_the_html_page_loads_in_chromium_without_errors_and_shows_its_charts(
    stream: Path, _home: Path, tmp_path: Path, chromium: Chromium
) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(build_report(stream, home=_home)), encoding="utf-8")
    assert "http://" not in page.read_text() and "https://" not in page.read_text()
    session, problems = chromium.load(page.as_uri())
    assert problems == []
    charts = chromium.evaluate(
        session,
        """JSON.stringify([...document.querySelectorAll('svg')]
        .map(s => { const r = s.getBoundingClientRect();
                    return [s.getAttribute('aria-label'), r.width, r.height,
                            s.querySelectorAll('rect').length]; }))""",
    )
    charts = orjson.loads(charts)
    labels = [c[0] for c in charts]
    assert labels[0] == "Events per month (UTC)"  # from 2020 to 2026
    assert labels[1:] == ["Events by activity", "Tool latency (ms)", "Cost by model (USD)"]
    for label, width, height, bars in charts:
        assert width > 200 and height > 50 and bars >= 3, (label, width, height, bars)
    text = chromium.evaluate(session, "document.body.innerText")
    assert "opus" in text and "ci_minutes" in text and "16.7%" in text
    assert chromium.evaluate(session, "document.scripts.length") == 0


@pytest.mark.chromium
def test_the_chromium_check_does_see_errors(tmp_path: Path, chromium: Chromium) -> None:
    """The harness is not blind: a broken page is reported."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><img src="missing.png"><script>console.error("boom");nothing();</script>')
    _, problems = chromium.load(page.as_uri())
    assert any("boom" in p for p in problems)
    assert any(p.startswith("exception") for p in problems)
    assert any("missing.png" in p or "ERR_FILE_NOT_FOUND" in p for p in problems)
