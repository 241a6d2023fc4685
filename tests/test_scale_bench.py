"""`benches/scale.py` at a few thousand events, end to end, so that the scale proof cannot rot:
the stream it generates is the one the warehouse holds (every customer's events, exactly),
looks like the capture paths' (their activities and features, months of timestamps), and
every template and get_context gets its line of figures."""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import duckdb
import numpy as np
import pytest

from activitybi.query import templates

BENCH = Path(__file__).resolve().parents[1] / "benches" / "scale.py"
EVENTS, CUSTOMERS, HEAVY, DAYS = 4_000, 25, 1_000, 90


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


scale = _bench()


def test_quotas_give_every_customer_exactly_its_events() -> None:
    pop = scale.population(EVENTS, CUSTOMERS, HEAVY, seed=3)
    assert int(pop.totals.sum()) == EVENTS and int(pop.totals[0]) == HEAVY and pop.totals.min() >= 1
    quotas = scale.daily_quotas(pop, DAYS, seed=3)
    assert quotas.shape == (DAYS, CUSTOMERS) and quotas.min() >= 0
    assert np.array_equal(quotas.sum(axis=0), pop.totals)
    assert (quotas[:, 0] > 0).all()  # the heavy customer runs every day
    typical = pop.customers.index(pop.typical)
    assert 0 < pop.totals[typical] < HEAVY


def test_scale_bench_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "scale"
    argv = ["--events", EVENTS, "--customers", CUSTOMERS, "--heavy", HEAVY, "--days", DAYS, "--reps", 2]
    monkeypatch.setattr(sys, "argv", ["scale.py", *map(str, argv), "--keep", str(home)])
    scale.main()
    out = capsys.readouterr().out

    for name in [*templates.TEMPLATES, "get_context"]:  # heavy and typical: two ratios each
        assert re.search(rf"^{name}(?: +[\d.]+ +[\d.]+ +[\d.]+x +[\d,]+){{2}}$", out, re.M), name
    assert re.search(r"load .*: [\d.]+ s, [\d,]+ events/s .* owner peak RSS [\d,]+ MiB; warehouse file", out)
    assert re.search(r"read_json of the same lines: [\d,]+ events/s .* the owner at \d+% of it", out)

    pop = scale.population(EVENTS, CUSTOMERS, HEAVY, seed=14)
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        counts = dict(con.execute("SELECT customer, count(*) FROM claude_stream GROUP BY 1").fetchall())
        assert counts == dict(zip(pop.customers, pop.totals.tolist(), strict=True))
        activities = {a for (a,) in con.execute("SELECT DISTINCT activity FROM claude_stream").fetchall()}
        assert activities == {
            "asked_question",
            "called_model",
            "called_tool",
            "recorded_metric",
            "learned_insight",
        }
        first, last = con.execute("SELECT min(ts), max(ts) FROM claude_stream").fetchone()  # type: ignore[misc]
        assert last - first > dt.timedelta(days=DAYS - 5) and last < dt.datetime.now(dt.UTC).replace(
            tzinfo=None
        )
        model, tool = con.execute(
            "SELECT count(*) FILTER (activity = 'called_model' AND (feature_json->>'cost_usd')::DOUBLE > 0 "
            "  AND (feature_json->>'input_tokens')::BIGINT > 0 AND feature_json->>'model' LIKE 'claude-%'), "
            "count(*) FILTER (activity = 'called_tool' AND feature_json->>'mcp_server' IS NOT NULL "
            "  AND (feature_json->>'latency_ms')::DOUBLE > 0 AND feature_json->>'outcome' <> 'ok') "
            "FROM claude_stream"
        ).fetchone()  # type: ignore[misc]
        assert model > EVENTS // 10 and tool > 0  # model calls with figures; failed MCP tool calls
        atoms = con.execute("SELECT count(*) FROM insight_atoms").fetchone()[0]  # type: ignore[index]
        assert atoms == counts_of(con, "learned_insight") > 0
        snapshots = len(list((home / "context").glob("*.json")))
        assert snapshots == con.execute("SELECT count(*) FROM context_cache").fetchone()[0] > 0  # type: ignore[index]
    finally:
        con.close()
    assert not list((home / "queue").glob("*.ndjson"))  # every segment loaded and acknowledged

    monkeypatch.setattr(sys, "argv", [*sys.argv, "--reuse"])  # the queries again, on the same warehouse
    scale.main()
    again = capsys.readouterr().out
    assert "generated" not in again and re.search(
        r"^get_context(?: +[\d.]+ +[\d.]+ +[\d.]+x +[\d,]+){2}$", again, re.M
    )


def counts_of(con: duckdb.DuckDBPyConnection, activity: str) -> int:
    return int(con.execute("SELECT count(*) FROM claude_stream WHERE activity = ?", [activity]).fetchone()[0])  # type: ignore[index]
