"""Proves the README's first command in the environment it runs in: a fresh virtual
environment holding only the wheel, with no extras.

It imports every module of the package (a module whose feature needs an extra must still
import; the feature fails only when used), checks that an extra's feature used without
the extra says in one line which extra to install, runs `activitybi demo` to the end and
checks that its rows are in DuckDB. scripts/test.sh runs it; it exits non-zero on any
failure, saying which.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

import activitybi


def import_every_module() -> int:
    names = [m.name for m in pkgutil.walk_packages(activitybi.__path__, "activitybi.")]
    for name in names:
        if name == "activitybi.__main__":
            continue
        importlib.import_module(name)  # any error fails the smoke, with its traceback
    return len(names)


def missing_extra_is_one_line(home: Path) -> None:
    """`init` on Snowflake without the snowflake extra: one clear line, no traceback."""
    env = {**os.environ, "ACTIVITYBI_HOME": str(home), "ACTIVITYBI_WAREHOUSE": "snowflake"}
    done = subprocess.run(
        [sys.executable, "-m", "activitybi", "init"], env=env, capture_output=True, text=True, timeout=60
    )
    lines = done.stderr.strip().splitlines()
    wanted = "pip install 'activitybi[snowflake]'"
    if done.returncode == 0 or len(lines) != 1 or wanted not in lines[0]:
        sys.exit(
            f"smoke: the snowflake feature without its extra should say {wanted!r} in one line:\n"
            f"exit {done.returncode}\n{done.stderr}"
        )


def demo_loads_duckdb(home: Path) -> int:
    bindir = Path(sys.executable).parent
    env = {**os.environ, "ACTIVITYBI_HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [str(bindir / "activitybi"), "demo"], env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        sys.exit(f"smoke: activitybi demo failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    import duckdb

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as db:
        rows = dict(db.execute("SELECT activity, count(*) FROM claude_stream GROUP BY 1").fetchall())
    for activity in ("asked_question", "received_answer", "learned_insight", "called_tool"):
        if not rows.get(activity):
            sys.exit(f"smoke: the demo left no {activity} rows in DuckDB (found {rows})")
    return sum(rows.values())


def main() -> None:
    modules = import_every_module()
    with tempfile.TemporaryDirectory(prefix="activitybi-smoke-") as tmp:
        missing_extra_is_one_line(Path(tmp) / "extra")
        events = demo_loads_duckdb(Path(tmp) / "demo")
    print(f"smoke: {modules} modules import, missing extras say so, demo loaded {events} rows into DuckDB")


if __name__ == "__main__":
    main()
