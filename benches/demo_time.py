"""`activitybi demo` wall time: from the command to its last line, in a fresh home each run.

Runs the installed `activitybi demo` (`--runs` times, 3 by default) exactly as a new
user would, with `ACTIVITYBI_HOME` pointing at a new temporary directory, and prints each
wall time, the median and the demo's own figure. The target is under a minute.

Run: python benches/demo_time.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    exe = shutil.which("activitybi")
    if exe is None:
        raise SystemExit("activitybi is not installed: pip install .")
    walls = []
    for i in range(args.runs):
        home = tempfile.mkdtemp(prefix="abi-demo-bench-")
        try:
            start = time.perf_counter()
            proc = subprocess.run(
                [exe, "demo"],
                capture_output=True,
                text=True,
                env={**os.environ, "ACTIVITYBI_HOME": home, "COLUMNS": "160"},
            )
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"demo failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            own = re.search(r"done in ([\d.]+) s", proc.stdout)
            events = re.search(r"([\d,]+) events in DuckDB", proc.stdout)
            walls.append(wall)
            print(
                f"run {i + 1}: {wall:5.1f} s wall (demo says {own.group(1) if own else '?'} s, "
                f"{events.group(1) if events else '?'} events in DuckDB)"
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)
    print(f"median {statistics.median(walls):.1f} s, max {max(walls):.1f} s (target < 60 s)")


if __name__ == "__main__":
    main()
