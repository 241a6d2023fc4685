"""`activitybi status`: the machine's activitybi at a glance, as `health.collect` reads it
from the files under `$ACTIVITYBI_HOME` (the same figures as the report's Health)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from activitybi.reporting import health


def _ago(ts: float | None) -> str:
    return "never" if not ts else f"{time.time() - ts:,.1f} s ago"


def _table(title: str, rows: list[list[str]], columns: list[str] | None = None) -> Table:
    """Every cell plain `Text`: a server's last error or a path is never parsed as markup."""
    tb = Table(title=title, show_header=columns is not None)
    for c in columns or ["", ""]:
        tb.add_column(c)
    for r in rows:
        tb.add_row(*(Text(c) for c in r))
    return tb


def show(home: Path, console: Console | None = None) -> None:
    console = console or Console()
    h = health.collect(home)
    q, qu, owner = h["queue"], h["quarantine"], h["uploader"]
    console.print(
        _table(
            "queue",
            [
                ["directory", q["dir"]],
                [
                    "segments",
                    f"{q['sealed_segments'] + q['open_segments']} ({q['bytes_on_disk']:,} bytes)",
                ],
                ["pending events", f"{q['pending']:,}"],
                ["quarantined lines", f"{qu['lines']:,} ({qu['file']})" if qu["lines"] else "0"],
            ],
        )
    )
    if owner is None:
        up = [["state", "not running (a server starts one; or run `activitybi upload --follow`)"]]
    else:
        up = [
            ["pid / warehouse", f"{owner['pid']} / {owner.get('warehouse')}"],
            ["lag", f"{owner['lag_seconds']:.1f} s"],
            ["loaded / duplicates", f"{owner['loaded']:,} / {owner['duplicates']:,}"],
            [
                "retries / quarantined / drifted",
                f"{owner['retries']:,} / {owner['quarantined']:,} / {owner['drifted']:,}",
            ],
            ["last commit", _ago(owner.get("last_commit"))],
            ["last error", owner.get("last_error") or "none"],
            *([f"rows in {table}", f"{n:,}"] for table, n in (owner.get("rows") or {}).items()),
        ]
    console.print(_table("uploader (warehouse owner)", up))
    servers = []
    for s in h["servers"]:
        cache = s.get("cache", {})
        mem = cache.get("memory", {})
        looked = mem.get("hits", 0) + mem.get("misses", 0)
        redis = cache.get("redis")
        last = s["last_errors"][-1] if s.get("last_errors") else None
        servers.append(
            [
                str(s["pid"]),
                s["source"],
                f"{s['tool_calls']:,}",
                f"{s['tool_errors']:,}",
                f"{mem.get('hits', 0) / looked:.0%}" if looked else "-",
                "off" if redis is None else f"{redis.get('hits', 0)} hits, {redis.get('errors', 0)} errors",
                "-"
                if last is None
                else f"{dt.datetime.fromtimestamp(last['at']):%H:%M:%S} {last['tool']}: {last['error'][:60]}",
            ]
        )
    columns = ["pid", "transport", "tool calls", "errors", "memory hit rate", "redis", "last error"]
    console.print(_table("servers", servers or [["-", "no server running", "", "", "", "", ""]], columns))
