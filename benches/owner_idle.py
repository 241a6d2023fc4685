"""The owner's idle cost does not grow with the tickets ever asked.

Runs the ticket executor loop (the owner's thread that polls for tickets every 50 ms) in a
child process on a home with no tickets, then on one with 100,000 finished tickets of the
last six days (inside the retention period, so they stay on disk), alternating, and
measures each child's CPU time over the same idle window. Also times one full read of
every ticket file: what each 50 ms poll cost before the pending markers.

Run: python benches/owner_idle.py [--tickets 100000] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

CHILD = """
import sys, time
from pathlib import Path
from activitybi.owner.executor import TicketExecutor
from activitybi.query.tickets import TicketStore
from activitybi.warehouse.duckdb import DuckDBWarehouse

root, seconds = Path(sys.argv[1]), float(sys.argv[2])
wh = DuckDBWarehouse(root / "w.duckdb")
wh.init()
executor = TicketExecutor(TicketStore(root / "tickets"), wh)
executor.start()
time.sleep(1.0)  # past the start-up sweep: idle from here
t0, c0 = time.perf_counter(), time.process_time()
time.sleep(seconds)
c1, t1 = time.process_time(), time.perf_counter()
executor.stop.set()
executor.join()
print(c1 - c0, t1 - t0)
"""


def old_ulid(when: dt.datetime) -> str:
    ms = int(when.timestamp() * 1000)
    head = "".join(CROCKFORD[(ms >> (5 * i)) & 31] for i in reversed(range(10)))
    return head + "".join(CROCKFORD[b & 31] for b in os.urandom(16))


def fill(tickets: Path, n: int) -> None:
    """n finished tickets with results, spread over the last six days."""
    now = dt.datetime.now(dt.UTC)
    for i in range(n):
        when = now - dt.timedelta(days=6 * i / n)
        tid = old_ulid(when)
        day = tickets / when.strftime("%Y-%m-%d")
        day.mkdir(parents=True, exist_ok=True)
        ticket = {
            "ticket_id": tid,
            "customer": f"c{i % 50}@x.io",
            "template": "activity_counts",
            "params": {"since": "2026-01-01"},
            "params_hash": "0" * 16,
            "byte_cap": 65536,
            "query_tag": f"cdesk_{i}",
            "status": "succeeded",
            "progress": 100.0,
            "error": None,
            "submitted_at": when.isoformat(),
            "started_at": when.isoformat(),
            "finished_at": when.isoformat(),
        }
        (day / f"{tid}.json").write_bytes(orjson.dumps(ticket))
        (day / f"{tid}.result").write_bytes(b'{"columns":["n"],"rows":[{"n":1}],"total_rows":1}')


def idle_cpu(root: Path, seconds: float) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ,
    ).stdout.split()
    return float(out[0]), float(out[1])


def full_scan(tickets: Path) -> float:
    """CPU seconds of reading every ticket file once, as each poll did before."""
    c0 = time.process_time()
    for path in tickets.glob("*/*.json"):
        orjson.loads(path.read_bytes())
    return time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickets", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="owner-idle-") as tmp:
        empty, full = Path(tmp) / "empty", Path(tmp) / "full"
        empty.mkdir()
        t = time.perf_counter()
        fill(full / "tickets", args.tickets)
        print(f"wrote {args.tickets:,} finished tickets (+ results) in {time.perf_counter() - t:.1f} s")
        cpu: dict[str, float] = {"none": 0.0, "old": 0.0}
        wall: dict[str, float] = {"none": 0.0, "old": 0.0}
        for r in range(args.rounds):
            for name, root in (("none", empty), ("old", full)):
                c, w = idle_cpu(root, args.seconds)
                cpu[name] += c
                wall[name] += w
                print(f"round {r + 1}: {name:>4}: {c * 1000 / w:.2f} ms CPU per s idle")
        per_s = {k: cpu[k] * 1000 / wall[k] for k in cpu}
        print(f"idle CPU, no tickets:                {per_s['none']:.2f} ms/s")
        print(f"idle CPU, {args.tickets:,} old tickets:     {per_s['old']:.2f} ms/s")
        print(f"ratio (old / none):                  {per_s['old'] / per_s['none']:.2f}x")
        scan = full_scan(full / "tickets")
        print(f"one read of every ticket (the old poll, every 50 ms): {scan * 1000:.0f} ms CPU")


if __name__ == "__main__":
    main()
