"""Ingestion lag: an event appended to the queue → visible to a query on DuckDB.

A producer appends at a steady rate for a fixed time while the warehouse owner's loop
(`activitybi upload --follow`: upload, and refresh the context) runs in a second thread; a checker polls
`count(*)` on its own cursor every 5 ms. Events go in order, so event i is visible once the
count passes i. Prints p50/p95/p99/max of the lag.

Run: python benches/ingestion_lag.py [--rate 1000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from activitybi import Queue
from activitybi.owner.loop import own
from activitybi.owner.uploader import Uploader
from activitybi.warehouse.duckdb import DuckDBWarehouse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="abi-lag-"))
    total = int(args.rate * args.seconds)
    sent = [0.0] * total
    seen = [0.0] * total
    try:
        wh = DuckDBWarehouse(root / "w.duckdb")
        wh.init()
        q = Queue(str(root / "queue"), max_pending=total + 1)
        up = Uploader(root / "queue", wh)
        uploader = threading.Thread(target=own, args=(up, root))
        uploader.start()
        done = threading.Event()

        def checker() -> None:
            cur = wh.con.cursor()
            visible = 0
            while visible < total and not (done.is_set() and visible == total):
                n = cur.execute("SELECT count(*) FROM claude_stream").fetchone()[0]  # type: ignore[index]
                now = time.perf_counter()
                for i in range(visible, n):
                    seen[i] = now
                visible = n
                time.sleep(0.005)

        check = threading.Thread(target=checker)
        check.start()
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / args.rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(due - now, 0.001))
            q.append({"activity": "asked_question", "customer": "lag@example.com", "i": i})
            sent[i] = time.perf_counter()
        done.set()
        check.join(timeout=30)
        up.stop.set()
        uploader.join()
        up.close()
        q.close()
        wh.close()
        lags = sorted((s - a) * 1000 for a, s in zip(sent, seen, strict=True) if s)
        qs = statistics.quantiles(lags, n=100)
        print(f"{len(lags):,} of {total:,} events seen; rate {args.rate}/s for {args.seconds:.0f} s")
        print(f"ingestion lag ms: p50 {qs[49]:.1f}  p95 {qs[94]:.1f}  p99 {qs[98]:.1f}  max {lags[-1]:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
