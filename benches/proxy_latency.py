"""What `activitybi proxy` adds to a tool call's round trip (issue 12).

One SDK client session talks to the fixture server directly, another to the same server
through `activitybi proxy` (recording on, into a temporary queue); calls alternate between
the two so that both see the same machine load. Targets: at most +10% on p50 and at most
+0.5 ms on p95.

Run: python benches/proxy_latency.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from activitybi import QueueReader

SERVER = [sys.executable, str(Path(__file__).parent.parent / "tests" / "proxy_fixtures" / "sdk_server.py")]


def pct(xs: list[float], p: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] * 1e3


async def measure(calls: int, home: str) -> tuple[list[float], list[float]]:
    env = {**os.environ, "ACTIVITYBI_HOME": home, "ACTIVITYBI_CUSTOMER": "bench"}
    direct = StdioServerParameters(command=SERVER[0], args=SERVER[1:], env=env)
    proxied = StdioServerParameters(
        command=sys.executable, args=["-m", "activitybi", "proxy", "--name", "bench", "--", *SERVER], env=env
    )
    async with (
        stdio_client(direct) as (r1, w1),
        ClientSession(r1, w1) as a,
        stdio_client(proxied) as (r2, w2),
        ClientSession(r2, w2) as b,
    ):
        await a.initialize()
        await b.initialize()
        times: dict[int, list[float]] = {0: [], 1: []}
        for i in range(calls + 300):
            for which, s in ((i % 2, (a, b)[i % 2]), (1 - i % 2, (a, b)[1 - i % 2])):
                t = time.perf_counter()
                await s.call_tool("echo", {"text": "hello"})
                if i >= 300:  # warm-up
                    times[which].append(time.perf_counter() - t)
        return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        direct, proxied = anyio.run(measure, opts.calls, home)
        with QueueReader(str(Path(home, "queue"))) as reader:
            recorded = len(reader.read(max_lines=1_000_000)[0])
    d50, d95, p50, p95 = pct(direct, 50), pct(direct, 95), pct(proxied, 50), pct(proxied, 95)
    print(f"calls each: {opts.calls} (+300 warm-up), events the proxy recorded: {recorded}")
    print(f"direct        p50 {d50:.3f} ms  p95 {d95:.3f} ms")
    print(f"through proxy p50 {p50:.3f} ms  p95 {p95:.3f} ms")
    print(
        f"p50 ratio {p50 / d50:.3f}x (target <= 1.10)   p95 difference {p95 - d95:+.3f} ms (target <= +0.5)"
    )


if __name__ == "__main__":
    main()
