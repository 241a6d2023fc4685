"""Uploader throughput into DuckDB: events/s from queue to committed rows.

Appends N realistic events to a fresh queue, then times `Uploader.drain()` into a fresh
DuckDB file (parse, normalise, load, checkpoint, acknowledge). As a baseline in the same
run, DuckDB's own `read_json` of the same lines into the same table (no validation, no
exactly-once) shows the ceiling of the storage engine. Rounds alternate and the best of each
counts, so that other work on the machine weighs on both sides alike.

Run: python benches/load_throughput.py [--events N] [--rounds R]
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


def drain_once(qdir: Path, db: Path, n: int) -> tuple[float, float]:
    """Wall and CPU seconds for `Uploader.drain()` of the queue into a fresh DuckDB file."""
    wh = DuckDBWarehouse(db)
    wh.init()
    up = Uploader(qdir, wh)
    t, cpu = time.perf_counter(), time.process_time()
    stats = up.drain()
    took = time.perf_counter() - t, time.process_time() - cpu
    up.close()
    wh.close()
    assert stats.loaded == n and stats.quarantined == 0, stats
    with QueueReader(str(qdir)) as r:
        assert r.pending() == 0
    return took


def read_json_once(files: list[str], db: Path) -> tuple[float, float]:
    """Wall and CPU seconds for DuckDB's own `read_json` of the same lines into the same table."""
    base = DuckDBWarehouse(db)
    base.init()
    t, cpu = time.perf_counter(), time.process_time()
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
    took = time.perf_counter() - t, time.process_time() - cpu
    base.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each; the best counts")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="abi-load-"))
    try:
        filled = root / "filled"
        fill(filled, args.events)
        raw_dir = root / "raw"  # a copy for the baseline: acknowledged segments are deleted
        shutil.copytree(filled, raw_dir, ignore=shutil.ignore_patterns("*.lock", "*.state"))
        files = sorted(str(p) for p in raw_dir.glob("*.ndjson"))
        ours, raw = [], []
        for i in range(args.rounds):  # alternating, so that a busy machine slows both alike
            qdir = root / f"queue{i}"
            shutil.copytree(filled, qdir)
            ours.append(drain_once(qdir, root / f"w{i}.duckdb", args.events))
            raw.append(read_json_once(files, root / f"b{i}.duckdb"))
        for what, i in (("wall", 0), ("CPU", 1)):
            best_ours, best_raw = min(o[i] for o in ours), min(r[i] for r in raw)
            print(
                f"{what:4}: uploader drain {args.events / best_ours:9,.0f} events/s ({best_ours:.2f} s), "
                f"read_json {args.events / best_raw:9,.0f} events/s ({best_raw:.2f} s) "
                f"-> uploader at {best_raw / best_ours:.0%} of read_json"
            )
        print(f"best of {args.rounds} alternating rounds each, {args.events:,} events")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
