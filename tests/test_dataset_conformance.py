"""The dataset template against the ActivitySchema conformance corpus (67 cases).

The corpus lives outside the project, in ``../shared/conformance/activityschema`` relative to
the repository root; it is read in place, never copied. Each case is run once per customer
of the stream (the template always filters on one customer), and the union is compared with
``expected/<name>.csv`` as the corpus README says: a multiset of rows over the expected
file's columns, empty cell = NULL, numbers and timestamps compared by value, other strings
exactly.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import Counter
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import pytest

from activitybi.query.dataset import build_dataset_sql
from activitybi.query.dialect import to_snowflake

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "activityschema"
STREAM_COLUMNS = (
    "activity_id, ts, customer, activity, anonymous_customer_id, feature_json, revenue_impact, link"
)


def _manifest() -> dict[str, Any]:
    path = CORPUS / "manifest.json"
    if not path.is_file():
        pytest.fail(
            f"conformance corpus not found at {CORPUS} (expected ../shared next to the "
            "repository; it is read in place, never copied)",
            pytrace=False,
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


MANIFEST = _manifest() if (CORPUS / "manifest.json").is_file() else {"cases": []}
CASES = {c["name"]: c for c in MANIFEST["cases"]}


def test_corpus_is_present() -> None:
    manifest = _manifest()
    assert len(manifest["cases"]) == 67
    assert (CORPUS / manifest["stream"]).is_file()


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    manifest = _manifest()
    c = duckdb.connect(":memory:")
    ddl = resources.files("activitybi").joinpath("ddl", "duckdb", "001_stream.sql").read_text()
    c.execute(ddl)
    c.execute(
        f"INSERT INTO claude_stream ({STREAM_COLUMNS}) SELECT {STREAM_COLUMNS} "
        "FROM read_csv(?, header = true, all_varchar = true)",
        [str(CORPUS / manifest["stream"])],
    )
    assert c.execute("SELECT count(*) FROM claude_stream").fetchone() == (28,)
    return c


def _customers(c: duckdb.DuckDBPyConnection) -> list[str]:
    rows = c.execute(
        "SELECT DISTINCT coalesce(customer, anonymous_customer_id) FROM claude_stream ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def _kind(col: dict[str, Any]) -> str:
    """What the expected cell holds: number, timestamp, boolean or string."""
    agg = col.get("agg")
    if agg in ("count", "count_distinct", "sum_bool"):
        return "number"
    if agg in ("is_null", "not_null"):
        return "boolean"
    if agg in ("listagg", "listagg_distinct"):
        return "string"
    return {"integer": "number", "float": "number", "timestamp": "timestamp", "boolean": "boolean"}.get(
        col["type"], "string"
    )


def _expected_cell(kind: str, text: str) -> object:
    if text == "":
        return None
    if kind == "number":
        return float(text)
    if kind == "timestamp":
        return dt.datetime.fromisoformat(text)
    if kind == "boolean":
        return {"true": True, "false": False}[text.lower()]
    return text


def _result_cell(kind: str, value: object, where: str) -> object:
    if value is None:
        return None
    if kind == "number":
        assert isinstance(value, int | float | Decimal) and not isinstance(value, bool), where
        return float(value)
    if kind == "timestamp":
        assert isinstance(value, dt.datetime), where
        return value
    if kind == "boolean":
        assert isinstance(value, bool), where
        return value
    assert isinstance(value, str), where
    return value


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(con: duckdb.DuckDBPyConnection, name: str) -> None:
    case = CASES[name]
    spec = {"cohort": case["cohort"], "appends": case["appends"]}
    columns = [*case["cohort"]["columns"], *(c for a in case["appends"] for c in a["columns"])]
    kinds = {c["as"]: _kind(c) for c in columns}

    with (CORPUS / case["expected"]).open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        expected = Counter(
            tuple(_expected_cell(kinds[h], cell) for h, cell in zip(header, row, strict=True))
            for row in reader
        )

    got: Counter[tuple[object, ...]] = Counter()
    sql_texts = set()
    for customer in _customers(con):
        sql, params = build_dataset_sql(spec, customer)
        sql_texts.add(sql)
        cur = con.execute(sql, params)
        names = [d[0] for d in cur.description]
        assert names == [c["as"] for c in columns], "output columns in spec order"
        idx = [names.index(h) for h in header]
        for row in cur.fetchall():
            got[
                tuple(
                    _result_cell(kinds[h], row[i], f"{name}.{h}={row[i]!r}")
                    for h, i in zip(header, idx, strict=True)
                )
            ] += 1
    assert len(sql_texts) == 1, "the SQL text must not depend on the customer"
    missing, extra = sorted(map(str, expected - got)), sorted(map(str, got - expected))
    assert got == expected, f"{name}: missing {missing}, extra {extra}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_transpiles_to_snowflake(name: str) -> None:
    case = CASES[name]
    sql, params = build_dataset_sql({"cohort": case["cohort"], "appends": case["appends"]}, "1")
    out, values = to_snowflake(sql, params)
    assert out.count("?") == len(values)
    assert "claude_stream" in out
