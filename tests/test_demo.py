"""`activitybi demo` from the command line, in a home of its own: it finishes within a
minute, prints the report, and what it printed is what DuckDB holds."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from activitybi import Queue

pytestmark = pytest.mark.slow


def test_demo_runs_the_real_path_in_under_a_minute(_home: Path) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        ["activitybi", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ACTIVITYBI_HOME": str(_home), "COLUMNS": "160"},
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seconds < 60, seconds
    out = proc.stdout
    for needle in (
        "activitybi report",
        "Activities",
        "Tool calls",
        "Cost by model",
        "Sessions",
        "Recent insights",
        "Health",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-4-1",
        "ci_minutes",
        str(_home / "warehouse.duckdb"),
        str(_home / "report.html"),
    ):
        assert needle in out, needle

    con = duckdb.connect(str(_home / "warehouse.duckdb"), read_only=True)
    try:
        counts = dict(con.execute("SELECT activity, count(*) FROM claude_stream GROUP BY 1").fetchall())
        assert counts["asked_question"] == 4 and counts["received_answer"] == 4
        assert counts["learned_insight"] == 5 and counts["called_tool"] >= 25
        total = sum(counts.values())
        assert f"{total} events" in out
        sessions = con.execute("SELECT count(DISTINCT _session_id) FROM claude_stream")
        assert sessions.fetchone() == (3,)
        assert con.execute("SELECT count(DISTINCT customer) FROM claude_stream").fetchone() == (1,)
        failed = con.execute(
            "SELECT feature_json->>'tool' FROM claude_stream WHERE activity = "
            "'called_tool' AND feature_json->>'outcome' <> 'ok'"
        ).fetchall()
        assert failed == [("submit_query",)]
        models = con.execute(
            "SELECT feature_json->>'model', sum(CAST(feature_json->>'cost_usd' AS DOUBLE)) "
            "FROM claude_stream WHERE activity = 'received_answer' GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert [m for m, _ in models] == ["claude-haiku-4-5", "claude-opus-4-1", "claude-sonnet-4-5"]
        assert all(c > 0 for _, c in models)
        assert con.execute("SELECT count(*) FROM insight_atoms").fetchone() == (5,)
        audits = con.execute(
            "SELECT template, outcome, row_count FROM query_audit ORDER BY template"
        ).fetchall()
        assert [(t, o) for t, o, _ in audits] == [
            ("cost_by_model", "succeeded"),
            ("tool_latency", "succeeded"),
        ]
        assert all(rows > 0 for _, _, rows in audits)
        cards = con.execute("SELECT content_type, size_bytes FROM artifacts").fetchall()
        assert len(cards) == 2 and all(t == "image/png" and n > 5000 for t, n in cards)
    finally:
        con.close()
    assert len(list((_home / "cards").glob("*.png"))) == 2
    html = (_home / "report.html").read_text()
    assert html.count("<svg") == 4
    with Queue(str(_home / "queue")) as q:
        assert q.stats()["pending"] == 0
