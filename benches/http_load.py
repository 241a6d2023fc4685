"""1000 MCP sessions over streamable HTTP on loopback, each making one tools/call a second.

The server is `activitybi serve --http` as the CLI runs it (warehouse owner included),
behind the fast front (`--front fast`, the default), or the SDK's transport alone
(`--front sdk`), or the installed CLI itself (`--front cli`). Every session has its own
bearer token (one customer each) and is a real MCP session over the wire: `initialize`,
`notifications/initialized`, then `tools/call` requests with the session id and protocol
version headers. The driver is the lean one of benches/http_cost.py (raw HTTP/1.1 on
asyncio/uvloop, a keep-alive connection per session): the SDK's own client costs about
1 ms of CPU per call by itself (see http_cost.py --driver sdk), so 1000 of them at 1 call/s
would need a core of their own on this 2-core machine, competing with the server measured.

Each session fires on a fixed schedule (1/rate apart, a random phase), open loop: latency is
taken from the scheduled time, so a late answer also delays and counts against the calls
behind it. The mix is mostly log_event, then get_context, log_insight and submit_query.
Printed: p50/p95/p99 per tool, errors, calls/s, server CPU per call and RSS, the warehouse
owner's CPU, the driver's own CPU. Afterwards the server is stopped, `activitybi upload
--once` drains the queue into DuckDB, and every acknowledged event (each activity_id
log_event returned, each atom_id of log_insight) must be there exactly once; every answered
call must have its called_tool row.

Run: python benches/http_load.py [--sessions 1000] [--rate 1] [--duration 20] [--front fast]
        [--stateless] [--mix log_event=0.8,get_context=0.12,log_insight=0.06,submit_query=0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from http_cost import (  # noqa: E402
    LeanSession,
    Server,
    pct,
    proc_cpu,
    self_cpu,
    use_uvloop,
)

DEFAULT_MIX = "log_event=0.8,get_context=0.12,log_insight=0.06,submit_query=0.02"


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    return out


def children_cpu(pid: int) -> float:
    """CPU of a process's live children (the warehouse owner), in seconds."""
    total = 0.0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    with contextlib.suppress(OSError):
                        total += proc_cpu(int(child)) + children_cpu(int(child))
    except OSError:
        pass
    return total


def run_queue_wait(pid: int) -> float:
    """Seconds the process's main thread has spent runnable but waiting for a CPU
    (/proc/<pid>/schedstat): the share of latency other work on the machine causes."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def arguments(tool: str, rnd: random.Random, n: int) -> dict[str, Any]:
    if tool == "log_event":
        return {
            "activity": rnd.choice(["asked_question", "received_answer", "ran_query"]),
            "feature_json": {"n": n, "words": rnd.randint(1, 400)},
            "model": "claude-x",
            "input_tokens": rnd.randint(10, 5000),
            "output_tokens": rnd.randint(1, 900),
        }
    if tool == "log_insight":
        return {"subject": "load", "metric": f"m{rnd.randint(0, 3)}", "value": round(rnd.random() * 100, 3)}
    if tool == "submit_query":
        return {"template": "activity_counts"}
    return {}


class Stats:
    def __init__(self, tools: list[str]) -> None:
        self.latency: dict[str, list[float]] = {t: [] for t in tools}  # from the scheduled time
        self.service: dict[str, list[float]] = {t: [] for t in tools}  # from the send
        self.errors: dict[str, int] = dict.fromkeys(tools, 0)
        self.failures: dict[str, int] = dict.fromkeys(tools, 0)  # transport failures, timeouts
        self.acked: list[str] = []
        self.answered = 0
        self.first_error: str | None = None


async def run_session(
    i: int,
    session: LeanSession,
    start: float,
    end: float,
    rate: float,
    tools: list[str],
    weights: list[float],
    stats: Stats,
    timeout: float,
) -> None:
    clock = time.perf_counter  # uvloop's loop.time() is in whole, cached milliseconds
    rnd = random.Random(i)
    period = 1.0 / rate
    due = start + rnd.random() * period
    n = 0
    while due < end:
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tool = rnd.choices(tools, weights)[0]
        sent = clock()
        try:
            result = await asyncio.wait_for(session.call(tool, arguments(tool, rnd, n)), timeout)
        except Exception as e:
            stats.failures[tool] += 1
            stats.first_error = stats.first_error or f"{tool}: {e!r}"[:300]
            session.close()  # the next call goes on a new connection, in the same MCP session
        else:
            done = clock()
            stats.answered += 1
            stats.latency[tool].append(done - due)
            stats.service[tool].append(done - sent)
            if result.get("isError"):
                stats.errors[tool] += 1
                stats.first_error = stats.first_error or f"{tool}: {result['content'][0]['text']}"[:300]
            elif tool in ("log_event", "log_insight"):
                stats.acked.append(result["content"][0]["text"])
        n += 1
        due += period


async def drive(a: argparse.Namespace, server: Server, tokens: list[str]) -> tuple[Stats, dict[str, float]]:
    tools, weights = [], []
    for part in a.mix.split(","):
        name, _, w = part.partition("=")
        tools.append(name)
        weights.append(float(w))
    stats = Stats(tools)
    gate = asyncio.Semaphore(32)
    opened = 0

    async def open_one(token: str) -> LeanSession:
        nonlocal opened
        async with gate:
            s = await LeanSession(server.port, token, stateless=a.stateless).open()
            opened += 1
            return s

    t0, c0 = time.perf_counter(), server.cpu()
    sessions = await asyncio.gather(*(open_one(t) for t in tokens))
    opening = {"open_s": time.perf_counter() - t0, "open_cpu_ms": (server.cpu() - c0) / len(tokens) * 1e3}
    print(
        f"opened {opened} sessions in {opening['open_s']:.1f} s "
        f"({opening['open_cpu_ms']:.2f} ms of server CPU each, handshake by the SDK)",
        flush=True,
    )

    rss: list[float] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            rss.append(server.rss_mb())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    if a.owner_nice:  # the warehouse owner the server started (`activitybi upload --follow`)
        for pid in children(server.proc.pid):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, a.owner_nice)
                for task in os.listdir(f"/proc/{pid}/task"):  # DuckDB's threads too
                    os.setpriority(os.PRIO_PROCESS, int(task), a.owner_nice)
    sampler = asyncio.create_task(sample())
    start = time.perf_counter() + 1.0
    end = start + a.duration
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    spy = None
    if a.profile:
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--nonblocking",
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                a.profile,
                "--pid",
                str(server.proc.pid),
                "-d",
                str(int(a.duration)),
            ]
            + (["--idle"] if a.profile_idle else []),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    connects = sum(s.connects for s in sessions)
    q0, r0 = run_queue_wait(server.proc.pid), run_queue_wait(os.getpid())
    s0, o0, d0, w0 = server.cpu(), children_cpu(server.proc.pid), self_cpu(), time.perf_counter()
    await asyncio.gather(
        *(
            run_session(i, s, start, end, a.rate, tools, weights, stats, a.timeout)
            for i, s in enumerate(sessions)
        )
    )
    s1, o1, d1, w1 = server.cpu(), children_cpu(server.proc.pid), self_cpu(), time.perf_counter()
    q1, r1 = run_queue_wait(server.proc.pid), run_queue_wait(os.getpid())
    reconnects = sum(s.connects for s in sessions) - connects
    if spy is not None:
        spy.wait(timeout=60)
    stop.set()
    await sampler
    for s in sessions:
        s.close()
    return stats, {
        **opening,
        "server_cpu": s1 - s0,
        "owner_cpu": o1 - o0,
        "driver_cpu": d1 - d0,
        "wall": w1 - w0,
        "rss_max": max(rss or [0.0]),
        "rss_end": rss[-1] if rss else 0.0,
        "server_wait": q1 - q0,
        "driver_wait": r1 - r0,
        "reconnects": reconnects,
        "load": os.getloadavg()[0],
    }


def check_warehouse(home: Path, acked: list[str], answered: int) -> None:
    t = time.perf_counter()
    done = subprocess.run(
        ["activitybi", "upload", "--once", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "ACTIVITYBI_HOME": str(home)},
    )
    if done.returncode != 0:
        print(f"upload --once failed: {done.stderr[-2000:]}")
        return
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT activity_id, count(*) FROM claude_stream WHERE activity <> 'called_tool' GROUP BY 1"
    ).fetchall()
    called = con.execute(
        "SELECT count(*) FROM claude_stream WHERE activity = 'called_tool' "
        "AND json_extract_string(feature_json, '$.tool') IS NOT NULL"
    ).fetchone()
    con.close()
    found = dict(rows)
    missing = [x for x in acked if x not in found]
    twice = [x for x in acked if found.get(x, 0) > 1]
    duplicated_acks = len(acked) - len(set(acked))
    print(
        f"warehouse (after upload --once, {time.perf_counter() - t:.1f} s): {len(acked)} acknowledged "
        f"events, {len(acked) - len(missing)} found, {len(missing)} lost, {len(twice)} loaded twice, "
        f"{duplicated_acks} ids acknowledged twice; called_tool rows {called[0] if called else 0} "
        f"for {answered} answered calls"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--rate", type=float, default=1.0, help="calls per second per session")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load (60 for the record)")
    p.add_argument(
        "--front",
        choices=["fast", "sdk", "cli"],
        default="fast",
        help="fast: behind FastFront; sdk: the SDK's transport alone; "
        "cli: `activitybi serve --http` as installed",
    )
    p.add_argument("--stateless", action="store_true")
    p.add_argument("--mix", default=DEFAULT_MIX)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--http", default="auto")
    p.add_argument("--loop", default="auto")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the server (and its owner) and the driver at this niceness, e.g. -10 so that "
        "other work on a shared machine does not take their CPU",
    )
    p.add_argument(
        "--rt",
        action="store_true",
        help="run the server and the driver under SCHED_FIFO (chrt), so that other work on a "
        "shared machine cannot delay them; the warehouse owner stays a normal process",
    )
    p.add_argument(
        "--owner-nice",
        type=int,
        default=0,
        help="renice the warehouse owner process (and its threads) once the load starts",
    )
    p.add_argument("--keep", action="store_true", help="keep the server's home")
    p.add_argument("--profile", metavar="FILE", help="py-spy the server during the load (raw stacks)")
    p.add_argument("--profile-idle", action="store_true", help="with --profile: idle threads too")
    a = p.parse_args()
    use_uvloop()
    if a.nice:
        os.setpriority(os.PRIO_PROCESS, 0, a.nice)
    if a.rt:  # children (the upload afterwards) start as normal processes again
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(10))
    workdir = Path(tempfile.mkdtemp(prefix="http-load-"))
    tokens = {
        f"tok-{i:04d}-{random.getrandbits(64):016x}": f"user{i:04d}@load.example" for i in range(a.sessions)
    }
    print(
        f"# {a.sessions} sessions x {a.rate:g} call/s for {a.duration:g} s, "
        f"{'stateless' if a.stateless else 'stateful'}, server: {a.front}, mix {a.mix}, nice {a.nice}"
        f"{', SCHED_FIFO' if a.rt else ''}{f', owner nice {a.owner_nice}' if a.owner_nice else ''}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    server = Server(
        a.front,
        workdir,
        tokens,
        stateless=a.stateless,
        http=a.http,
        loop=a.loop,
        owner=True,
        nice=a.nice,
        rt=a.rt,
    )
    try:
        stats, m = asyncio.run(drive(a, server, list(tokens)))
    finally:
        server.stop()
    calls = sum(len(v) for v in stats.latency.values())
    print(
        f"\n{'tool':14s} {'calls':>7s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}"
        f" {'svc p95':>8s} {'is_error':>8s} {'failed':>7s}"
    )
    everything: list[float] = []
    for tool, xs in stats.latency.items():
        everything += xs
        print(
            f"{tool:14s} {len(xs):7d} {pct(xs, 50) * 1e3:8.2f} {pct(xs, 95) * 1e3:8.2f} "
            f"{pct(xs, 99) * 1e3:8.2f} {max(xs or [0]) * 1e3:8.2f} "
            f"{pct(stats.service[tool], 95) * 1e3:8.2f} "
            f"{stats.errors[tool]:8d} {stats.failures[tool]:7d}"
        )
    print(
        f"{'all':14s} {calls:7d} {pct(everything, 50) * 1e3:8.2f} {pct(everything, 95) * 1e3:8.2f} "
        f"{pct(everything, 99) * 1e3:8.2f} {max(everything or [0]) * 1e3:8.2f}"
    )
    if stats.first_error:
        print(f"first error: {stats.first_error}")
    print(
        f"\n{calls / m['wall']:.0f} calls/s over {m['wall']:.1f} s; server CPU "
        f"{m['server_cpu'] / m['wall']:.0%} of a core = "
        f"{m['server_cpu'] / max(calls, 1) * 1e3:.3f} ms per call; warehouse owner "
        f"{m['owner_cpu'] / m['wall']:.0%} of a core; driver {m['driver_cpu'] / m['wall']:.0%} "
        f"of a core = {m['driver_cpu'] / max(calls, 1) * 1e3:.3f} ms per call; "
        f"server RSS max {m['rss_max']:.0f} MB (end {m['rss_end']:.0f} MB)"
    )
    print(
        f"waiting for a CPU (run queue, main thread): server "
        f"{m['server_wait'] / m['wall']:.0%} of the time, "
        f"driver {m['driver_wait'] / m['wall']:.0%}; load average {m['load']:.2f} at the end; "
        f"{m['reconnects']} TCP reconnects (uvicorn closes a connection idle for 5 s)"
    )
    p95 = pct(everything, 95) * 1e3
    print(
        f"target p95 < 25 ms at {a.sessions * a.rate:.0f} calls/s: {'met' if p95 < 25 else 'NOT met'} "
        f"({p95:.2f} ms)",
        flush=True,
    )
    if a.profile and Path(a.profile).exists():
        from http_cost import hot_spots

        print(hot_spots(Path(a.profile), f"server under load ({a.front})", top=25))
    check_warehouse(server.home, stats.acked, stats.answered)
    if not a.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"home kept: {server.home}")


if __name__ == "__main__":
    main()
