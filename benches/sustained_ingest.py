"""Sustained ingestion through the server: events/s in, lag until visible in DuckDB, RSS.

1. `activitybi serve --http` (with its warehouse owner, as deployed) takes `--rate`
   events/s for `--seconds` from SDK client sessions calling log_events (100 events a
   call). Each event carries its send time; DuckDB stamps `_ingested_at` when the owner
   commits it, so after the run one query gives the lag of every event.
2. With no owner running (this script holds the queue's reader lock), the server takes
   100,000 events that stay pending; its RSS is read then.

Run: python benches/sustained_ingest.py [--rate 10000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import anyio
import duckdb
import httpx2
import orjson
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from activitybi import QueueReader

BATCH = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    tokens = home.parent / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok": "load@example.com"}))
    env = {**os.environ, "ACTIVITYBI_HOME": str(home), "ACTIVITYBI_EVENTS_PER_SECOND": "1000000"}
    proc = subprocess.Popen(
        ["activitybi", "serve", "--http", "--port", str(port), "--tokens", str(tokens)], env=env
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


async def drive(url: str, rate: int, seconds: float, sessions: int = 10) -> tuple[int, list[float]]:
    calls_per_session = rate / BATCH / sessions
    sent = 0
    latencies: list[float] = []

    async def one(k: int) -> None:
        nonlocal sent
        headers = {"Authorization": "Bearer tok"}
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
        async with http, streamable_http_client(url, http_client=http) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            t0 = time.perf_counter() + k / (calls_per_session * sessions)
            i = 0
            while (due := t0 + i / calls_per_session) < t0 + seconds:
                await anyio.sleep(max(0.0, due - time.perf_counter()))
                now = time.time()
                events = [
                    {"activity": "ran_load", "feature_json": {"sent": now, "n": j}} for j in range(BATCH)
                ]
                t = time.perf_counter()
                res = await s.call_tool("log_events", {"events": events})
                latencies.append(time.perf_counter() - t)
                if not res.is_error:
                    sent += len(orjson.loads(res.content[0].text))
                i += 1

    async with anyio.create_task_group() as tg:
        for k in range(sessions):
            tg.start_soon(one, k)
    return sent, latencies


def owner_pid(home: Path) -> int | None:
    try:
        return int(orjson.loads((home / "status" / "owner.json").read_bytes())["pid"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="abi-sustained-"))
    try:
        home = root / "home"
        proc, url = start(home)
        rss: list[tuple[float, float]] = []
        stop = False

        async def sample() -> None:
            while not stop:
                owner = owner_pid(home)
                rss.append((rss_mb(proc.pid), rss_mb(owner) if owner else 0.0))
                await anyio.sleep(1)

        async def run() -> tuple[int, list[float]]:
            nonlocal stop
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                result = await drive(url, args.rate, args.seconds)
                stop = True
            return result

        t = time.perf_counter()
        sent, lat = anyio.run(run)
        took = time.perf_counter() - t
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # let the owner catch up, then stop the server
            status = orjson.loads((home / "status" / "owner.json").read_bytes())
            if status["pending"] == 0:
                break
            time.sleep(0.5)
        proc.terminate()
        proc.wait(30)
        con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
        loaded, p50, p95, p99 = con.execute(
            "SELECT count(*), quantile_cont(lag, 0.5), quantile_cont(lag, 0.95), quantile_cont(lag, 0.99) "
            "FROM (SELECT epoch(_ingested_at) - (feature_json->>'sent')::DOUBLE AS lag "
            "FROM claude_stream WHERE activity = 'ran_load')"
        ).fetchone()  # type: ignore[misc]
        con.close()
        lat.sort()
        print(
            f"events acknowledged {sent:,} in {took:.1f} s ({sent / took:,.0f}/s; target {args.rate:,}/s);"
            f" loaded {loaded:,}"
        )
        print(
            f"log_events (100 events) round trip p50 {lat[len(lat) // 2] * 1e3:.1f} ms"
            f"  p95 {lat[int(len(lat) * 0.95)] * 1e3:.1f} ms"
        )
        print(f"ingestion lag (ack → committed in DuckDB) p50 {p50:.3f} s  p95 {p95:.3f} s  p99 {p99:.3f} s")
        print(f"RSS max: server {max(r[0] for r in rss):.0f} MB, owner {max(r[1] for r in rss):.0f} MB")

        home2 = root / "pending-home"
        holder = QueueReader(str(home2 / "queue"))  # no owner: everything stays pending
        proc, url = start(home2)
        sent, _ = anyio.run(lambda: drive(url, 20_000, 5.0))
        pending = holder.pending()
        print(
            f"with {pending:,} events pending (no owner): server RSS {rss_mb(proc.pid):.0f} MB"
            f" (goal < 150 MB)"
        )
        proc.terminate()
        proc.wait(30)
        holder.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
