"""Card rendering: a 10,000-row query result → PNG card (seed target < 8 s p95; ours < 1 s).

Renders the same shapes a ticket result has (rows as JSON objects, timestamps as ISO
text, decimals as numbers): a line card over time and a bar card over categories, each
`--runs` times after one warm-up, and prints p50/p95/max per kind; also the first card
of a fresh process, which pays matplotlib's import.

Run: python benches/card_render.py [--rows 10000] [--runs 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import time
from typing import Any

from activitybi.query.cards import render_card


def result(rows: int, categorical: bool) -> dict[str, Any]:
    start = dt.datetime(2026, 11, 1)
    if categorical:
        data = [
            {"tool": f"tool_{i}", "calls": (i * 7919) % 1000, "p95_ms": (i * 31) % 97 / 3}
            for i in range(rows)
        ]
    else:
        data = [
            {
                "ts": (start + dt.timedelta(minutes=i)).isoformat(timespec="milliseconds"),
                "events": (i * 7919) % 101,
                "cost_usd": round(((i * 104729) % 1000) / 997, 6),
            }
            for i in range(rows)
        ]
    return {"columns": list(data[0]), "rows": data, "total_rows": rows, "sampled": False}


def cold_first_card(rows: int) -> float:
    code = (
        "import time, sys; sys.path[:0] = [''];"
        "from benches.card_render import result; from activitybi.query.cards import render_card;"
        f"r = result({rows}, False); t = time.perf_counter();"
        "render_card(r, title='t', template='t', params_hash='0' * 64, created_at='now');"
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    print(f"{args.rows:,}-row results, {args.runs} runs each after a warm-up")
    for kind, categorical in (("line", False), ("bar", True)):
        data = result(args.rows, categorical)
        render_card(data, title="warm-up", template="t", params_hash="0" * 64, created_at="now", kind=kind)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            png = render_card(
                data,
                title=f"{args.rows:,} rows",
                template="usage_by_day",
                params_hash="0" * 64,
                created_at="2026-11-23T18:00:00",
                kind=kind,
            )
            times.append(time.perf_counter() - start)
        times.sort()
        p95 = times[max(0, round(0.95 * len(times)) - 1)]
        print(
            f"{kind:5} card: p50 {statistics.median(times) * 1000:7.1f} ms   "
            f"p95 {p95 * 1000:7.1f} ms   max {times[-1] * 1000:7.1f} ms   ({len(png):,} bytes)"
        )
    print(f"first card in a fresh process (imports matplotlib): {cold_first_card(args.rows) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
