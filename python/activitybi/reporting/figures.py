"""Every figure a person sees (`activitybi report`, its JSON and its HTML page), computed
only through the SafeSQL templates, so the report and the model's own queries can never
disagree, and the report gives the same figures whether it reads the DuckDB file or asks
the warehouse owner through tickets (see `source`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from activitybi import config
from activitybi.query import templates
from activitybi.reporting import health, source

if TYPE_CHECKING:
    import duckdb

    from activitybi.warehouse import Warehouse

EPOCH = dt.date(1970, 1, 1)
"""`since` of a report over all time (the templates default to the last 30 days)."""

_BUCKETS = (  # (name, step, longest span drawn with it)
    ("second", dt.timedelta(seconds=1), dt.timedelta(minutes=3)),
    ("minute", dt.timedelta(minutes=1), dt.timedelta(hours=3)),
    ("hour", dt.timedelta(hours=1), dt.timedelta(days=4)),
    ("day", dt.timedelta(days=1), dt.timedelta(days=120)),
    ("week", dt.timedelta(weeks=1), dt.timedelta(days=800)),
)


def figures(run: source.Runner, *, since: dt.date | None = None, limit: int = 15) -> dict[str, Any]:
    """Every figure of the report as plain JSON-friendly data, from templates run by `run`."""
    p: dict[str, Any] = {"since": (since or EPOCH).isoformat()}
    top = {**p, "limit": limit}
    got = run.run(
        {
            "totals": ("overview", p),
            "activities": ("activity_counts", p),
            "tools": ("tool_latency", p),
            "tool_servers": ("tool_calls_by_server", p),
            "cost_by_model": ("cost_by_model", p),
            "cost_by_project": ("cost_by_project", p),
            "cost_by_session": ("cost_by_session", top),
            "sessions": ("sessions", top),
            "prompts_by_day": ("prompts_by_day", p),
            "events_by_source": ("events_by_source", p),
            "metrics_by_day": ("metrics_by_day", p),
            "insights": ("recent_insights", top),
        }
    )
    totals = got.pop("totals")[0]
    for i in got["insights"]:
        i["value"] = orjson.loads(i["value"]) if isinstance(i["value"], str) else i["value"]
    return {
        "generated_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        "since": since.isoformat() if since else None,
        "customer": run.scope if isinstance(run.scope, str) else None,
        "totals": totals,
        "timeline": _timeline(run, p, totals["first_at"], totals["last_at"]),
        "sessions_total": totals["sessions"],
        **got,
        "source": run.described,
        **({"note": run.note} if run.note else {}),
    }


def _timeline(run: source.Runner, p: dict[str, Any], first: str | None, last: str | None) -> dict[str, Any]:
    """Events per second, minute, hour, day, week or month (whichever draws at most a few
    hundred columns), with empty buckets filled in so that gaps show as gaps."""
    if first is None or last is None:
        return {"bucket": "day", "points": []}
    start, end = dt.datetime.fromisoformat(first), dt.datetime.fromisoformat(last)
    bucket, step = next(
        ((name, step) for name, step, most in _BUCKETS if end - start <= most), ("month", None)
    )
    rows = run.run({"t": ("activity_over_time", {**p, "bucket": bucket})})["t"]
    found = {dt.datetime.fromisoformat(r["at"]): r for r in rows}
    points = []
    at, stop = (min(found), max(found)) if found else (start, start)
    while at <= stop:
        r = found.get(at) or {"events": 0, "tool_calls": 0}
        points.append({**r, "at": at.isoformat()})
        if step is not None:
            at += step
        else:
            at = at.replace(year=at.year + at.month // 12, month=at.month % 12 + 1)
    return {"bucket": bucket, "points": points}


def build_report(
    src: Warehouse | duckdb.DuckDBPyConnection | Path | str,
    *,
    since: dt.date | None = None,
    customer: str | None = None,
    home: Path | None = None,
    limit: int = 15,
) -> dict[str, Any]:
    """The report of `src` (a DuckDB connection, a `Warehouse`, or the path of a DuckDB
    file, opened read-only: `WarehouseBusy` when its owner holds it), for one customer or
    everyone, with the health of `home` (default `$ACTIVITYBI_HOME`)."""
    with source.direct(src, customer or templates.EVERYONE) as run:
        report = figures(run, since=since, limit=limit)
    report["health"] = health.collect(home or config.home())
    return report


def local_report(
    home: Path | None = None,
    *,
    since: dt.date | None = None,
    customer: str | None = None,
    wait: float = 30.0,
) -> dict[str, Any]:
    """The report `activitybi report` prints: from this machine's DuckDB file when it is
    free, else through its owner's tickets (see `source.local`)."""
    home = home or config.home()
    with source.local(home, customer, wait) as run:
        report = figures(run, since=since)
    report["health"] = health.collect(home)
    return report
