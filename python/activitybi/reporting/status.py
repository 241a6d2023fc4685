"""`activitybi status`: the machine's activitybi at a glance, from the status files the
servers and the warehouse owner write, and the queue directory itself."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from activitybi import config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and _alive(int(data.get("pid", 0))) else None


def _ago(ts: float | None) -> str:
    return "never" if not ts else f"{time.time() - ts:,.1f} s ago"


def show(home: Path, console: Console | None = None) -> None:
    console = console or Console()
    qdir = config.Home(home).queue
    segments = list(qdir.glob("*.ndjson")) + list(qdir.glob("*.open"))
    owner = _read(config.Home(home).status / "owner.json")
    servers = [s for p in sorted(config.Home(home).status.glob("server-*.json")) if (s := _read(p))]

    queue = Table(title="queue", show_header=False)
    queue.add_row("directory", str(qdir))
    queue.add_row("segments", f"{len(segments)} ({sum(p.stat().st_size for p in segments):,} bytes)")
    pending = owner["pending"] if owner else (servers[0]["queue"]["pending"] if servers else None)
    queue.add_row("pending events", "unknown (nothing running)" if pending is None else f"{pending:,}")
    quarantine = config.Home(home).quarantine
    quarantined = quarantine.read_bytes().count(b"\n") if quarantine.exists() else 0
    queue.add_row("quarantined lines", f"{quarantined:,} ({quarantine})" if quarantined else "0")
    console.print(queue)

    up = Table(title="uploader (warehouse owner)", show_header=False)
    if owner is None:
        up.add_row("state", "not running (a server starts one; or run `activitybi upload --follow`)")
    else:
        up.add_row("pid / warehouse", f"{owner['pid']} / {owner.get('warehouse')}")
        up.add_row("lag", f"{owner['lag_seconds']:.1f} s")
        up.add_row("loaded / duplicates", f"{owner['loaded']:,} / {owner['duplicates']:,}")
        up.add_row(
            "retries / quarantined / drifted",
            f"{owner['retries']:,} / {owner['quarantined']:,} / {owner['drifted']:,}",
        )
        up.add_row("last commit", _ago(owner.get("last_commit")))
        up.add_row("last error", owner.get("last_error") or "none")
        for table, n in (owner.get("rows") or {}).items():
            up.add_row(f"rows in {table}", f"{n:,}")
    console.print(up)

    srv = Table(title="servers")
    for col in (
        "pid",
        "transport",
        "tool calls",
        "errors",
        "memory hit rate",
        "redis",
        "last error",
    ):
        srv.add_column(col)
    for s in servers:
        cache = s.get("cache", {})
        mem = cache.get("memory", {})
        looked = mem.get("hits", 0) + mem.get("misses", 0)
        redis = cache.get("redis")
        last = s["last_errors"][-1] if s.get("last_errors") else None
        srv.add_row(
            str(s["pid"]),
            s["source"],
            f"{s['tool_calls']:,}",
            f"{s['tool_errors']:,}",
            f"{mem.get('hits', 0) / looked:.0%}" if looked else "-",
            "off" if redis is None else f"{redis.get('hits', 0)} hits, {redis.get('errors', 0)} errors",
            "-"
            if last is None
            else f"{dt.datetime.fromtimestamp(last['at']):%H:%M:%S} {last['tool']}: {last['error'][:60]}",
        )
    if not servers:
        srv.add_row("-", "no server running", "", "", "", "", "")
    console.print(srv)
