"""Chaos: every fault of issue 5, against real processes, and what each one cost.

For each fault it prints events acknowledged (by a real MCP client, or by the queue for
events this driver appends itself), found (in DuckDB's claude_stream, or still in the
queue), lost, duplicated, quarantined, and the outcome: a recovery or a clear error.

  server-kill-http   SIGKILL `activitybi serve --http` under load from SDK clients; restart it
  server-kill-stdio  the same over stdio (the client starts a new server when its dies)
  uploader-kill      SIGKILL the `upload --follow` owner mid-batch; the server restarts it
  redis              SIGKILL redis-server under a server with REDIS_URL; restart it (empty)
  warehouse-down     another process holds the DuckDB file for --outage seconds
  warehouse-down-standalone   the same, with `upload --follow` started by hand
  disk-full          the queue on a small tmpfs, filled until ENOSPC, then freed
  disk-full-at-start a queue opened for the first time on a full filesystem
  flip-structural    one byte changed in lines of a sealed segment (the line stops being JSON)
  flip-random        one bit flipped anywhere in lines of a sealed segment (bit rot)

Each fault runs in a process of its own with a hard time limit, so a hang is reported as
a failure rather than waited on; the processes it started are killed with it, and any
filesystem it mounted is unmounted. Needs root (mount) and redis-server.

Run: python benches/chaos.py [--outage 30] [--seconds 20] [--only NAME,NAME] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import chaos_harness as ch  # noqa: E402


def _redis(root: Path, args: argparse.Namespace) -> ch.Outcome:
    from tests.redis_server import RedisServer

    binary = shutil.which("redis-server")
    if binary is None:
        raise ch.ChaosFailure("redis-server is not installed (apt-get install -y redis-server)")
    redis = RedisServer(binary, root / "redis-server")
    redis.start()
    try:
        return ch.fault_redis(root, redis, before=3.0, outage=args.outage / 3, after=8.0, clients=4)
    finally:
        redis.stop()


FAULTS: dict[str, Callable[[Path, argparse.Namespace], ch.Outcome]] = {
    "server-kill-http": lambda root, a: ch.fault_server_kill(
        root, transport="http", seconds=a.seconds, kills=4, clients=8
    ),
    "server-kill-stdio": lambda root, a: ch.fault_server_kill(
        root, transport="stdio", seconds=a.seconds, kills=3, clients=2
    ),
    "uploader-kill": lambda root, a: ch.fault_uploader_kill(root, kills=5, clients=4),
    "redis": _redis,
    "warehouse-down": lambda root, a: ch.fault_warehouse_down(root, outage=a.outage, clients=4),
    "warehouse-down-standalone": lambda root, a: ch.fault_warehouse_down_standalone(
        root, outage=a.outage, events=20_000
    ),
    "disk-full": lambda root, a: ch.fault_disk_full(root),
    "disk-full-at-start": lambda root, a: ch.fault_full_disk_at_start(root),
    "flip-structural": lambda root, a: ch.fault_flipped_bytes(root, events=2000, flips=20),
    "flip-random": lambda root, a: ch.fault_flipped_bytes(root, events=2000, flips=50, mode="random"),
}


def run_one(name: str, root: Path, args: argparse.Namespace, result: Path) -> None:
    """In the child: runs one fault and writes its outcome as JSON."""
    start = time.monotonic()
    try:
        outcome = FAULTS[name](root, args)
    except Exception as e:  # every failure becomes a reported outcome
        outcome = ch.Outcome(name, problems=[f"{type(e).__name__}: {str(e)[:600]}"])
        outcome.seconds = time.monotonic() - start
        outcome.finish()
    result.write_text(json.dumps(dataclasses.asdict(outcome)))


def mounts_under(root: Path) -> list[str]:
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p.startswith(str(root) + "/")]


def run_isolated(name: str, root: Path, args: argparse.Namespace) -> ch.Outcome:
    """In the parent: the fault in its own session, killed (with every process it
    started) past its time limit."""
    limit = args.limit + 2 * args.outage + 2 * args.seconds
    result = root / f"{name}.json"
    cmd = [
        sys.executable,
        __file__,
        "--fault",
        name,
        "--root",
        str(root),
        "--result",
        str(result),
        "--outage",
        str(args.outage),
        "--seconds",
        str(args.seconds),
    ]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        outcome = ch.Outcome(name, problems=[f"hung: killed after {limit:g} s"])
    else:
        if result.exists():
            data = json.loads(result.read_text())
            outcome = ch.Outcome(**data)
        else:
            outcome = ch.Outcome(name, problems=[f"the driver died ({proc.returncode}): {err[-600:]}"])
    with_leftovers = ch.pids_of_under(root)
    for pid in with_leftovers:  # processes of this fault still alive: end them
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if with_leftovers:
        outcome.notes.append(f"{len(with_leftovers)} processes of this fault were still running: killed")
    for point in sorted(mounts_under(root), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
    if err.strip() and args.verbose:
        outcome.notes.append("driver stderr: " + err.strip()[-2000:])
    outcome.seconds = outcome.seconds or time.monotonic() - start
    if not outcome.outcome:
        outcome.finish()
    return outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--outage",
        type=float,
        default=30.0,
        help="seconds the warehouse stays unavailable (Redis stays down a third of it)",
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of load around server kills")
    ap.add_argument("--only", help="comma-separated fault names")
    ap.add_argument("--limit", type=float, default=240.0, help="base time limit of a fault, in seconds")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--verbose", action="store_true", help="show each driver's stderr")
    ap.add_argument("--fault", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fault:
        run_one(args.fault, args.root, args, args.result)
        return
    names = args.only.split(",") if args.only else list(FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        ap.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    root = Path(tempfile.mkdtemp(prefix="activitybi-chaos-"))
    outcomes: list[ch.Outcome] = []
    try:
        for name in names:
            print(f"... {name}", flush=True)
            outcome = run_isolated(name, root, args)
            print("   ", outcome.summary(), f"({outcome.seconds:.1f} s)", flush=True)
            outcomes.append(outcome)
    finally:
        for point in sorted(mounts_under(root), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(ch.format_table(outcomes))
    print()
    for o in outcomes:
        print(f"{o.fault}:")
        for line in o.notes:
            print(f"  - {line}")
        for line in o.problems:
            print(f"  ! {line}")
    if args.keep:
        print(f"\nworking directory kept: {root}")
    failed = [o.fault for o in outcomes if not o.ok]
    print(
        f"\n{len(outcomes) - len(failed)} of {len(outcomes)} faults ended in a recovery or a clear error"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
