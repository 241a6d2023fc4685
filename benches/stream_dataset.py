"""`activitybi dataset` over the whole stream: one statement for every customer.

Fills a DuckDB warehouse with N events over C customers (a fifth of them `opened_pr`, the
rest `ran_tests` with a repo and minutes), then times the installed command, process start
and the Parquet file included, with a spec of two appends (an `aggregate_after` joined on
the same repo, and a `first_before`).

Run: python benches/stream_dataset.py [--events N] [--customers C]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from activitybi.warehouse.duckdb import DuckDBWarehouse

SPEC = {
    "cohort": {
        "activity": "opened_pr",
        "columns": [{"column": "customer", "as": "who"}, {"column": "ts", "type": "timestamp", "as": "at"}],
    },
    "appends": [
        {
            "activity": "ran_tests",
            "relationship": "aggregate_after",
            "join": [{"feature": "repo"}],
            "columns": [{"feature": "minutes", "type": "integer", "agg": "sum", "as": "test_minutes"}],
        },
        {
            "activity": "ran_tests",
            "relationship": "first_before",
            "columns": [{"column": "activity_id", "as": "first_test"}],
        },
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="abi-dataset-") as tmp:
        home = Path(tmp)
        wh = DuckDBWarehouse(home / "warehouse.duckdb")
        wh.init()
        wh.con.execute(
            "INSERT INTO claude_stream (activity_id, ts, customer, activity, feature_json, _customer_key) "
            "SELECT printf('e%09d', i), TIMESTAMP '2026-01-01' + to_seconds(i // 3), "
            "'user' || (i % $c) || '@x.io', "
            "CASE WHEN hash(i) % 5 = 0 THEN 'opened_pr' ELSE 'ran_tests' END, "
            "json_object('repo', 'r' || (hash(i) % 4), 'minutes', i % 60), 'user' || (i % $c) || '@x.io' "
            "FROM range($n) t(i)",
            {"n": args.events, "c": args.customers},
        )
        wh.close()
        (home / "spec.json").write_text(json.dumps(SPEC))
        env = {**os.environ, "ACTIVITYBI_HOME": str(home)}
        command = [sys.executable, "-m", "activitybi", "dataset", str(home / "spec.json")]
        for _ in range(args.rounds):
            t = time.perf_counter()
            done = subprocess.run(
                [*command, "--out", str(home / "out.parquet")],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            took = time.perf_counter() - t
            print(
                f"{done.stdout.strip()}: {took:.2f} s, {args.events:,} events, {args.customers:,} customers"
            )


if __name__ == "__main__":
    main()
