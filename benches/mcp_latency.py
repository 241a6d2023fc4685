"""MCP figures of the server (issue 4), each against a baseline in the same run.

1. Round trips over stdio with the SDK's client: get_context and log_event against a
   do-nothing tool of a server on the same SDK (benches/noop_server.py).
2. get_context's handler in-process: p95 on a memory hit, and on a Redis hit (when
   REDIS_URL is set).
3. Time from spawning `activitybi serve` to its answer to `initialize`, against the
   do-nothing SDK server.

Run: python benches/mcp_latency.py [--calls 2000] [--spawns 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import orjson
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

HERE = Path(__file__).parent


def pct(xs: list[float], p: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1]


def line(name: str, xs: list[float], base: list[float] | None = None) -> str:
    s = f"{name:34s} p50 {pct(xs, 50) * 1e3:7.3f} ms  p95 {pct(xs, 95) * 1e3:7.3f} ms"
    if base:
        s += f"  -> {pct(xs, 50) / pct(base, 50):.2f}x / {pct(xs, 95) / pct(base, 95):.2f}x baseline p50/p95"
    return s


async def round_trips(
    params: StdioServerParameters, tool: str, args: dict[str, object], calls: int
) -> list[float]:
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        for _ in range(200):
            await s.call_tool(tool, args)
        out = []
        for _ in range(calls):
            t = time.perf_counter()
            await s.call_tool(tool, args)
            out.append(time.perf_counter() - t)
        return out


def spawn_to_initialize(cmd: list[str], env: dict[str, str]) -> float:
    init = (
        orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "1"},
                },
            }
        )
        + b"\n"
    )
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(init)
    proc.stdin.flush()
    proc.stdout.readline()
    took = time.perf_counter() - t
    proc.stdin.close()
    proc.wait(timeout=30)
    return took


def in_process(home: Path, calls: int) -> None:
    os.environ["ACTIVITYBI_HOME"] = str(home)
    from activitybi.memory.context import ContextService
    from activitybi.memory.journal import MemoryJournal

    journal = MemoryJournal(home / "memory")
    for i in range(50):
        journal.append(
            "bench@example.com",
            {
                "subject": f"s{i % 10}",
                "metric": "m",
                "value": i,
                "ts": f"2026-11-{1 + i % 28:02d}T00:00:00.000",
                "atom_id": str(i),
                "customer_id": "bench@example.com",
            },
        )
    svc = ContextService(journal, home / "context")
    svc.get("bench@example.com")
    hits = []
    for _ in range(calls * 10):
        t = time.perf_counter()
        svc.get("bench@example.com")
        hits.append(time.perf_counter() - t)
    print(line("get_context handler, memory hit", hits))
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        print("get_context handler, Redis hit     (skipped: set REDIS_URL)")
        return
    from activitybi.memory.redis_tier import RedisTier

    tier = RedisTier.from_env()
    svc_r = ContextService(journal, home / "context", tier, capacity=1)
    svc_r.get("bench@example.com")  # built once, written to Redis
    redis_hits = []
    for _ in range(calls):
        svc_r.cache.clear()  # force tier 2
        t = time.perf_counter()
        svc_r.get("bench@example.com")
        redis_hits.append(time.perf_counter() - t)
    print(line("get_context handler, Redis hit", redis_hits))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--spawns", type=int, default=10)
    ap.add_argument(
        "--no-owner",
        action="store_true",
        help="keep the servers from uploading (the warehouse owner is elsewhere)",
    )
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="abi-mcp-"))
    env = {
        "ACTIVITYBI_HOME": str(home),
        "ACTIVITYBI_CUSTOMER": "bench@example.com",
        "PATH": os.environ["PATH"],
    }
    ours = StdioServerParameters(command="activitybi", args=["serve"], env=env)
    noop = StdioServerParameters(command=sys.executable, args=[str(HERE / "noop_server.py")], env=env)

    async def run() -> None:
        if args.no_owner:  # hold the reader lock here, so no server uploads in its process
            from activitybi import QueueReader

            holder = QueueReader(str(home / "queue"))  # noqa: F841
        base = await round_trips(noop, "noop", {}, args.calls)
        ctx = await round_trips(ours, "get_context", {}, args.calls)
        log = await round_trips(ours, "log_event", {"activity": "ran_bench"}, args.calls)
        base2 = await round_trips(noop, "noop", {}, args.calls)
        both = base + base2
        print(line("stdio round trip, do-nothing tool", both))
        print(line("stdio round trip, get_context", ctx, both))
        print(line("stdio round trip, log_event", log, both))

    anyio.run(run)
    in_process(home, args.calls)
    ours_cmd = ["activitybi", "serve"]
    noop_cmd = [sys.executable, str(HERE / "noop_server.py")]
    t_ours = [spawn_to_initialize(ours_cmd, env) for _ in range(args.spawns)]
    t_noop = [spawn_to_initialize(noop_cmd, env) for _ in range(args.spawns)]
    print(
        f"spawn → initialize answer, activitybi serve : median {statistics.median(t_ours) * 1e3:6.0f} ms"
        f"  max {max(t_ours) * 1e3:6.0f} ms"
    )
    print(
        f"spawn → initialize answer, bare SDK server   : median {statistics.median(t_noop) * 1e3:6.0f} ms"
        f"  max {max(t_noop) * 1e3:6.0f} ms"
    )


if __name__ == "__main__":
    main()
