"""submit_query returns a ticket at once, whatever the query costs.

Round trips of submit_query over stdio with the SDK's client (each submits a dataset
query; the warehouse owner works through them meanwhile), against the do-nothing tool of
the same SDK (benches/noop_server.py) measured in the same run.

Run: python benches/submit_latency.py [--calls 300]
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

SPEC = {
    "cohort": {
        "activity": "asked_question",
        "occurrence": "all",
        "filters": [],
        "columns": [{"column": "activity_id", "type": "string", "as": "activity_id"}],
    },
    "appends": [
        {
            "activity": "asked_question",
            "relationship": "aggregate_all_ever",
            "filters": [],
            "columns": [{"column": "activity_id", "type": "string", "agg": "count", "as": "n"}],
        }
    ],
}


def pct(xs: list[float], p: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1]


async def timed(params: StdioServerParameters, tool: str, args: dict[str, object], n: int) -> list[float]:
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        for _ in range(20):
            await s.call_tool("log_event", {"activity": "asked_question"}) if tool != "noop" else None
        out = []
        for _ in range(n):
            t = time.perf_counter()
            res = await s.call_tool(tool, args)
            out.append(time.perf_counter() - t)
            assert not res.is_error, res
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="abi-submit-"))
    env = {
        "ACTIVITYBI_HOME": str(home),
        "ACTIVITYBI_CUSTOMER": "bench@example.com",
        "ACTIVITYBI_QUERIES_PER_MINUTE": "1000000",
        "PATH": os.environ["PATH"],
    }
    ours = StdioServerParameters(command="activitybi", args=["serve"], env=env)
    noop = StdioServerParameters(
        command=sys.executable, args=[str(Path(__file__).with_name("noop_server.py"))], env=env
    )

    async def run() -> None:
        base = await timed(noop, "noop", {}, args.calls)
        sub = await timed(ours, "submit_query", {"template": "dataset", "params": {"spec": SPEC}}, args.calls)
        print(f"do-nothing tool : p50 {pct(base, 50) * 1e3:6.2f} ms  p95 {pct(base, 95) * 1e3:6.2f} ms")
        print(
            f"submit_query    : p50 {pct(sub, 50) * 1e3:6.2f} ms  p95 {pct(sub, 95) * 1e3:6.2f} ms"
            f"  (target p95 < 50 ms)"
        )

    anyio.run(run)


if __name__ == "__main__":
    main()
