"""`activitybi dataset SPEC.json [--out FILE]`: every customer in one statement, the same
rows as the one-customer template gives customer by customer, to Parquet, CSV, JSON or
the terminal."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from activitybi.cli import main
from activitybi.query.dataset import build_dataset_sql
from activitybi.warehouse.duckdb import DuckDBWarehouse

SPEC: dict[str, Any] = {
    "cohort": {
        "activity": "opened_pr",
        "columns": [
            {"column": "customer", "as": "who"},
            {"column": "activity_id", "as": "pr"},
            {"column": "ts", "type": "timestamp", "as": "at"},
        ],
    },
    "appends": [
        {
            "activity": "ran_tests",
            "relationship": "aggregate_after",
            "columns": [{"feature": "minutes", "type": "integer", "agg": "sum", "as": "minutes_after"}],
        },
        {
            "activity": "ran_tests",
            "relationship": "first_before",
            "columns": [{"column": "activity_id", "as": "first_test"}],
        },
    ],
}
CUSTOMERS = ["ann@x.io", "bo@x.io", "cy@x.io"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ACTIVITYBI_HOME", str(tmp_path))
    wh = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    wh.init()
    for i in range(60):
        wh.execute(
            "INSERT INTO claude_stream (activity_id, ts, customer, activity, feature_json, _customer_key) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                f"e{i:02d}",
                dt.datetime(2026, 1, 1) + dt.timedelta(minutes=i),
                CUSTOMERS[i % 3],
                "opened_pr" if i % 5 == 0 else "ran_tests",
                json.dumps({"minutes": i}),
                CUSTOMERS[i % 3],
            ],
        )
    wh.close()
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    return tmp_path


def per_customer(home: Path) -> list[dict[str, Any]]:
    """What the one-customer template gives, customer by customer."""
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    rows = []
    for who in CUSTOMERS:
        sql, params = build_dataset_sql(SPEC, who)
        cur = con.execute(sql, params)
        names = [d[0] for d in cur.description or ()]
        rows += [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    con.close()
    return rows


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_every_customer_in_one_file(home: Path, suffix: str) -> None:
    out = home / f"rows{suffix}"
    result = CliRunner().invoke(main, ["dataset", str(home / "spec.json"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    want = per_customer(home)
    assert len(want) == 12 and {r["who"] for r in want} == set(CUSTOMERS)
    assert f"wrote {len(want)} rows" in result.output
    if suffix == ".parquet":
        got = pq.read_table(out).to_pylist()
    elif suffix == ".csv":
        got = (
            duckdb.connect()
            .execute(f"SELECT * FROM read_csv('{out}', types={{'at': 'TIMESTAMP'}})")
            .fetchall()
        )
        got = [dict(zip(want[0], r, strict=True)) for r in got]
    else:
        got = orjson.loads(out.read_bytes())
        want = [{**r, "at": r["at"].isoformat(sep=" ")} for r in want]
    assert got == want


def test_terminal_table_and_refusals(home: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(main, ["dataset", str(home / "spec.json"), "--limit", "2"])
    assert shown.exit_code == 0, shown.output
    assert "ann@x.io" in shown.output and "2 of 12 rows shown" in shown.output
    bad = home / "bad.json"
    bad.write_text(json.dumps({**SPEC, "cohort": {**SPEC["cohort"], "activity": 7}}))
    refused = runner.invoke(main, ["dataset", str(bad)])
    assert refused.exit_code != 0 and "cohort.activity" in refused.output
    wrong = runner.invoke(main, ["dataset", str(home / "spec.json"), "--out", str(home / "x.xlsx")])
    assert wrong.exit_code != 0 and ".parquet" in wrong.output
