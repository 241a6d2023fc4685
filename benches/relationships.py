"""The dataset template against hand-written window SQL, for every relationship kind.

One customer with N events (a tenth of them the cohort activity, the rest the appended
one, with ties on ts and some NULL values), plus a few other customers. For each
relationship kind, the template's statement for a cohort of every occurrence and an append
(a feature, or its count and sum) is timed against a hand-written window-function query
for that customer that gives the same rows (checked), best of R alternating runs each.

Run: python benches/relationships.py [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import duckdb

from activitybi.query.dataset import RELATIONSHIPS, build_dataset_sql
from activitybi.warehouse.duckdb import DuckDBWarehouse

HEAVY = "heavy@example.com"
COHORT, APPENDED = "started_session", "ran_query"

# Hand-written, for one customer: cohort rows `c` (with the next occurrence), candidates
# `a` (with their occurrence and value), then one query per kind.
PREFIX = f"""
WITH c AS (SELECT ts, activity_id, lead(ts) OVER (ORDER BY ts, activity_id) AS nxt,
        row_number() OVER (ORDER BY ts, activity_id) AS r
    FROM claude_stream WHERE coalesce(customer, anonymous_customer_id) = $who AND activity = '{COHORT}'),
a AS (SELECT ts, activity_id, row_number() OVER (ORDER BY ts, activity_id) AS occ,
        row_number() OVER (ORDER BY ts DESC, activity_id DESC) AS rocc,
        TRY_CAST(json_extract_string(feature_json, '$."rows"') AS BIGINT) AS v
    FROM claude_stream WHERE coalesce(customer, anonymous_customer_id) = $who AND activity = '{APPENDED}')
"""
ONE = (
    "SELECT c.activity_id, c.ts, x.v FROM c LEFT JOIN (SELECT ts, v FROM a WHERE {pick}) x "
    "ON {on} ORDER BY c.ts, c.activity_id"
)
BETWEEN = "x.ts > c.ts AND (c.nxt IS NULL OR x.ts < c.nxt)"
# u: cohort anchors and candidates in one ordered stream; `kind` orders them at an equal ts.
UNION = (
    "u AS (SELECT {anchor} AS ts, {ck} AS kind, r, NULL::BIGINT AS occ FROM c "
    "UNION ALL SELECT ts, {ak}, NULL, occ FROM a)"
)
PICKED = (
    ", " + UNION + ", p AS (SELECT r, {pick} AS o FROM u) "
    "SELECT c.activity_id, c.ts, x.v FROM c LEFT JOIN p ON p.r = c.r "
    "LEFT JOIN a AS x ON x.occ = p.o AND {on} ORDER BY c.ts, c.activity_id"
)
AFTER = "min(occ) OVER (ORDER BY ts, kind ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)"
BEFORE = "max(occ) OVER (ORDER BY ts, kind ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
RUNNING = (
    ", u AS (SELECT ts, {ck} AS kind, r, NULL::BIGINT AS v FROM c "
    "UNION ALL SELECT ts, {ak}, NULL, v FROM a), "
    "w AS (SELECT r, count(v) OVER o AS n, sum(v) OVER o AS total FROM u "
    "WINDOW o AS (ORDER BY ts, kind ROWS BETWEEN {frame})) "
    "SELECT c.activity_id, c.ts, coalesce(w.n, 0), coalesce(w.total, 0) FROM c JOIN w ON w.r = c.r "
    "ORDER BY c.ts, c.activity_id"
)
HAND: dict[str, str] = {
    "first_ever": ONE.format(pick="occ = 1", on="TRUE"),
    "last_ever": ONE.format(pick="rocc = 1", on="TRUE"),
    "nth_ever": ONE.format(pick="occ = 3", on="TRUE"),
    "first_before": ONE.format(pick="occ = 1", on="x.ts < c.ts"),
    "nth_before": ONE.format(pick="occ = 3", on="x.ts < c.ts"),
    "last_after": ONE.format(pick="rocc = 1", on="x.ts > c.ts"),
    "nth_after": ONE.format(pick="occ = 3", on="x.ts > c.ts"),
    "nth_in_between": ONE.format(pick="occ = 3", on=BETWEEN),
    "first_after": PICKED.format(anchor="ts", ck=1, ak=0, pick=AFTER, on="x.ts > c.ts"),
    "first_in_between": PICKED.format(anchor="ts", ck=1, ak=0, pick=AFTER, on=BETWEEN),
    "last_before": PICKED.format(anchor="ts", ck=0, ak=1, pick=BEFORE, on="x.ts < c.ts"),
    "last_in_between": PICKED.format(
        anchor="coalesce(nxt, ts)",
        ck=0,
        ak=1,
        pick=f"CASE WHEN r = (SELECT max(r) FROM c) THEN max(occ) OVER () ELSE {BEFORE} END",
        on=BETWEEN,
    ),
    "aggregate_all_ever": (
        "SELECT c.activity_id, c.ts, x.n, coalesce(x.total, 0) FROM c, "
        "(SELECT count(v) AS n, sum(v) AS total FROM a) x ORDER BY c.ts, c.activity_id"
    ),
    "aggregate_before": RUNNING.format(ck=0, ak=1, frame="UNBOUNDED PRECEDING AND CURRENT ROW"),
    "aggregate_after": RUNNING.format(ck=1, ak=0, frame="CURRENT ROW AND UNBOUNDED FOLLOWING"),
    "aggregate_in_between": (
        ", u AS (SELECT ts, 1 AS kind, r, NULL::BIGINT AS v FROM c "
        "UNION ALL SELECT ts, 0, NULL, v FROM a), "
        "o AS (SELECT kind, v, ts, max(r) OVER (ORDER BY ts, kind ROWS UNBOUNDED PRECEDING) AS owner "
        "FROM u), "
        "g AS (SELECT owner, count(v) AS n, sum(v) AS total FROM o JOIN c ON c.r = o.owner "
        "WHERE kind = 0 AND o.ts > c.ts AND (c.nxt IS NULL OR o.ts < c.nxt) GROUP BY owner) "
        "SELECT c.activity_id, c.ts, coalesce(g.n, 0), coalesce(g.total, 0) "
        "FROM c LEFT JOIN g ON g.owner = c.r "
        "ORDER BY c.ts, c.activity_id"
    ),
}


def spec(relationship: str) -> dict[str, Any]:
    agg = relationship.startswith("aggregate_")
    columns: list[dict[str, Any]] = (
        [
            {"feature": "rows", "type": "integer", "agg": "count", "as": "n"},
            {"feature": "rows", "type": "integer", "agg": "sum", "as": "total"},
        ]
        if agg
        else [{"feature": "rows", "type": "integer", "as": "v"}]
    )
    append: dict[str, Any] = {"activity": APPENDED, "relationship": relationship, "columns": columns}
    if relationship.startswith("nth_"):
        append["nth"] = 3
    return {
        "cohort": {
            "activity": COHORT,
            "columns": [
                {"column": "activity_id", "as": "id"},
                {"column": "ts", "type": "timestamp", "as": "at"},
            ],
        },
        "appends": [append],
    }


def fill(con: duckdb.DuckDBPyConnection, n: int) -> None:
    """The heavy customer's n events (two per second: ties on ts), and 100 light ones."""
    con.execute(
        "INSERT INTO claude_stream (activity_id, ts, customer, activity, feature_json, _customer_key) "
        "SELECT printf('h%09d', i), TIMESTAMP '2026-01-01' + to_seconds(i // 2), $who, "
        f"CASE WHEN hash(i) % 10 = 0 THEN '{COHORT}' ELSE '{APPENDED}' END, "
        "CASE WHEN i % 97 = 0 THEN '{}' ELSE json_object('rows', i % 1000, 'repo', 'r' || (i % 7)) END, "
        "$who FROM range($n) t(i)",
        {"who": HEAVY, "n": n},
    )
    con.execute(
        "INSERT INTO claude_stream (activity_id, ts, customer, activity, feature_json, _customer_key) "
        "SELECT printf('l%09d', i), TIMESTAMP '2026-01-01' + to_seconds(i), 'light' || (i % 100) || '@x.io', "
        f"CASE WHEN i % 3 = 0 THEN '{COHORT}' ELSE '{APPENDED}' END, json_object('rows', i), "
        "'light' || (i % 100) || '@x.io' FROM range(10000) t(i)"
    )


def timed(con: duckdb.DuckDBPyConnection, sql: str, params: Any) -> tuple[float, list[Any]]:
    t = time.perf_counter()
    rows = con.execute(sql, params).fetchall()
    return time.perf_counter() - t, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=list(RELATIONSHIPS))
    args = ap.parse_args()
    wh = DuckDBWarehouse(":memory:")
    wh.init()
    con = wh.con
    fill(con, args.events)
    cohort_rows = con.execute(
        f"SELECT count(*) FILTER (activity = '{COHORT}'), count(*) FROM claude_stream WHERE customer = ?",
        [HEAVY],
    ).fetchone()
    print(f"one customer: {cohort_rows[1]:,} events, {cohort_rows[0]:,} cohort rows")  # type: ignore[index]
    worst = 0.0
    for rel in args.only:
        sql, params = build_dataset_sql(spec(rel), HEAVY)
        ours, hand = [], []
        for _ in range(args.rounds):
            t, got = timed(con, sql, params)
            ours.append(t)
            t, want = timed(con, PREFIX + HAND[rel], {"who": HEAVY})
            hand.append(t)
            assert [tuple(r) for r in got] == [tuple(r) for r in want], rel
        ratio = min(ours) / min(hand)
        worst = max(worst, ratio)
        print(f"{rel:22} template {min(ours):7.3f} s   hand-written {min(hand):7.3f} s   ratio {ratio:5.2f}x")
    print(f"worst ratio {worst:.2f}x (best of {args.rounds} alternating runs each; same rows checked)")
    wh.close()


if __name__ == "__main__":
    main()
