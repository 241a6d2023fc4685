"""The health of this machine's activitybi, read from the files under `$ACTIVITYBI_HOME`
without taking any lock another process needs: one implementation for the report's
Health section and for `activitybi status`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson

from activitybi import config
from activitybi.reporting.source import lock_holder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_status(path: Path) -> dict[str, Any] | None:
    """A process's status file, if that process still runs (a dead one's file is stale)."""
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and _alive(int(data.get("pid", 0))) else None


def _queue(qdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dir": str(qdir),
        "pending": 0,
        "max_pending": None,
        "sealed_segments": 0,
        "open_segments": 0,
        "bytes_on_disk": 0,
    }
    if not qdir.is_dir():
        return out
    from activitybi import Queue

    q = Queue(str(qdir))  # opening is lazy: no segment is created until an append
    try:
        stats = q.stats()
        out["pending"], out["max_pending"] = stats["pending"], stats.get("max_pending")
    finally:
        q.close()
    for seg in qdir.iterdir():
        if seg.suffix == ".ndjson":
            out["sealed_segments"] += 1
        elif seg.suffix == ".open":
            out["open_segments"] += 1
        else:
            continue
        with contextlib.suppress(FileNotFoundError):
            out["bytes_on_disk"] += seg.stat().st_size
    torn = qdir / "quarantine"
    if torn.is_dir():
        out["torn_segments"] = sum(1 for _ in torn.iterdir())
    return out


def _quarantine(qfile: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"file": str(qfile), "lines": 0, "last_reason": None}
    if not qfile.is_file():
        return out
    lines = [ln for ln in qfile.read_bytes().splitlines() if ln.strip()]
    out["lines"] = len(lines)
    if lines:
        with contextlib.suppress(orjson.JSONDecodeError):
            last = orjson.loads(lines[-1])
            out["last_reason"] = last.get("reason") if isinstance(last, dict) else None
    return out


def _tickets(tdir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if tdir.is_dir():
        for path in tdir.glob("*.json"):
            try:
                status = orjson.loads(path.read_bytes()).get("status", "?")
            except (OSError, orjson.JSONDecodeError):
                continue
            counts[status] = counts.get(status, 0) + 1
    return counts


def collect(home: Path) -> dict[str, Any]:
    """The queue, quarantine, tickets, artifacts, the process holding the warehouse, and
    the status files of the running owner and servers."""
    from activitybi.query.artifacts import ArtifactStore

    paths = config.Home(home)
    arts = ArtifactStore(home).list()
    return {
        "home": str(home),
        "queue": _queue(paths.queue),
        "quarantine": _quarantine(paths.quarantine),
        "tickets": _tickets(paths.tickets),
        "tickets_dir": str(paths.tickets),
        "artifacts": {
            "count": len(arts),
            "bytes": sum(a.size_bytes for a in arts),
            "dir": str(paths.artifacts),
        },
        "warehouse": str(paths.warehouse),
        "owner": lock_holder(paths.warehouse),
        "uploader": live_status(paths.status / "owner.json"),
        "servers": [s for p in sorted(paths.status.glob("server-*.json")) if (s := live_status(p))],
    }
