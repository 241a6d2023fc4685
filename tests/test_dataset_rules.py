"""The dataset template's own rules, where the conformance corpus is silent.

A hand-built stream with equal timestamps, NULL and missing features, a customer with no
appended activity, an anonymous customer and a second customer whose rows must never show;
SQL-injection strings in every string slot; and a property test against a small Python
model of the documented rules (random streams full of ties and NULLs).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activitybi.query.dataset import (
    AGGREGATIONS,
    RELATIONSHIP_ALIASES,
    RELATIONSHIPS,
    DatasetSpec,
    DatasetSpecError,
    build_dataset_sql,
)

T = dt.datetime
A, B, C, ANON = "alice@example.com", "bob@example.com", "carol@example.com", "anon-1"


@dataclass(frozen=True)
class Ev:
    activity_id: str
    ts: dt.datetime
    customer: str | None
    activity: str
    features: dict[str, Any] = field(default_factory=dict)
    anonymous_customer_id: str | None = None


STREAM = [
    # alice: a02 has the same ts as the first sign-up; a03/a04 tie on ts (a03 < a04 by id);
    # a07 has the same ts as the second sign-up (a05). a03's page is NULL, a04 has no n.
    Ev("a01", T(2024, 1, 1, 10), A, "signed_up"),
    Ev("a02", T(2024, 1, 1, 10), A, "visited_page", {"page": "home", "n": 1}),
    Ev("a04", T(2024, 1, 2, 9), A, "visited_page", {"page": "pricing"}),
    Ev("a03", T(2024, 1, 2, 9), A, "visited_page", {"page": None, "n": 2}),
    Ev("a05", T(2024, 1, 3, 12), A, "signed_up"),
    Ev("a07", T(2024, 1, 3, 12), A, "visited_page", {"page": "blog", "n": 7}),
    Ev("a06", T(2024, 1, 4, 8), A, "visited_page", {"page": "docs", "n": 4}),
    # alice, also carrying an anonymous id: coalesce() makes it alice's, never anon-1's
    Ev("a08", T(2024, 1, 5, 8), A, "visited_page", {"page": "faq", "n": None}, ANON),
    # bob: values that must never appear in another customer's result
    Ev("b01", T(2024, 1, 1, 9), B, "signed_up"),
    Ev("b02", T(2024, 1, 1, 11), B, "visited_page", {"page": "bob-secret", "n": 1000}),
    Ev("b03", T(2024, 1, 2, 9, 30), B, "visited_page", {"page": "bob-private", "n": 2000}),
    # carol signs up and does nothing else
    Ev("c01", T(2024, 1, 2, 10), C, "signed_up"),
    # an anonymous visitor (customer NULL)
    Ev("n01", T(2024, 1, 1, 8), None, "signed_up", {}, ANON),
    Ev("n02", T(2024, 1, 1, 8, 30), None, "visited_page", {"page": "anon-page", "n": 5}, ANON),
]
CUSTOMERS = (A, B, C, ANON)


def _load(con: duckdb.DuckDBPyConnection, events: list[Ev]) -> None:
    con.execute("DELETE FROM claude_stream")
    if not events:
        return
    rows = pa.table(
        {  # one INSERT: executemany costs a statement per row
            "activity_id": [e.activity_id for e in events],
            "ts": pa.array([e.ts for e in events], pa.timestamp("us")),
            "customer": pa.array([e.customer for e in events], pa.string()),
            "activity": [e.activity for e in events],
            "anonymous_customer_id": pa.array([e.anonymous_customer_id for e in events], pa.string()),
            "feature_json": [json.dumps(e.features) for e in events],
        }
    )
    con.register("_rows", rows)
    try:
        con.execute(
            "INSERT INTO claude_stream (activity_id, ts, customer, activity, "
            "anonymous_customer_id, feature_json) SELECT * FROM _rows"
        )
    finally:
        con.unregister("_rows")


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute(resources.files("activitybi").joinpath("ddl", "duckdb", "001_stream.sql").read_text())
    return con


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = _connect()
    _load(c, STREAM)
    yield c
    c.close()


def run(con: duckdb.DuckDBPyConnection, spec: dict[str, Any], customer: str) -> list[dict[str, Any]]:
    sql, params = build_dataset_sql(spec, customer)
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def signups(*appends: dict[str, Any], occurrence: str = "all", **cohort: Any) -> dict[str, Any]:
    return {
        "cohort": {
            "activity": "signed_up",
            "occurrence": occurrence,
            **cohort,
            "columns": [{"column": "activity_id", "as": "id"}],
        },
        "appends": list(appends),
    }


def pages(relationship: str, *columns: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"activity": "visited_page", "relationship": relationship, **extra, "columns": list(columns)}


def col(name: str, as_: str, type_: str = "string", **extra: Any) -> dict[str, Any]:
    return {"column": name, "type": type_, "as": as_, **extra}


def feat(key: str, as_: str, type_: str = "string", **extra: Any) -> dict[str, Any]:
    return {"feature": key, "type": type_, "as": as_, **extra}


def by_id(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return {r["id"]: r[key] for r in rows}


# --------------------------------------------------------------------------- equal timestamps


@pytest.mark.parametrize(
    ("relationship", "expected"),
    [
        # a02 shares a01's ts: only *_ever sees it; a07 shares a05's ts: in no window of a05.
        ("first_ever", {"a01": "a02", "a05": "a02"}),
        ("last_ever", {"a01": "a08", "a05": "a08"}),
        ("first_before", {"a01": None, "a05": "a02"}),
        ("last_before", {"a01": None, "a05": "a04"}),  # a03/a04 tie on ts: a04 is later by id
        ("first_after", {"a01": "a03", "a05": "a06"}),  # a03 before a04 by id; a07 excluded
        ("last_after", {"a01": "a08", "a05": "a08"}),
        ("first_in_between", {"a01": "a03", "a05": "a06"}),
        ("last_in_between", {"a01": "a04", "a05": "a08"}),  # a07 is at p.next: excluded
    ],
)
def test_ties_and_strict_boundaries(
    con: duckdb.DuckDBPyConnection, relationship: str, expected: dict[str, str | None]
) -> None:
    rows = run(con, signups(pages(relationship, col("activity_id", "page_id"))), A)
    assert by_id(rows, "page_id") == expected


@pytest.mark.parametrize(
    ("relationship", "nth", "expected"),
    [
        ("nth_ever", 2, {"a01": "a03", "a05": "a03"}),
        ("nth_before", 1, {"a01": None, "a05": "a02"}),  # a02 is at a01's ts: not before it
        ("nth_after", 4, {"a01": "a07", "a05": None}),  # a07 is at a05's ts: not after it
        ("nth_in_between", 2, {"a01": "a03", "a05": None}),
        ("nth_in_between", 5, {"a01": None, "a05": "a06"}),
    ],
)
def test_nth_is_the_overall_occurrence(
    con: duckdb.DuckDBPyConnection, relationship: str, nth: int, expected: dict[str, str | None]
) -> None:
    rows = run(con, signups(pages(relationship, col("activity_id", "page_id"), nth=nth)), A)
    assert by_id(rows, "page_id") == expected


def test_occurrence_and_repeated_at_of_a_first_or_last_append(con: duckdb.DuckDBPyConnection) -> None:
    # alice's pages: a02 first (the next, a03/a04, at 01-02 09:00), a08 last (the 6th, no next).
    derived = (col("activity_occurrence", "occ", "integer"), col("activity_repeated_at", "next", "timestamp"))
    got = {
        rel: [(r["id"], r["occ"], r["next"]) for r in run(con, signups(pages(rel, *derived)), A)]
        for rel in ("first_ever", "last_ever", "first_before", "last_after")
    }
    first, last = (1, T(2024, 1, 2, 9)), (6, None)
    assert got == {
        "first_ever": [("a01", *first), ("a05", *first)],
        "last_ever": [("a01", *last), ("a05", *last)],
        "first_before": [("a01", None, None), ("a05", *first)],  # a02 is at a01's ts
        "last_after": [("a01", *last), ("a05", *last)],
    }


def test_aggregate_windows_are_strict(con: duckdb.DuckDBPyConnection) -> None:
    count = {"column": "activity_id", "agg": "count"}
    spec = signups(
        pages("aggregate_before", {**count, "as": "before"}),
        pages("aggregate_after", {**count, "as": "after"}),
        pages("aggregate_in_between", {**count, "as": "between"}),
        pages("aggregate_all_ever", {**count, "as": "ever"}),
    )
    rows = {r["id"]: r for r in run(con, spec, A)}
    assert {k: (r["before"], r["after"], r["between"], r["ever"]) for k, r in rows.items()} == {
        "a01": (0, 5, 2, 6),  # a02 (same ts) in no window; a07 (at p.next) not in between
        "a05": (3, 2, 2, 6),  # a07 (same ts) neither before nor after
    }


def test_cohort_activity_appended_to_itself_excludes_its_own_row(con: duckdb.DuckDBPyConnection) -> None:
    spec = signups(
        {
            "activity": "signed_up",
            "relationship": "first_after",
            "columns": [col("activity_id", "next_signup")],
        },
        {
            "activity": "signed_up",
            "relationship": "aggregate_before",
            "columns": [{"column": "activity_id", "agg": "count", "as": "earlier"}],
        },
    )
    rows = run(con, spec, A)
    assert [(r["id"], r["next_signup"], r["earlier"]) for r in rows] == [("a01", "a05", 0), ("a05", None, 1)]


def test_cohort_selection_and_repeated_at(con: duckdb.DuckDBPyConnection) -> None:
    cols = [
        col("activity_id", "id"),
        col("activity_occurrence", "occ", "integer"),
        col("activity_repeated_at", "next_at", "timestamp"),
    ]
    got = {}
    for occ, extra in (("all", {}), ("first", {}), ("last", {}), ("nth", {"nth": 2}), ("nth", {"nth": 3})):
        spec = {"cohort": {"activity": "signed_up", "occurrence": occ, **extra, "columns": cols}}
        got[occ + str(extra.get("nth", ""))] = [tuple(r.values()) for r in run(con, spec, A)]
    assert got == {
        "all": [("a01", 1, T(2024, 1, 3, 12)), ("a05", 2, None)],
        "first": [("a01", 1, T(2024, 1, 3, 12))],
        "last": [("a05", 2, None)],
        "nth2": [("a05", 2, None)],
        "nth3": [],
    }


# --------------------------------------------------------------------------- NULL features


def test_null_and_missing_features_in_aggregates(con: duckdb.DuckDBPyConnection) -> None:
    def n(agg: str) -> dict[str, Any]:
        return feat("n", f"n_{agg}", "integer", agg=agg)

    def page(agg: str) -> dict[str, Any]:
        return feat(
            "page", f"page_{agg}", agg=agg, **({"delimiter": ","} if agg.startswith("listagg") else {})
        )

    spec = signups(
        pages(
            "aggregate_all_ever",
            {"column": "activity_id", "agg": "count", "as": "rows"},
            *(
                n(a)
                for a in (
                    "count",
                    "count_distinct",
                    "sum",
                    "min",
                    "max",
                    "avg",
                    "first_value",
                    "last_value",
                    "is_null",
                    "not_null",
                )
            ),
            *(
                page(a)
                for a in ("count", "listagg", "listagg_distinct", "first_value", "last_value", "is_null")
            ),
        ),
        occurrence="first",
    )
    [row] = run(con, spec, A)
    # alice's visits in (ts, id) order: a02 n=1 home, a03 n=2 page=NULL, a04 (no n) pricing,
    # a07 n=7 blog, a06 n=4 docs, a08 n=NULL faq
    assert row == {
        "id": "a01",
        "rows": 6,
        "n_count": 4,
        "n_count_distinct": 4,
        "n_sum": 14,
        "n_min": 1,
        "n_max": 7,
        "n_avg": 3.5,
        "n_first_value": 1,
        "n_last_value": 4,  # last non-null value: a06, not a08's NULL
        "n_is_null": False,
        "n_not_null": True,
        "page_count": 5,
        "page_listagg": "blog,docs,faq,home,pricing",
        "page_listagg_distinct": "blog,docs,faq,home,pricing",
        "page_first_value": "home",
        "page_last_value": "faq",
        "page_is_null": False,
    }


def test_all_null_values_aggregate_like_no_rows(con: duckdb.DuckDBPyConnection) -> None:
    cols = [
        feat("n", f"n_{a}", "integer", agg=a)
        for a in ("count", "sum", "min", "first_value", "is_null", "not_null")
    ]
    cols.append(feat("n", "n_list", "integer", agg="listagg"))
    spec = signups(
        pages("aggregate_all_ever", *cols, filters=[{"feature": "page", "op": "is_null"}]), occurrence="first"
    )
    [row] = run(con, spec, A)  # only a03 (page NULL) matches, and its n is 2
    assert row["n_count"] == 1 and row["n_sum"] == 2
    spec = signups(
        pages("aggregate_all_ever", *cols, filters=[{"feature": "n", "type": "integer", "op": "is_null"}]),
        occurrence="first",
    )
    [row] = run(con, spec, A)  # a04 (no n) and a08 (n null): rows, but every value NULL
    assert row == {
        "id": "a01",
        "n_count": 0,
        "n_sum": 0,
        "n_min": None,
        "n_first_value": None,
        "n_is_null": True,
        "n_not_null": False,
        "n_list": None,
    }


def test_a_chosen_row_with_a_null_value_gives_null(con: duckdb.DuckDBPyConnection) -> None:
    # first_after of a01 is a03, whose page is NULL: the value is NULL (not a04's 'pricing'),
    # and every column of the append comes from that same row.
    spec = signups(
        pages("first_after", feat("page", "page"), col("activity_id", "page_id"), feat("n", "n", "integer")),
        occurrence="first",
    )
    assert run(con, spec, A) == [{"id": "a01", "page": None, "page_id": "a03", "n": 2}]


def test_filters_on_null_values(con: duckdb.DuckDBPyConnection) -> None:
    def ids(*filters: dict[str, Any]) -> list[str]:
        spec = {
            "cohort": {
                "activity": "visited_page",
                "filters": list(filters),
                "columns": [col("activity_id", "id")],
            }
        }
        return [r["id"] for r in run(con, spec, A)]

    assert ids({"feature": "page", "op": "!=", "value": "home"}) == ["a04", "a07", "a06", "a08"]
    assert ids({"feature": "page", "op": "is_null"}) == ["a03"]
    assert ids({"feature": "n", "type": "integer", "op": "not_in", "value": [1, 7]}) == ["a03", "a06"]
    assert ids({"feature": "n", "type": "integer", "op": "in", "value": [1, 7]}) == ["a02", "a07"]
    assert ids(
        {"feature": "n", "type": "integer", "op": ">=", "value": 2},
        {"column": "ts", "type": "timestamp", "op": "<", "value": "2024-01-04"},
    ) == ["a03", "a07"]
    aware = dt.datetime(2024, 1, 4, 9, tzinfo=dt.timezone(dt.timedelta(hours=1)))  # 08:00 UTC
    assert ids({"column": "ts", "type": "timestamp", "op": ">=", "value": aware}) == ["a06", "a08"]


def test_filters_recompute_occurrence(con: duckdb.DuckDBPyConnection) -> None:
    spec = {
        "cohort": {
            "activity": "visited_page",
            "occurrence": "first",
            "filters": [{"feature": "n", "type": "integer", "op": ">", "value": 2}],
            "columns": [col("activity_id", "id"), col("activity_occurrence", "occ", "integer")],
        },
        "appends": [
            pages(
                "nth_ever",
                col("activity_id", "second_big"),
                nth=2,
                filters=[{"feature": "n", "type": "integer", "op": ">", "value": 2}],
            )
        ],
    }
    assert run(con, spec, A) == [{"id": "a07", "occ": 1, "second_big": "a06"}]


# --------------------------------------------------------------------------- missing activity


def test_customer_without_appended_activity(con: duckdb.DuckDBPyConnection) -> None:
    spec = signups(
        pages("first_ever", col("activity_id", "first_page"), feat("n", "first_n", "integer")),
        pages("last_before", col("ts", "last_before_at", "timestamp")),
        pages(
            "aggregate_all_ever",
            *(
                feat("n", f"n_{a}", "integer", agg=a)
                for a in (
                    "count",
                    "count_distinct",
                    "sum",
                    "min",
                    "max",
                    "avg",
                    "listagg",
                    "listagg_distinct",
                    "first_value",
                    "last_value",
                    "is_null",
                    "not_null",
                )
            ),
        ),
        pages("aggregate_after", feat("flag", "flags", "boolean", agg="sum_bool")),
    )
    assert run(con, spec, C) == [
        {
            "id": "c01",
            "first_page": None,
            "first_n": None,
            "last_before_at": None,
            "n_count": 0,
            "n_count_distinct": 0,
            "n_sum": 0,
            "n_min": None,
            "n_max": None,
            "n_avg": None,
            "n_listagg": None,
            "n_listagg_distinct": None,
            "n_first_value": None,
            "n_last_value": None,
            "n_is_null": True,
            "n_not_null": False,
            "flags": 0,
        }
    ]


def test_no_cohort_rows_gives_no_rows(con: duckdb.DuckDBPyConnection) -> None:
    spec = signups(pages("first_ever", col("activity_id", "p")))
    spec["cohort"]["activity"] = "never_happened"
    assert run(con, spec, A) == []
    assert run(con, signups(pages("first_ever", col("activity_id", "p"))), "nobody") == []


def _all_relationship_spec(occurrence: str, **cohort: Any) -> dict[str, Any]:
    appends: list[dict[str, Any]] = []
    for rel in RELATIONSHIPS:
        name = rel.replace("aggregate", "agg")
        if rel.startswith("aggregate_"):
            columns = [
                {"column": "activity_id", "agg": "count", "as": f"{name}_n"},
                feat("page", f"{name}_pages", agg="listagg"),
            ]
        else:
            columns = [col("activity_id", f"{name}_id"), feat("page", f"{name}_page")]
        activity = "signed_up" if len(appends) % 3 == 2 else "visited_page"
        appends.append(
            {
                "activity": activity,
                "relationship": rel,
                "columns": columns,
                **({"nth": 2} if rel.startswith("nth_") else {}),
            }
        )
    return {
        "cohort": {
            "activity": "signed_up",
            "occurrence": occurrence,
            **cohort,
            "columns": [col("activity_id", "id")],
        },
        "appends": appends,
    }


@pytest.mark.parametrize("occurrence", ["all", "first", "last", "nth"])
def test_cohort_rows_never_dropped_or_duplicated(con: duckdb.DuckDBPyConnection, occurrence: str) -> None:
    extra = {"nth": 2} if occurrence == "nth" else {}
    for customer in CUSTOMERS:
        cohort_only = run(con, {"cohort": _all_relationship_spec(occurrence, **extra)["cohort"]}, customer)
        ids = [r["id"] for r in cohort_only]
        assert len(set(ids)) == len(ids)
        full = run(con, _all_relationship_spec(occurrence, **extra), customer)
        assert [r["id"] for r in full] == ids, (customer, occurrence)
        if customer not in (A, C):
            continue
        for rel in RELATIONSHIPS:  # and one append at a time
            spec = _all_relationship_spec(occurrence, **extra)
            spec["appends"] = [a for a in spec["appends"] if a["relationship"] == rel]
            assert [r["id"] for r in run(con, spec, customer)] == ids, (customer, rel)


# --------------------------------------------------------------------------- isolation


def _values(rows: list[dict[str, Any]]) -> set[str]:
    out = set()
    for r in rows:
        for v in r.values():
            if v is not None:
                out.update(re.split(r"[,\n]", str(v)))
    return out


def test_other_customers_rows_never_appear(con: duckdb.DuckDBPyConnection) -> None:
    spec = _all_relationship_spec("all")
    for a in spec["appends"]:
        a["columns"].append(
            feat(
                "n",
                f"{a['columns'][0]['as']}_n",
                "integer",
                **({"agg": "sum"} if "agg" in a["columns"][0] else {}),
            )
        )
    owned = {
        c: {
            e.activity_id
            for e in STREAM
            if (e.customer if e.customer is not None else e.anonymous_customer_id) == c
        }
        for c in CUSTOMERS
    }
    others_values = {"bob-secret", "bob-private", "1000", "2000", "anon-page"}
    for customer in CUSTOMERS:
        rows = run(con, spec, customer)
        assert rows, customer
        seen = _values(rows)
        for other in CUSTOMERS:
            if other != customer:
                assert not seen & owned[other], (customer, other)
        if customer == A:
            assert not seen & others_values
            assert "a08" in seen  # alice's row that also carries anon-1's id is hers
    anon = run(con, signups(pages("first_ever", col("activity_id", "p"), col("customer", "who"))), ANON)
    assert anon == [{"id": "n01", "p": "n02", "who": None}]


def test_customer_is_required() -> None:
    spec = signups()
    with pytest.raises(TypeError):
        build_dataset_sql(spec)  # type: ignore[call-arg]
    for bad in ("", None, 1, b"alice", ["alice"]):
        with pytest.raises(DatasetSpecError, match="customer"):
            build_dataset_sql(spec, bad)  # type: ignore[arg-type]
    sql, params = build_dataset_sql(spec, A)
    assert sql.count("(customer = ? OR (customer IS NULL AND anonymous_customer_id = ?))") == 1
    assert sql.count("claude_stream") == 1  # the one read of the stream is the filtered one
    assert params[:2] == [A, A]


def test_table_is_whitelisted() -> None:
    for bad in ("other", "claude_stream; DROP TABLE x", "CLAUDE_STREAM", "main.claude_stream"):
        with pytest.raises(DatasetSpecError, match="table"):
            build_dataset_sql(signups(), A, table=bad)


# --------------------------------------------------------------------------- injection

INJECTIONS = [
    "x'; DROP TABLE claude_stream; --",
    "' OR '1'='1",
    "' OR 1=1 --",
    '"; select 1; --',
    "$$",
    "$$; DROP TABLE claude_stream; $$",
    "\x00",
    "a\x00b' --",
    "\\x00",
    "\\",
    "\\'; --",
    "\u2019 OR \u20181\u2019=\u20181",
    "\u201c; DROP TABLE claude_stream; --\u201d",
    "\uff07 OR \uff071\uff07=\uff071",
    "?",
    "$1",
    "%s",
    "{0}",
    "*/ SELECT 1 /*",
    "\n; SELECT * FROM claude_stream; --",
    "'); DELETE FROM claude_stream; --",
    "Robert'); DROP TABLE Students;--",
    f"{A}' OR coalesce(customer, anonymous_customer_id) <> '",
    B,
    "UNION SELECT activity_id FROM claude_stream",
    '$."page"',
    "🙂",
    " ",
    "",
    "x" * 300,
]


def _slot_spec(value: str, slot: str) -> tuple[dict[str, Any], str]:
    """A spec using ``value`` in ``slot``, and the customer to run it for."""
    cohort_activity = value if slot == "cohort_activity" else "signed_up"
    append_activity = value if slot == "append_activity" else "visited_page"
    fvalue = value if slot == "filter_value" else "home"
    invalue = value if slot == "in_value" else "docs"
    key = value if slot == "feature_key" else "page"
    delimiter = value if slot == "delimiter" else ","
    alias = value if slot == "alias" else "pages"
    spec: dict[str, Any] = {
        "cohort": {
            "activity": cohort_activity,
            "occurrence": "all",
            "filters": [{"column": "activity", "op": "!=", "value": fvalue}],
            "columns": [col("activity_id", "id"), feat(key, "cohort_feature")],
        },
        "appends": [
            pages(
                "first_after",
                col("activity_id", "next_page"),
                filters=[{"feature": key, "op": "not_in", "value": [invalue, fvalue]}],
            ),
            pages(
                "aggregate_all_ever",
                feat(key, alias, agg="listagg", delimiter=delimiter),
                filters=[{"feature": "page", "op": "!=", "value": fvalue}],
            ),
        ],
    }
    for append in spec["appends"]:
        append["activity"] = append_activity
    return spec, value if slot == "customer" else A


SLOTS = [
    "cohort_activity",
    "append_activity",
    "filter_value",
    "in_value",
    "feature_key",
    "delimiter",
    "alias",
    "customer",
]
VALUE_SLOTS = ["cohort_activity", "append_activity", "filter_value", "in_value", "delimiter", "customer"]
BENIGN_SQL = build_dataset_sql(*_slot_spec("benign", "filter_value"))[0]


@pytest.mark.parametrize("slot", SLOTS)
def test_injection_strings_are_data_or_refused(con: duckdb.DuckDBPyConnection, slot: str) -> None:
    total = con.execute("SELECT count(*) FROM claude_stream").fetchone()
    for value in INJECTIONS:
        spec, customer = _slot_spec(value, slot)
        try:
            sql, params = build_dataset_sql(spec, customer)
        except DatasetSpecError as e:
            assert slot in ("feature_key", "alias") or value == "" or len(value) > 64, (slot, value, e)
            continue
        if slot == "alias":  # only an alias matching the strict pattern gets into the text
            assert re.fullmatch(r"[a-z][a-z0-9_]{0,62}", value)
            continue
        assert sql == BENIGN_SQL, (slot, value)
        assert value in params
        rows = con.execute(sql, params).fetchall()
        if slot == "customer":
            assert rows == [] or value in CUSTOMERS
        ids = {r[0] for r in rows}
        owner = customer if slot == "customer" else A
        assert ids <= {e.activity_id for e in STREAM if (e.customer or e.anonymous_customer_id) == owner}
    assert con.execute("SELECT count(*) FROM claude_stream").fetchone() == total


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=40), slot=st.sampled_from(SLOTS))
def test_property_sql_text_never_depends_on_values(
    con: duckdb.DuckDBPyConnection, value: str, slot: str
) -> None:
    spec, customer = _slot_spec(value, slot)
    try:
        sql, params = build_dataset_sql(spec, customer)
    except DatasetSpecError:
        # only names with a pattern (feature keys, output names) and empty strings are refused
        assert slot in ("feature_key", "alias") or value == ""
        return
    if slot == "alias":
        assert re.fullmatch(r"[a-z][a-z0-9_]{0,62}", value)
        return
    assert sql == BENIGN_SQL
    if slot == "feature_key":
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}", value)
    assert value in params
    rows = con.execute(sql, params).fetchall()
    owner = customer
    assert {r[0] for r in rows} <= {
        e.activity_id for e in STREAM if (e.customer or e.anonymous_customer_id) == owner
    }


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("mutate", "field_name"),
    [
        (lambda s: s["appends"][0].update(relationship="first_sometime"), "relationship"),
        (lambda s: s["appends"][0].update(relationship="nth_ever"), "nth"),
        (lambda s: s["appends"][0].update(nth=2), "nth"),
        (lambda s: s["appends"][0].update(nth=True, relationship="nth_ever"), "nth"),
        (lambda s: s["appends"][0].update(nth="2", relationship="nth_ever"), "nth"),
        (lambda s: s["appends"][0].update(nth=0, relationship="nth_ever"), "nth"),
        (lambda s: s["appends"][0]["columns"][0].update(agg="count"), "agg"),
        (lambda s: s["appends"][0]["columns"][0].update(agg="median"), "agg"),
        (
            lambda s: s["appends"][0]["columns"][0].update({"as": "Bad Name"}),
            r"columns\.0\.as: output name must match",
        ),
        (
            lambda s: s["appends"][0]["columns"][0].update({"as": "x\n"}),
            r"columns\.0\.as: output name must match",
        ),
        (lambda s: s["appends"][0]["columns"][0].update({"as": "id"}), "used twice"),
        (lambda s: s["appends"][0]["columns"][0].update(column="password"), "column"),
        (
            lambda s: s["appends"][0]["columns"][0].update(column="ts", type="integer"),
            "column ts has type timestamp",
        ),
        (lambda s: s["appends"][0]["columns"][0].update(type="varchar"), "type"),
        (lambda s: s["appends"][0]["columns"][0].update(feature="page"), "exactly one"),
        (lambda s: s["appends"][0]["columns"][0].update(sql="1; DROP"), "sql"),
        (
            lambda s: s["appends"][0].update(
                filters=[{"feature": "n", "type": "integer", "op": "=", "value": "1"}]
            ),
            "value",
        ),
        (lambda s: s["appends"][0].update(filters=[{"feature": "n", "op": "like", "value": "x"}]), "op"),
        (lambda s: s["appends"][0].update(filters=[{"feature": "n", "op": "in", "value": []}]), "value"),
        (lambda s: s["appends"][0].update(filters=[{"feature": "n", "op": "is_null", "value": 1}]), "value"),
        (
            lambda s: s["appends"][0].update(
                filters=[{"column": "activity_occurrence", "type": "integer", "op": "=", "value": 1}]
            ),
            "activity_occurrence",
        ),
        (
            lambda s: s["appends"][0].update(
                filters=[{"column": "ts", "type": "timestamp", "op": ">", "value": "yesterday"}]
            ),
            "timestamp",
        ),
        (lambda s: s["cohort"].update(occurrence="nth"), "nth"),
        (lambda s: s["cohort"].update(occurrence="time_spine"), "time_spine"),
        (lambda s: s["cohort"].update(activity=7), "activity"),
        (lambda s: s["cohort"].update(columns=[]), "columns"),
        (lambda s: s["appends"].append(pages("aggregate_after", col("activity_id", "z"))), "agg"),
        (lambda s: s["appends"].append(pages("aggregate_after", feat("page", "z", agg="sum"))), "sum"),
        (
            lambda s: s["appends"].append(
                pages("aggregate_after", feat("page", "z", agg="count", delimiter=","))
            ),
            "delimiter",
        ),
    ],
)
def test_invalid_specs_are_refused_naming_the_field(mutate: Any, field_name: str) -> None:
    spec = signups(pages("first_ever", col("activity_id", "page_id")))
    mutate(spec)
    with pytest.raises(DatasetSpecError, match=field_name):
        build_dataset_sql(spec, A)


def test_relationship_aliases_and_model_input() -> None:
    for alias, canonical in RELATIONSHIP_ALIASES.items():
        columns = [
            {
                "column": "activity_id",
                "as": "x",
                **({"agg": "count"} if canonical.startswith("aggregate_") else {}),
            }
        ]
        nth = {"nth": 1} if canonical.startswith("nth_") else {}
        assert build_dataset_sql(signups(pages(alias, *columns, **nth)), A) == build_dataset_sql(
            signups(pages(canonical, *columns, **nth)), A
        )
    spec = signups(pages("first_ever", col("activity_id", "page_id")))
    model = DatasetSpec.model_validate(spec)
    assert build_dataset_sql(model, A) == build_dataset_sql(spec, A)
    # a model built without validation is validated again
    bad = DatasetSpec.model_construct(cohort=model.cohort, appends=[model.appends[0]] * 2)
    with pytest.raises(DatasetSpecError, match="used twice"):
        build_dataset_sql(bad, A)
    schema = DatasetSpec.model_json_schema()
    assert "cohort" in schema["properties"]
    assert set(AGGREGATIONS) <= set(json.dumps(schema).replace('"', " ").split())


# --------------------------------------------------------------------------- time spine


def test_time_spine_intervals_and_strict_period_start() -> None:
    con = _connect()
    _load(
        con,
        [
            Ev("s1", T(2024, 1, 3, 12), A, "visited_page"),
            Ev("s2", T(2024, 1, 17, 9), A, "visited_page"),
            Ev("p1", T(2024, 1, 8), A, "bought", {"total": 5}),  # Monday 00:00: no week has it
            Ev("p2", T(2024, 1, 9, 1), A, "bought", {"total": 7}),
            Ev("p3", T(2023, 12, 31, 12), A, "bought", {"total": 100}),  # before the first period
            Ev("x1", T(2024, 1, 9, 1), B, "bought", {"total": 1000}),
        ],
    )

    def spine(interval: str) -> list[tuple[Any, ...]]:
        spec = {
            "cohort": {
                "activity": "visited_page",
                "occurrence": "time_spine",
                "time_spine": {"interval": interval},
                "columns": [
                    col("ts", "period", "timestamp"),
                    col("activity_occurrence", "k", "integer"),
                    col("activity_repeated_at", "period_end", "timestamp"),
                    col("customer", "who"),
                ],
            },
            "appends": [
                {
                    "activity": "bought",
                    "relationship": "aggregate_in_between",
                    "columns": [feat("total", "total", "integer", agg="sum")],
                }
            ],
        }
        return [tuple(r.values()) for r in run(con, spec, A)]

    assert spine("week") == [  # ISO weeks from Monday; p1 at exactly 00:00 is in no period
        (T(2024, 1, 1), 1, T(2024, 1, 8), A, 0),
        (T(2024, 1, 8), 2, T(2024, 1, 15), A, 7),
        (T(2024, 1, 15), 3, T(2024, 1, 22), A, 0),
    ]
    assert spine("month") == [(T(2024, 1, 1), 1, T(2024, 2, 1), A, 12)]
    assert len(spine("day")) == 15
    assert spine("quarter") == [(T(2024, 1, 1), 1, T(2024, 4, 1), A, 12)]
    assert spine("year") == [(T(2024, 1, 1), 1, T(2025, 1, 1), A, 12)]

    spec = {
        "cohort": {
            "activity": "visited_page",
            "occurrence": "time_spine",
            "time_spine": {"interval": "year", "end_period": "now"},
            "columns": [col("ts", "period", "timestamp")],
        }
    }
    this_year = dt.datetime.now(dt.UTC).year
    assert [r["period"].year for r in run(con, spec, A)] == list(range(2024, this_year + 1))
    spec["cohort"]["columns"] = [feat("page", "page")]
    with pytest.raises(DatasetSpecError, match="time spine"):
        build_dataset_sql(spec, A)


# --------------------------------------------------------------------------- model of the rules

ACTS = ("s", "v")


_AGG_MODEL: dict[str, Any] = {  # non-null values in (ts, activity_id) order -> aggregate
    "count": len,
    "count_distinct": lambda nn: len(set(nn)),
    "sum": sum,
    "min": lambda nn: min(nn, default=None),
    "max": lambda nn: max(nn, default=None),
    "first_value": lambda nn: nn[0] if nn else None,
    "last_value": lambda nn: nn[-1] if nn else None,
    "is_null": lambda nn: not nn,
    "not_null": bool,
    "listagg": lambda nn: ",".join(str(v) for v in sorted(nn)) if nn else None,
    "listagg_distinct": lambda nn: ",".join(str(v) for v in sorted(set(nn))) if nn else None,
}


def _oracle(events: list[Ev], customer: str, spec: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The documented rules, in plain Python, for the shapes _specs() draws."""
    mine = [
        e for e in events if (e.customer if e.customer is not None else e.anonymous_customer_id) == customer
    ]

    def x(e: Ev) -> Any:
        return e.features.get("x")

    def keep(e: Ev, filters: list[dict[str, Any]]) -> bool:
        for f in filters:
            v = x(e)
            if f["op"] == "is_null":
                ok = v is None
            elif v is None:
                ok = False
            else:
                ok = {">": v > f["value"], "!=": v != f["value"]}[f["op"]]
            if not ok:
                return False
        return True

    def rows(activity: str, filters: list[dict[str, Any]]) -> list[Ev]:
        return sorted(
            (e for e in mine if e.activity == activity and keep(e, filters)),
            key=lambda e: (e.ts, e.activity_id),
        )

    def value(e: Ev | None, c: dict[str, Any], of: list[Ev]) -> Any:
        """Column or feature ``c`` of row ``e`` of ``of`` (its activity, after filters)."""
        if e is None:
            return None
        if "feature" in c:
            return x(e)
        if c["column"] == "activity_occurrence":
            return of.index(e) + 1
        if c["column"] == "activity_repeated_at":
            later = of[of.index(e) + 1 :]
            return later[0].ts if later else None
        return getattr(e, c["column"])

    co = spec["cohort"]
    src = rows(co["activity"], co["filters"])
    nexts = [src[i + 1].ts if i + 1 < len(src) else None for i in range(len(src))]
    picked = [
        (i, p)
        for i, p in enumerate(src)
        if co["occurrence"] == "all"
        or (co["occurrence"] == "first" and i == 0)
        or (co["occurrence"] == "last" and nexts[i] is None)
        or (co["occurrence"] == "nth" and i + 1 == co["nth"])
    ]
    out = []
    for i, p in picked:
        row: list[Any] = [p.activity_id]
        for a in spec["appends"]:
            cands = rows(a["activity"], a["filters"])
            rel: str = a["relationship"]

            def inside(j: Ev, rel: str = rel, p: Ev = p, nxt: Any = nexts[i]) -> bool:
                if rel.endswith("_ever"):
                    return True
                if rel.endswith("_before"):
                    return j.ts < p.ts
                if rel.endswith("_after"):
                    return j.ts > p.ts
                return j.ts > p.ts and (nxt is None or j.ts < nxt)

            win = [j for j in cands if inside(j)]
            if rel.startswith("aggregate_"):
                for c in a["columns"]:
                    vals = [value(j, c, cands) for j in win]
                    nn = [v for v in vals if v is not None]
                    row.append(_AGG_MODEL[c["agg"]](nn))
                continue
            chosen: Ev | None
            if rel.startswith("first_"):
                chosen = win[0] if win else None
            elif rel.startswith("last_"):
                chosen = win[-1] if win else None
            else:
                n = a["nth"]
                chosen = cands[n - 1] if n <= len(cands) and inside(cands[n - 1]) else None
            row += [value(chosen, c, cands) for c in a["columns"]]
        out.append(tuple(row))
    return out


_filters = st.lists(
    st.one_of(
        st.builds(lambda k: {"feature": "x", "type": "integer", "op": ">", "value": k}, st.integers(0, 3)),
        st.builds(lambda k: {"feature": "x", "type": "integer", "op": "!=", "value": k}, st.integers(0, 3)),
        st.just({"feature": "x", "type": "integer", "op": "is_null"}),
    ),
    max_size=1,
)
_aggs = (
    "count",
    "count_distinct",
    "sum",
    "min",
    "max",
    "first_value",
    "last_value",
    "is_null",
    "not_null",
    "listagg",
    "listagg_distinct",
)


@st.composite
def _specs(draw: st.DrawFn) -> dict[str, Any]:
    occurrence = draw(st.sampled_from(["all", "first", "last", "nth"]))
    cohort: dict[str, Any] = {
        "activity": draw(st.sampled_from(ACTS)),
        "occurrence": occurrence,
        "filters": draw(_filters),
        "columns": [col("activity_id", "id")],
    }
    if occurrence == "nth":
        cohort["nth"] = draw(st.integers(1, 3))
    appends = []
    for k in range(draw(st.integers(1, 3))):
        rel = draw(st.sampled_from(RELATIONSHIPS))
        if rel.startswith("aggregate_"):
            aggs = draw(st.lists(st.sampled_from(_aggs), min_size=1, max_size=4, unique=True))
            columns = [
                feat(
                    "x",
                    f"a{k}_{g}",
                    "integer",
                    agg=g,
                    **({"delimiter": ","} if g.startswith("listagg") else {}),
                )
                for g in aggs
            ]
            columns.append({"column": "activity_id", "agg": "count", "as": f"a{k}_rows"})
        else:
            columns = [
                col("activity_id", f"a{k}_id"),
                col("ts", f"a{k}_ts", "timestamp"),
                feat("x", f"a{k}_x", "integer"),
            ]
            if draw(st.booleans()):
                columns += [
                    col("activity_occurrence", f"a{k}_occ", "integer"),
                    col("activity_repeated_at", f"a{k}_next", "timestamp"),
                ]
        append: dict[str, Any] = {
            "activity": draw(st.sampled_from(ACTS)),
            "relationship": rel,
            "filters": draw(_filters),
            "columns": columns,
        }
        if rel.startswith("nth_"):
            append["nth"] = draw(st.integers(1, 4))
        appends.append(append)
    return {"cohort": cohort, "appends": appends}


@st.composite
def _streams(draw: st.DrawFn) -> list[Ev]:
    n = draw(st.integers(0, 14))
    ids = draw(st.lists(st.integers(10, 99), min_size=n, max_size=n, unique=True))
    events = []
    for i in ids:
        features: dict[str, Any] = {}
        x = draw(st.one_of(st.none(), st.integers(0, 4), st.just("missing")))
        if x != "missing":
            features["x"] = x
        who = draw(st.sampled_from([A, B, None]))
        events.append(
            Ev(
                f"e{i}",
                T(2024, 1, 1) + dt.timedelta(hours=draw(st.integers(0, 5))),
                who,
                draw(st.sampled_from(ACTS)),
                features,
                ANON if who is None or draw(st.booleans()) else None,
            )
        )
    return events


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=_streams(), spec=_specs())
def test_property_matches_a_model_of_the_rules(events: list[Ev], spec: dict[str, Any]) -> None:
    con = _MODEL_CON
    _load(con, events)
    for customer in (A, ANON):
        sql, params = build_dataset_sql(spec, customer)
        got = con.execute(sql, params).fetchall()
        assert got == _oracle(events, customer, spec), (customer, sql)


_MODEL_CON = _connect()
