"""Uploader throughput into DuckDB: events/s from queue to committed rows.

Appends N realistic events to a fresh queue, then times `Uploader.drain()` into a fresh
DuckDB file (parse, normalise, load, checkpoint, acknowledge). As a baseline in the same
run, DuckDB's own `read_json` of the same lines into the same table (no validation, no
exactly-once) shows the ceiling of the storage engine.

Run: python benches/load_throughput.py [--events N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from activitybi import Queue, QueueReader
from activitybi.owner.uploader import Uploader
from activitybi.warehouse.duckdb import DuckDBWarehouse


def fill(qdir: Path, n: int) -> None:
    with Queue(str(qdir), max_pending=n + 1) as q:
        batch = []
        for i in range(n):
            batch.append(
                {
                    "activity": ("called_tool", "asked_question", "received_answer")[i % 3],
                    "customer": f"user{i % 50}@example.com",
                    "_session_id": f"s{i % 400}",
                    "feature_json": {
                        "tool": "log_event",
                        "latency_ms": 0.07,
                        "outcome": "ok",
                        "input_tokens": 812,
                        "output_tokens": 96,
                        "model": "claude",
                    },
                }
            )
            if len(batch) == 1000:
                q.append_many(batch)
                batch.clear()
        q.append_many(batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=300_000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="abi-load-"))
    try:
        qdir = root / "queue"
        fill(qdir, args.events)
        raw_dir = root / "raw"  # a copy for the baseline: acknowledged segments are deleted
        shutil.copytree(qdir, raw_dir, ignore=shutil.ignore_patterns("*.lock", "*.state"))
        wh = DuckDBWarehouse(root / "w.duckdb")
        wh.init()
        up = Uploader(qdir, wh)
        t = time.perf_counter()
        stats = up.drain()
        ours = time.perf_counter() - t
        up.close()
        assert stats.loaded == args.events, stats
        wh.close()

        files = sorted(str(p) for p in raw_dir.glob("*.ndjson"))
        base = DuckDBWarehouse(root / "b.duckdb")
        base.init()
        t = time.perf_counter()
        columns = "activity_id, ts, customer, activity, feature_json, _session_id, _customer_key"
        types = (
            "{activity_id: 'VARCHAR', ts: 'VARCHAR', customer: 'VARCHAR', activity: 'VARCHAR', "
            "feature_json: 'JSON', _session_id: 'VARCHAR'}"
        )
        base.execute(
            f"INSERT INTO claude_stream ({columns}) "
            "SELECT activity_id, ts::TIMESTAMPTZ AT TIME ZONE 'UTC', customer, activity, feature_json, "
            f"_session_id, coalesce(customer, '') FROM read_json({files!r}, format='newline_delimited', "
            f"columns={types})"
        )
        raw = time.perf_counter() - t
        base.close()
        print(f"uploader drain into DuckDB : {args.events / ours:10,.0f} events/s ({ours:.2f} s)")
        print(
            f"DuckDB read_json, no checks: {args.events / raw:10,.0f} events/s ({raw:.2f} s)"
            f"  -> uploader at {raw / ours:.0%} of the engine's raw load"
        )
        with QueueReader(str(qdir)) as r:
            assert r.pending() == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
