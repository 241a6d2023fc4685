"""Join conditions between the cohort and an appended activity (the same ``repo``).

For every relationship kind, a join on ``repo`` gives each cohort row what the same spec
without the join gives when the append is filtered to that row's repo (filters recompute
occurrences, as the join's groups do); a cohort row without a repo matches nothing. And
the join's feature paths are validated and bound like every other parameter.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import duckdb
import pytest

from activitybi.query.dataset import RELATIONSHIPS, DatasetSpecError, build_dataset_sql

WHO = "dev@example.com"
REPOS = ["api", "web", None]


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    rng = random.Random(5)
    c = duckdb.connect()
    c.execute(
        "CREATE TABLE claude_stream (activity_id VARCHAR, ts TIMESTAMP, customer VARCHAR, activity VARCHAR, "
        "anonymous_customer_id VARCHAR, feature_json JSON, revenue_impact DOUBLE, link VARCHAR, "
        "_session_id VARCHAR, _source VARCHAR, _ingested_at TIMESTAMP)"
    )
    rows = []
    for i in range(120):
        activity = "opened_pr" if i % 4 == 0 else "ran_tests"
        repo = rng.choice(REPOS)
        features: dict[str, Any] = {"minutes": rng.randint(1, 9)}
        if repo is not None:
            features["repo" if activity == "ran_tests" else "repository"] = repo
        ts = dt.datetime(2026, 1, 1) + dt.timedelta(minutes=rng.randint(0, 60))  # many ties
        rows.append((f"e{i:03d}", ts, WHO if i % 7 else "other@example.com", activity, features))
    for aid, ts, who, activity, features in rows:
        c.execute(
            "INSERT INTO claude_stream (activity_id, ts, customer, activity, feature_json) "
            "VALUES (?, ?, ?, ?, ?)",
            [aid, ts, who, activity, json.dumps(features)],
        )
    return c


def spec(relationship: str, *, join: bool, repo: str | None = None) -> dict[str, Any]:
    agg = relationship.startswith("aggregate_")
    columns: list[dict[str, Any]] = (
        [
            {"feature": "minutes", "type": "integer", "agg": "count", "as": "n"},
            {"feature": "minutes", "type": "integer", "agg": "sum", "as": "total"},
            {"feature": "minutes", "type": "integer", "agg": "last_value", "as": "last"},
        ]
        if agg
        else [
            {"column": "activity_id", "as": "test_id"},
            {"feature": "minutes", "type": "integer", "as": "m"},
        ]
    )
    append: dict[str, Any] = {"activity": "ran_tests", "relationship": relationship, "columns": columns}
    if relationship.startswith("nth_"):
        append["nth"] = 2
    if join:
        append["join"] = [{"feature": "repo", "cohort_feature": "repository"}]
    else:
        append["filters"] = [{"feature": "repo", "op": "=", "value": repo or "no such repo"}]
    return {
        "cohort": {
            "activity": "opened_pr",
            "columns": [
                {"column": "activity_id", "as": "pr"},
                {"feature": "repository", "as": "repository"},
            ],
        },
        "appends": [append],
    }


def run(con: duckdb.DuckDBPyConnection, s: dict[str, Any]) -> list[tuple[Any, ...]]:
    sql, params = build_dataset_sql(s, WHO)
    return con.execute(sql, params).fetchall()


@pytest.mark.parametrize("relationship", RELATIONSHIPS)
def test_join_equals_a_filter_on_the_cohort_rows_value(
    con: duckdb.DuckDBPyConnection, relationship: str
) -> None:
    joined = run(con, spec(relationship, join=True))
    cohort = con.execute(
        "SELECT count(*) FROM claude_stream WHERE customer = ? AND activity = 'opened_pr'", [WHO]
    ).fetchone()
    assert cohort is not None and len(joined) == cohort[0]
    by_repo = {repo: {r[0]: r for r in run(con, spec(relationship, join=False, repo=repo))} for repo in REPOS}
    for row in joined:
        assert row == by_repo[row[1]][row[0]], (relationship, row)
    matched = [r for r in joined if r[2] not in (None, 0)]
    assert all(r[1] is not None for r in matched)  # a cohort row without a repo matches nothing
    assert matched or relationship == "nth_in_between"  # (the 2nd overall is rarely in a window)


def test_join_paths_are_bound_and_validated() -> None:
    s = spec("first_after", join=True)
    s["appends"][0]["join"] = [{"feature": "repo", "cohort_feature": "x'); DROP TABLE t; --"}]
    with pytest.raises(DatasetSpecError, match=r"appends\.0\.join\.0\.cohort_feature"):
        build_dataset_sql(s, WHO)
    s["appends"][0]["join"] = [{"feature": "repo", "type": "integer"}]
    sql, params = build_dataset_sql(s, WHO)
    assert "'repo'" not in sql and "repo" in params
    s["cohort"]["occurrence"] = "time_spine"
    s["cohort"]["time_spine"] = {"interval": "day"}
    s["cohort"]["columns"] = [{"column": "ts", "as": "day"}]
    with pytest.raises(DatasetSpecError, match="time spine"):
        build_dataset_sql(s, WHO)
