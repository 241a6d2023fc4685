"""Wall time of one Claude Code hook, process start included, against `python -c "import orjson"`.

A hook runs in the user's session before Claude Code goes on, so its cost is the whole
process: interpreter start, imports, one append to the queue. Each round runs, in turn:
the baseline, the hook module as installed (`python -m activitybi.capture.hooks`), and the
`activitybi hook` command (click's start-up included), each fed a UserPromptSubmit and a
PostToolUse event. Medians and their ratios to the baseline, from the same run.

Run: python benches/hook_wall.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import orjson

EVENTS = [
    {
        "session_id": "bench",
        "transcript_path": "/nowhere.jsonl",
        "cwd": "/tmp",
        "hook_event_name": "UserPromptSubmit",
        "prompt": "Why does the login fail?",
    },
    {
        "session_id": "bench",
        "transcript_path": "/nowhere.jsonl",
        "cwd": "/tmp",
        "hook_event_name": "PostToolUse",
        "tool_name": "Read",
        "tool_use_id": "toolu_bench",
        "tool_input": {"file_path": "a.py"},
        "tool_response": {"ok": True},
    },
]


def wall(cmd: list[str], stdin: bytes, env: dict[str, str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, input=stdin, capture_output=True, env=env)
    took = time.perf_counter() - start
    if out.returncode != 0 or out.stdout:
        raise SystemExit(f"{cmd}: exit {out.returncode}, stdout {out.stdout[:200]!r}")
    return took * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    py = sys.executable
    commands = {
        'python -c "import orjson"': [py, "-c", "import orjson"],
        "python -m activitybi.capture.hooks": [py, "-m", "activitybi.capture.hooks"],
        "activitybi hook": [py, "-m", "activitybi", "hook"],
    }
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "ACTIVITYBI_HOME": home, "ACTIVITYBI_CUSTOMER": "bench@example.com"}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for r in range(args.rounds + 3):
            stdin = orjson.dumps(EVENTS[r % len(EVENTS)])
            for name, cmd in commands.items():
                took = wall(cmd, stdin, env)
                if r >= 3:  # warm the page cache first
                    times[name].append(took)
    base = statistics.median(times['python -c "import orjson"'])
    print(f"{args.rounds} rounds, events alternating UserPromptSubmit / PostToolUse")
    print(f"{'command':40} {'p50 ms':>8} {'p90 ms':>8} {'ratio':>6}")
    for name, values in times.items():
        p50 = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:40} {p50:8.1f} {p90:8.1f} {p50 / base:6.2f}")


if __name__ == "__main__":
    main()
