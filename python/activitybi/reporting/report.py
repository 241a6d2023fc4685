"""What happened, for a person: `activitybi report` in the terminal or as one HTML page.

Every figure is DuckDB SQL over `claude_stream` and `insight_atoms` (so it shows what the
pipeline really loaded), plus the health of the local queue and uploader read from the
files under `$ACTIVITYBI_HOME`. The HTML page is self-contained: inline CSS and SVG
charts, no script and no external URL, so it can be mailed or archived as it is.

DuckDB lets no other process open a file that one process writes (docs: "Concurrency"),
and a running server's owner process always holds it. So the report reads the file
read-only when it is free, and otherwise asks that owner for one customer's figures with
ordinary SafeSQL tickets (`local_report`): no copy of the file, nothing stopped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from activitybi import config

if TYPE_CHECKING:
    import duckdb
    from rich.console import Console

    from activitybi.warehouse import Warehouse

Params = list[Any]


class WarehouseBusy(RuntimeError):
    """The DuckDB file is open for writing by another process (its owner)."""

    def __init__(self, path: Path, pid: int | None, command: str | None) -> None:
        who = f"PID {pid}" if pid else "another process"
        if command:
            who += f" ({command})"
        super().__init__(
            f"the warehouse {path} is in use by {who}. DuckDB lets one process open a file "
            "while it writes; stop the activitybi servers (Claude Desktop) or the uploader, "
            "or run `activitybi report` again once they have exited."
        )
        self.path, self.pid, self.command = path, pid, command


def _process_command(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
    if "activitybi" in " ".join(parts):
        # `python -m activitybi upload --follow ...` reads better without the interpreter
        start = next((i for i, p in enumerate(parts) if p.endswith("activitybi")), 0)
        parts = ["activitybi", *parts[start + 1 :]]
    return " ".join(parts)[:120] or None


def connect_read_only(path: Path | str) -> duckdb.DuckDBPyConnection:
    """Opens the warehouse file read-only, or raises `WarehouseBusy` naming the owner."""
    import duckdb

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no warehouse at {path}: run `activitybi upload --once` (or `activitybi demo`) first"
        )
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as e:
        if "lock" not in str(e).lower():
            raise
        m = re.search(r"\(PID (\d+)\)", str(e))
        pid = int(m.group(1)) if m else None
        raise WarehouseBusy(path, pid, _process_command(pid) if pid else None) from None


class _Sql:
    """Runs report queries on a DuckDB connection or a `Warehouse`."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        result = self.source.execute(sql, list(params))
        if hasattr(result, "rows"):  # a Warehouse's QueryResult
            columns, raw = result.columns, result.rows
        else:  # a DuckDB connection returns itself, ready to fetch
            columns = [d[0] for d in result.description or ()]
            raw = result.fetchall()
        return [{c: _plain(v) for c, v in zip(columns, r, strict=True)} for r in raw]


def _plain(value: Any) -> Any:
    """JSON-friendly values: ISO timestamps, floats for decimals."""
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if type(value).__name__ == "Decimal":
        return float(value)
    return value


def _where(since: dt.date | None, customer: str | None) -> tuple[str, Params]:
    clauses: list[str] = ["TRUE"]
    params: Params = []
    if since is not None:
        clauses.append("ts >= ?")
        params.append(dt.datetime.combine(since, dt.time()))
    if customer is not None:
        clauses.append("coalesce(customer, anonymous_customer_id) = ?")
        params.append(customer)
    return " AND ".join(clauses), params


def build_report(
    source: Warehouse | duckdb.DuckDBPyConnection | Path | str,
    *,
    since: dt.date | None = None,
    customer: str | None = None,
    home: Path | None = None,
    limit: int = 15,
) -> dict[str, Any]:
    """Every figure of the report as plain JSON-friendly data.

    `source` is a DuckDB connection, a `Warehouse`, or the path of a DuckDB file (opened
    read-only; `WarehouseBusy` when its owner holds it). `home` adds the queue and
    uploader health (default `$ACTIVITYBI_HOME`).
    """
    con: Any = source
    opened = None
    if isinstance(source, str | Path):
        opened = con = connect_read_only(source)
    try:
        report = _build(_Sql(con), since, customer, limit)
        report["source"] = (
            str(source) if isinstance(source, str | Path) else getattr(source, "kind", "duckdb")
        )
    finally:
        if opened is not None:
            opened.close()
    report["health"] = health(home or config.home())
    return report


_FAILED = "coalesce(feature_json->>'outcome', 'ok') <> 'ok'"
_LATENCY = "TRY_CAST(feature_json->>'latency_ms' AS DOUBLE)"
_SPEND = """coalesce(sum(TRY_CAST(feature_json->>'input_tokens' AS BIGINT)), 0) AS input_tokens,
       coalesce(sum(TRY_CAST(feature_json->>'output_tokens' AS BIGINT)), 0) AS output_tokens,
       coalesce(round(sum(TRY_CAST(feature_json->>'cost_usd' AS DOUBLE)), 6), 0) AS cost_usd"""


def _build(q: _Sql, since: dt.date | None, customer: str | None, limit: int) -> dict[str, Any]:
    where, p = _where(since, customer)
    s = f"(SELECT * FROM claude_stream WHERE {where})"
    totals = q.rows(
        f"""
        SELECT count(*) AS events,
               count(DISTINCT coalesce(customer, anonymous_customer_id)) AS customers,
               count(DISTINCT _session_id) AS sessions,
               min(ts) AS first_at, max(ts) AS last_at,
               count(*) FILTER (WHERE activity = 'called_tool') AS tool_calls,
               count(*) FILTER (WHERE activity = 'called_tool' AND {_FAILED}) AS tool_errors,
               round(sum(TRY_CAST(feature_json->>'cost_usd' AS DOUBLE)), 6) AS cost_usd,
               sum(TRY_CAST(feature_json->>'input_tokens' AS BIGINT)) AS input_tokens,
               sum(TRY_CAST(feature_json->>'output_tokens' AS BIGINT)) AS output_tokens,
               round(1000 * quantile_cont(epoch(_ingested_at) - epoch(ts), 0.5), 1) AS lag_p50_ms,
               round(1000 * quantile_cont(epoch(_ingested_at) - epoch(ts), 0.95), 1) AS lag_p95_ms
        FROM {s}""",
        p,
    )[0]
    for key in ("cost_usd", "input_tokens", "output_tokens"):
        totals[key] = totals[key] or 0
    activities = q.rows(
        f"""
        SELECT activity, count(*) AS events,
               count(DISTINCT coalesce(customer, anonymous_customer_id)) AS customers,
               min(ts) AS first_at, max(ts) AS last_at
        FROM {s} GROUP BY activity ORDER BY events DESC, activity""",
        p,
    )
    tools = q.rows(
        f"""
        SELECT coalesce(feature_json->>'tool', '?') AS tool, count(*) AS calls,
               round(quantile_cont({_LATENCY}, 0.5), 3) AS p50_ms,
               round(quantile_cont({_LATENCY}, 0.95), 3) AS p95_ms,
               count(*) FILTER (WHERE {_FAILED}) AS errors,
               round(avg(CASE WHEN {_FAILED} THEN 1 ELSE 0 END), 4) AS error_rate
        FROM {s} WHERE activity = 'called_tool'
        GROUP BY 1 ORDER BY calls DESC, tool""",
        p,
    )
    cost_by_model = q.rows(
        f"""
        SELECT feature_json->>'model' AS model, count(*) AS exchanges, {_SPEND}
        FROM {s} WHERE feature_json->>'model' IS NOT NULL
        GROUP BY model ORDER BY cost_usd DESC, model""",
        p,
    )
    sessions = q.rows(
        f"""
        SELECT _session_id AS session_id,
               any_value(coalesce(customer, anonymous_customer_id)) AS customer,
               any_value(_source) AS source,
               min(ts) AS started_at, max(ts) AS ended_at, count(*) AS events,
               count(*) FILTER (WHERE activity = 'called_tool') AS tool_calls,
               count(*) FILTER (WHERE activity = 'asked_question') AS questions,
               count(*) FILTER (WHERE feature_json->>'model' IS NOT NULL) AS exchanges, {_SPEND}
        FROM {s} WHERE _session_id IS NOT NULL
        GROUP BY _session_id ORDER BY started_at DESC, session_id""",
        p,
    )
    cost_by_session = sorted(
        (r for r in sessions if r["exchanges"]), key=lambda r: (-r["cost_usd"], r["session_id"])
    )
    timeline = _timeline(q, s, p, totals["first_at"], totals["last_at"])
    iwhere: list[str] = ["TRUE"]
    ip: Params = []
    if since is not None:
        iwhere.append("ts >= ?")
        ip.append(dt.datetime.combine(since, dt.time()))
    if customer is not None:
        iwhere.append("customer_id = ?")
        ip.append(customer)
    insights = q.rows(
        f"""
        SELECT ts, customer_id AS customer, subject, metric, value, provenance_query_hash
        FROM insight_atoms WHERE {" AND ".join(iwhere)}
        ORDER BY ts DESC, atom_id DESC LIMIT {int(limit)}""",
        ip,
    )
    for i in insights:
        i["value"] = orjson.loads(i["value"]) if isinstance(i["value"], str) else i["value"]
    last_load = q.rows("SELECT max(updated_at) AS at FROM _activitybi_checkpoints", [])[0]["at"]
    return {
        "generated_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        "since": since.isoformat() if since else None,
        "customer": customer,
        "totals": totals,
        "activities": activities,
        "timeline": timeline,
        "tools": tools,
        "cost_by_model": cost_by_model,
        "cost_by_session": cost_by_session[:limit],
        "sessions": sessions[:limit],
        "sessions_total": len(sessions),
        "insights": insights,
        "last_load_at": last_load,
    }


_BUCKETS = (  # (name, step, longest span drawn with it)
    ("second", dt.timedelta(seconds=1), dt.timedelta(minutes=3)),
    ("minute", dt.timedelta(minutes=1), dt.timedelta(hours=3)),
    ("hour", dt.timedelta(hours=1), dt.timedelta(days=4)),
    ("day", dt.timedelta(days=1), dt.timedelta(days=120)),
    ("week", dt.timedelta(weeks=1), dt.timedelta(days=800)),
)


def _timeline(q: _Sql, s: str, p: Params, first: str | None, last: str | None) -> dict[str, Any]:
    """Events per second, minute, hour, day, week or month (whichever draws at most a few
    hundred columns), with empty buckets filled in so that gaps show as gaps."""
    if first is None or last is None:
        return {"bucket": "day", "points": []}
    start, end = dt.datetime.fromisoformat(first), dt.datetime.fromisoformat(last)
    bucket, step = next(
        ((name, step) for name, step, most in _BUCKETS if end - start <= most), ("month", None)
    )
    rows = q.rows(
        f"""
        SELECT date_trunc('{bucket}', ts) AS at, count(*) AS events,
               count(*) FILTER (WHERE activity = 'called_tool') AS tool_calls
        FROM {s} GROUP BY 1 ORDER BY 1""",
        p,
    )
    found = {r["at"]: r for r in rows}
    points = []
    at = dt.datetime.fromisoformat(rows[0]["at"]) if rows else start
    stop = dt.datetime.fromisoformat(rows[-1]["at"]) if rows else start
    while at <= stop:
        key = _plain(at)
        points.append(found.get(key) or {"at": key, "events": 0, "tool_calls": 0})
        if step is not None:
            at += step
        else:
            at = at.replace(year=at.year + at.month // 12, month=at.month % 12 + 1)
    return {"bucket": bucket, "points": points}


def health(home: Path) -> dict[str, Any]:
    """The queue, uploader, quarantine and artifacts as the files under `home` show them,
    read without taking any lock another process needs."""
    qdir = config.Home(home).queue
    queue: dict[str, Any] = {
        "dir": str(qdir),
        "pending": 0,
        "sealed_segments": 0,
        "open_segments": 0,
        "bytes_on_disk": 0,
    }
    if qdir.is_dir():
        from activitybi import Queue

        q = Queue(str(qdir))  # opening is lazy: no segment is created until an append
        try:
            queue["pending"] = q.stats()["pending"]
            queue["max_pending"] = q.stats().get("max_pending")
        finally:
            q.close()
        for seg in qdir.iterdir():
            if seg.suffix == ".ndjson":
                queue["sealed_segments"] += 1
            elif seg.suffix == ".open":
                queue["open_segments"] += 1
            else:
                continue
            with contextlib.suppress(FileNotFoundError):
                queue["bytes_on_disk"] += seg.stat().st_size
    qfile = config.Home(home).quarantine
    quarantine: dict[str, Any] = {"file": str(qfile), "lines": 0, "last_reason": None}
    if qfile.is_file():
        data = qfile.read_bytes()
        lines = [ln for ln in data.splitlines() if ln.strip()]
        quarantine["lines"] = len(lines)
        if lines:
            try:
                last = orjson.loads(lines[-1])
                quarantine["last_reason"] = last.get("reason") if isinstance(last, dict) else None
            except orjson.JSONDecodeError:
                pass
    torn = qdir / "quarantine"
    if torn.is_dir():
        quarantine["torn_segments"] = sum(1 for _ in torn.iterdir())
    tickets: dict[str, int] = {}
    tdir = config.Home(home).tickets
    if tdir.is_dir():
        for path in tdir.glob("*/*.json"):  # one folder per day of submission
            try:
                status = orjson.loads(path.read_bytes()).get("status", "?")
            except (OSError, orjson.JSONDecodeError):
                continue
            tickets[status] = tickets.get(status, 0) + 1
    from activitybi.query.artifacts import ArtifactStore

    arts = ArtifactStore(home).list()
    return {
        "home": str(home),
        "queue": queue,
        "quarantine": quarantine,
        "tickets": tickets,
        "artifacts": {
            "count": len(arts),
            "bytes": sum(a.size_bytes for a in arts),
            "dir": str(config.Home(home).artifacts),
        },
        "warehouse": str(config.Home(home).warehouse),
        "owner": _owner(home),
    }


def _owner(home: Path) -> dict[str, Any] | None:
    """The process holding the warehouse for writing, if one does (without disturbing it)."""
    path = config.Home(home).warehouse
    if not path.exists():
        return None
    try:
        connect_read_only(path).close()
    except WarehouseBusy as e:
        return {"pid": e.pid, "command": e.command}
    except Exception:
        return None
    return None


# ----------------------------------------------------------------------------- terminal


def _money(v: float | None) -> str:
    if not v:
        return "$0"
    return f"${v:,.4f}" if v < 1 else f"${v:,.2f}"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.2f} ms" if v < 100 else f"{v:,.0f} ms"


def _short_ts(v: str | None) -> str:
    return "—" if not v else v.replace("T", " ")[:19]


def _short_id(v: str | None) -> str:
    return "—" if not v else v if len(v) <= 14 else f"{v[:6]}…{v[-6:]}"


def _ticket_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"


def _value(v: Any) -> str:
    return v if isinstance(v, str) else orjson.dumps(v).decode()


def render_terminal(report: dict[str, Any], console: Console) -> None:
    """The report as rich tables."""
    from rich import box
    from rich.panel import Panel
    from rich.table import Table

    t = report["totals"]
    scope = report["customer"] or "all customers"
    since = f" since {report['since']}" if report["since"] else ""
    head = (
        f"[bold]{t['events']:,}[/] events · [bold]{t['sessions']:,}[/] sessions · "
        f"[bold]{t['customers']:,}[/] customers · [bold]{t['tool_calls']:,}[/] tool calls "
        f"({t['tool_errors']:,} failed) · [bold]{_money(t['cost_usd'])}[/] · "
        f"{t['input_tokens']:,} in / {t['output_tokens']:,} out tokens\n"
        f"{_short_ts(t['first_at'])} → {_short_ts(t['last_at'])} UTC · ingestion lag "
        f"p50 {_ms(t['lag_p50_ms'])}, p95 {_ms(t['lag_p95_ms'])}"
    )
    if report.get("note"):
        head += f"\n[yellow]{report['note']}[/]"
    console.print(Panel(head, title=f"activitybi report — {scope}{since}", expand=False))

    def table(title: str, *columns: str) -> Table:
        tb = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left", title_style="bold")
        for i, c in enumerate(columns):
            tb.add_column(c, justify="left" if i == 0 else "right")
        return tb

    tb = table("Activities", "activity", "events", "customers", "last")
    for a in report["activities"]:
        tb.add_row(a["activity"], f"{a['events']:,}", f"{a['customers']:,}", _short_ts(a["last_at"]))
    console.print(tb)
    tb = table("Tool calls", "tool", "calls", "p50", "p95", "errors", "error rate")
    for r in report["tools"]:
        tb.add_row(
            r["tool"],
            f"{r['calls']:,}",
            _ms(r["p50_ms"]),
            _ms(r["p95_ms"]),
            f"{r['errors']:,}",
            f"{100 * (r['error_rate'] or 0):.1f}%",
        )
    console.print(tb)
    tb = table("Cost by model", "model", "exchanges", "input tokens", "output tokens", "cost")
    for r in report["cost_by_model"]:
        tb.add_row(
            r["model"],
            f"{r['exchanges']:,}",
            f"{r['input_tokens']:,}",
            f"{r['output_tokens']:,}",
            _money(r["cost_usd"]),
        )
    console.print(tb)
    many = t["customers"] > 1  # else the customer column says the same on every line
    tb = table(
        f"Sessions (newest {len(report['sessions'])} of {report['sessions_total']:,})",
        "session",
        *(["customer"] if many else []),
        "started",
        "events",
        "tool calls",
        "tokens",
        "cost",
    )
    for r in report["sessions"]:
        tb.add_row(
            _short_id(r["session_id"]),
            *([r["customer"] or "—"] if many else []),
            _short_ts(r["started_at"]),
            f"{r['events']:,}",
            f"{r['tool_calls']:,}",
            f"{r['input_tokens'] + r['output_tokens']:,}",
            _money(r["cost_usd"]),
        )
    console.print(tb)
    tb = table("Recent insights", "subject", "metric", "value", *(["customer"] if many else []), "learned")
    for i in report["insights"]:
        tb.add_row(
            i["subject"],
            i["metric"],
            _value(i["value"])[:60],
            *([i["customer"]] if many else []),
            _short_ts(i["ts"]),
        )
    console.print(tb)
    h = report.get("health")
    if h:
        q, qu = h["queue"], h["quarantine"]
        owner = h["owner"]
        lines = [
            f"queue        {q['pending']:,} events pending · {q['sealed_segments']} sealed + "
            f"{q['open_segments']} open segments · {q['dir']}",
            f"uploader     last load {_short_ts(report.get('last_load_at'))} UTC · "
            + (f"running (PID {owner['pid']})" if owner else "not running"),
            f"quarantine   {qu['lines']:,} lines"
            + (f" (last: {qu['last_reason']})" if qu["last_reason"] else "")
            + f" · {qu['file']}",
            "tickets      " + _ticket_counts(h["tickets"]),
            f"artifacts    {h['artifacts']['count']} ({h['artifacts']['bytes']:,} bytes) · "
            f"{h['artifacts']['dir']}",
        ]
        style = "yellow" if qu["lines"] or q["pending"] > 10_000 else "green"
        console.print(Panel("\n".join(lines), title="Health", border_style=style, expand=False))


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.sub{color:#5a6475;margin:0 0 16px}
.kpis{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.kpi{background:#fff;border:1px solid #e1e5eb;border-radius:8px;padding:10px 12px}
.kpi b{display:block;font-size:20px}.kpi span{color:#5a6475;font-size:12px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.card{background:#fff;border:1px solid #e1e5eb;border-radius:8px;padding:12px 14px;overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid #eef0f3;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{color:#5a6475;font-weight:600}
svg{display:block;max-width:100%;height:auto}
svg text{font:11px system-ui,"DejaVu Sans",sans-serif;fill:#1d2330}
.muted{color:#8a93a3}.warn{color:#b45309}
@media (max-width:800px){.grid{grid-template-columns:1fr}}
"""

_PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0ea5e9")


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:,.2f}".rstrip("0").rstrip(".")
    return f"{v:.4g}"


def svg_hbars(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], unit: str = ""
) -> str:
    """A horizontal bar chart (one bar per series per label) as inline SVG."""
    if not labels:
        return f'<p class="muted">{_e(title)}: no data</p>'
    width, left, right, bar, gap = 520, 150, 70, 14, 8
    n = len(series)
    row = n * bar + gap
    top = 26 + (16 if n > 1 else 0)
    height = top + row * len(labels) + 6
    peak = max((v for _, vals in series for v in vals), default=0) or 1
    scale = (width - left - right) / peak
    out = [
        f'<svg role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">',
        f"<title>{_e(title)}</title>",
        f'<text x="0" y="14" style="font-weight:600">{_e(title)}</text>',
    ]
    if n > 1:
        x = left
        for i, (name, _) in enumerate(series):
            out.append(
                f'<rect x="{x}" y="20" width="10" height="10" fill="{_PALETTE[i]}"/>'
                f'<text x="{x + 14}" y="29">{_e(name)}</text>'
            )
            x += 20 + 7 * len(name)
    for j, label in enumerate(labels):
        y = top + j * row
        short = label if len(label) <= 22 else label[:21] + "…"
        out.append(
            f'<text x="{left - 6}" y="{y + n * bar / 2 + 4}" text-anchor="end">'
            f"<title>{_e(label)}</title>{_e(short)}</text>"
        )
        for i, (_, vals) in enumerate(series):
            v = vals[j] or 0
            w = max(v * scale, 1 if v else 0)
            out.append(
                f'<rect x="{left}" y="{y + i * bar}" width="{w:.1f}" height="{bar - 2}" '
                f'fill="{_PALETTE[i % len(_PALETTE)]}" rx="2"/>'
                f'<text x="{left + w + 4:.1f}" y="{y + i * bar + bar - 4}">'
                f"{_e(_fmt(v))}{unit}</text>"
            )
    out.append(f'<line x1="{left}" y1="{top - 3}" x2="{left}" y2="{height - 4}" stroke="#9aa3b2"/>')
    out.append("</svg>")
    return "".join(out)


def svg_columns(title: str, labels: Sequence[str], values: Sequence[float]) -> str:
    """A column chart over time (labels are bucket starts) as inline SVG."""
    if not labels:
        return f'<p class="muted">{_e(title)}: no data</p>'
    width, height, left, bottom, top = 1040, 220, 48, 34, 24
    plot_w, plot_h = width - left - 10, height - top - bottom
    peak = max(values) or 1
    step = plot_w / len(values)
    out = [
        f'<svg role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">',
        f"<title>{_e(title)}</title>",
        f'<text x="0" y="14" style="font-weight:600">{_e(title)}</text>',
    ]
    for k in range(5):  # gridlines and y ticks
        v = peak * k / 4
        y = top + plot_h - plot_h * k / 4
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" '
            'stroke="#eef0f3"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(_fmt(v))}</text>'
        )
    every = max(1, len(labels) // 8)
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * v / peak
        x = left + i * step
        out.append(
            f'<rect x="{x + step * 0.1:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{max(step * 0.8, 1):.1f}" height="{h:.1f}" fill="{_PALETTE[0]}">'
            f"<title>{_e(label)}: {_e(_fmt(v))}</title></rect>"
        )
        if i % every == 0:
            out.append(
                f'<text x="{x + step / 2:.1f}" y="{height - bottom + 16}" '
                f'text-anchor="middle">{_e(label)}</text>'
            )
    out.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" '
        'stroke="#9aa3b2"/></svg>'
    )
    return "".join(out)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page (inline CSS and SVG; no script, no external URL)."""
    t = report["totals"]
    scope = report["customer"] or "all customers"
    since = f" since {report['since']}" if report["since"] else ""
    kpis = [
        ("events", f"{t['events']:,}"),
        ("sessions", f"{t['sessions']:,}"),
        ("tool calls", f"{t['tool_calls']:,}"),
        ("tool errors", f"{t['tool_errors']:,}"),
        ("cost", _money(t["cost_usd"])),
        ("tokens in / out", f"{t['input_tokens']:,} / {t['output_tokens']:,}"),
        ("ingestion lag p95", _ms(t["lag_p95_ms"])),
    ]
    tl = report["timeline"]
    cut = {
        "second": slice(11, 19),
        "minute": slice(0, 16),
        "hour": slice(0, 13),
        "day": slice(0, 10),
        "week": slice(0, 10),
        "month": slice(0, 7),
    }[tl["bucket"]]
    timeline = svg_columns(
        f"Events per {tl['bucket']} (UTC)",
        [p["at"].replace("T", " ")[cut] for p in tl["points"]],
        [p["events"] for p in tl["points"]],
    )
    acts = report["activities"][:12]
    activity_chart = svg_hbars(
        "Events by activity", [a["activity"] for a in acts], [("events", [a["events"] for a in acts])]
    )
    tools = report["tools"][:12]
    tool_chart = svg_hbars(
        "Tool latency (ms)",
        [r["tool"] for r in tools],
        [("p50", [r["p50_ms"] or 0 for r in tools]), ("p95", [r["p95_ms"] or 0 for r in tools])],
    )
    models = report["cost_by_model"][:12]
    cost_chart = svg_hbars(
        "Cost by model (USD)", [r["model"] for r in models], [("cost", [r["cost_usd"] for r in models])]
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>activitybi report — {_e(scope)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>activitybi report — {_e(scope)}{_e(since)}</h1>",
        f'<p class="sub">{_e(_short_ts(t["first_at"]))} → {_e(_short_ts(t["last_at"]))} UTC · '
        f"generated {_e(report['generated_at'])} UTC from {_e(report.get('source', ''))}"
        + (f"<br>{_e(report['note'])}" if report.get("note") else "")
        + "</p>",
        '<section class="kpis">'
        + "".join(f'<div class="kpi"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in kpis)
        + "</section>",
        f'<h2>Activity over time</h2><div class="card">{timeline}</div>',
        '<div class="grid">',
        f'<div><h2>Activities</h2><div class="card">{activity_chart}'
        + _table(
            ["activity", "events", "customers", "last"],
            [
                (a["activity"], f"{a['events']:,}", a["customers"], _short_ts(a["last_at"]))
                for a in report["activities"]
            ],
        )
        + "</div></div>",
        f'<div><h2>Tool calls</h2><div class="card">{tool_chart}'
        + _table(
            ["tool", "calls", "p50", "p95", "errors", "error rate"],
            [
                (
                    r["tool"],
                    f"{r['calls']:,}",
                    _ms(r["p50_ms"]),
                    _ms(r["p95_ms"]),
                    r["errors"],
                    f"{100 * (r['error_rate'] or 0):.1f}%",
                )
                for r in report["tools"]
            ],
        )
        + "</div></div>",
        f'<div><h2>Cost by model</h2><div class="card">{cost_chart}'
        + _table(
            ["model", "exchanges", "input tokens", "output tokens", "cost"],
            [
                (
                    r["model"],
                    r["exchanges"],
                    f"{r['input_tokens']:,}",
                    f"{r['output_tokens']:,}",
                    _money(r["cost_usd"]),
                )
                for r in report["cost_by_model"]
            ],
        )
        + "</div></div>",
        '<div><h2>Cost by session</h2><div class="card">'
        + _table(
            ["session", "customer", "exchanges", "tokens", "cost"],
            [
                (
                    _short_id(r["session_id"]),
                    r["customer"],
                    r["exchanges"],
                    f"{r['input_tokens'] + r['output_tokens']:,}",
                    _money(r["cost_usd"]),
                )
                for r in report["cost_by_session"]
            ],
        )
        + "</div></div>",
        "</div>",
        f"<h2>Sessions (newest {len(report['sessions'])} of {report['sessions_total']:,})</h2>"
        '<div class="card">'
        + _table(
            [
                "session",
                "customer",
                "source",
                "started",
                "ended",
                "events",
                "questions",
                "tool calls",
                "cost",
            ],
            [
                (
                    r["session_id"],
                    r["customer"],
                    r["source"] or "",
                    _short_ts(r["started_at"]),
                    _short_ts(r["ended_at"]),
                    r["events"],
                    "—" if r["questions"] is None else r["questions"],
                    r["tool_calls"],
                    _money(r["cost_usd"]),
                )
                for r in report["sessions"]
            ],
        )
        + "</div>",
        '<h2>Recent insights</h2><div class="card">'
        + _table(
            ["subject", "metric", "value", "customer", "learned"],
            [
                (i["subject"], i["metric"], _value(i["value"])[:80], i["customer"], _short_ts(i["ts"]))
                for i in report["insights"]
            ],
        )
        + "</div>",
    ]
    h = report.get("health")
    if h:
        q, qu, owner = h["queue"], h["quarantine"], h["owner"]
        rows = [
            (
                "queue",
                f"{q['pending']:,} pending; {q['sealed_segments']} sealed, "
                f"{q['open_segments']} open segments",
                q["dir"],
            ),
            (
                "uploader",
                f"last load {_short_ts(report.get('last_load_at'))} UTC; "
                + (f"running (PID {owner['pid']})" if owner else "not running"),
                h["warehouse"],
            ),
            (
                "quarantine",
                f"{qu['lines']:,} lines" + (f" (last: {qu['last_reason']})" if qu["last_reason"] else ""),
                qu["file"],
            ),
            ("tickets", _ticket_counts(h["tickets"]), str(Path(h["home"]) / "tickets")),
            (
                "artifacts",
                f"{h['artifacts']['count']} ({h['artifacts']['bytes']:,} bytes)",
                h["artifacts"]["dir"],
            ),
        ]
        parts.append(
            '<h2>Health</h2><div class="card">' + _table(["part", "state", "where"], rows) + "</div>"
        )
    parts.append("</main></body></html>")
    return "\n".join(parts)


def default_warehouse_path() -> Path:
    return config.Home.current().warehouse


# ----------------------------------------------------------------------- through the owner

OWNER_TEMPLATES = (
    "activity_counts",
    "tool_latency",
    "cost_by_model",
    "cost_by_session",
    "sessions",
    "usage_by_day",
)


def local_report(
    home: Path | None = None, *, since: dt.date | None = None, customer: str | None = None, wait: float = 30.0
) -> dict[str, Any]:
    """The report `activitybi report` prints. From the DuckDB file when it is free; while
    a warehouse owner holds it (a running `activitybi serve`, e.g. Claude Desktop), from
    SafeSQL tickets that the owner runs (audited like any query), for one customer: the
    one asked for, else this machine's (`ACTIVITYBI_CUSTOMER` or the user name)."""
    home = home or config.home()
    try:
        return build_report(config.Home(home).warehouse, since=since, customer=customer, home=home)
    except WarehouseBusy as busy:
        if not busy.command or "upload" not in busy.command:
            raise  # not an activitybi owner: nobody will run tickets
        import getpass

        who = customer or config.settings().customer or getpass.getuser()
        report = report_via_owner(home, who, since=since, wait=wait, busy=busy)
        report["note"] = (
            f"the warehouse is held by its owner (PID {busy.pid}), so this report "
            f"for {who} came through query tickets it ran"
        )
        return report


def report_via_owner(
    home: Path,
    customer: str,
    *,
    since: dt.date | None = None,
    wait: float = 30.0,
    limit: int = 15,
    busy: WarehouseBusy | None = None,
) -> dict[str, Any]:
    """One customer's report from tickets the warehouse owner runs (see `local_report`).
    Figures the templates do not give (ingestion lag) are None."""
    from activitybi.memory.journal import MemoryJournal
    from activitybi.query.tickets import FINAL, TicketStore

    store = TicketStore(config.Home(home).tickets)
    first_day = (since or dt.date(1970, 1, 1)).isoformat()
    ids = {}
    for name in OWNER_TEMPLATES:
        params: dict[str, Any] = {"since": first_day}
        if name in ("sessions", "cost_by_session"):
            params["limit"] = 10_000
        ids[name] = store.submit(customer, name, params, 8 * 1024 * 1024).ticket_id
    deadline = time.monotonic() + wait
    results: dict[str, list[dict[str, Any]]] = {}
    while len(results) < len(ids):
        for name, tid in ids.items():
            ticket = store.get(tid)
            if name in results or ticket is None or ticket.status not in FINAL:
                continue
            if ticket.status != "succeeded":
                raise RuntimeError(f"the report's {name} query {ticket.status}: {ticket.error}")
            results[name] = list((store.result(tid) or {}).get("rows") or [])
        if len(results) < len(ids):
            if time.monotonic() > deadline:
                for tid in ids.values():
                    store.cancel(tid)
                raise busy or RuntimeError("the warehouse owner did not run the report's queries")
            time.sleep(0.05)
    acts, tools = results["activity_counts"], results["tool_latency"]
    models = results["cost_by_model"]
    spend = {r["session_id"]: r for r in results["cost_by_session"]}
    sessions = []
    for r in results["sessions"]:
        s = spend.get(r["session_id"], {})
        sessions.append(
            {
                "session_id": r["session_id"],
                "customer": customer,
                "source": None,
                "started_at": r["started_at"],
                "ended_at": r["ended_at"],
                "events": r["events"],
                "tool_calls": r["tool_calls"],
                "questions": None,
                "exchanges": s.get("exchanges") or 0,
                "input_tokens": s.get("input_tokens") or 0,
                "output_tokens": s.get("output_tokens") or 0,
                "cost_usd": s.get("cost_usd") or 0,
            }
        )
    for t in tools:
        t["errors"] = round(t["calls"] * (t["error_rate"] or 0))
    atoms, _ = MemoryJournal(config.Home(home).memory).read(customer)
    atoms = [a for a in atoms if since is None or a["ts"] >= first_day]
    atoms.sort(key=lambda a: (a["ts"], a["atom_id"]), reverse=True)
    report = {
        "generated_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        "since": since.isoformat() if since else None,
        "customer": customer,
        "totals": {
            "events": sum(a["events"] for a in acts),
            "customers": 1 if acts else 0,
            "sessions": len(sessions),
            "first_at": min((a["first_at"] for a in acts), default=None),
            "last_at": max((a["last_at"] for a in acts), default=None),
            "tool_calls": sum(t["calls"] for t in tools),
            "tool_errors": sum(t["errors"] for t in tools),
            "cost_usd": round(sum(m["cost_usd"] or 0 for m in models), 6),
            "input_tokens": sum(m["input_tokens"] or 0 for m in models),
            "output_tokens": sum(m["output_tokens"] or 0 for m in models),
            "lag_p50_ms": None,
            "lag_p95_ms": None,
        },
        "activities": [{**a, "customers": 1} for a in acts],
        "timeline": {
            "bucket": "day",
            "points": [{"at": p["day"], "events": p["events"]} for p in results["usage_by_day"]],
        },
        "tools": tools,
        "cost_by_model": [
            {
                **m,
                "input_tokens": m["input_tokens"] or 0,
                "output_tokens": m["output_tokens"] or 0,
                "cost_usd": m["cost_usd"] or 0,
            }
            for m in models
        ],
        "cost_by_session": sorted((s for s in sessions if s["exchanges"]), key=lambda s: -s["cost_usd"])[
            :limit
        ],
        "sessions": sessions[:limit],
        "sessions_total": len(sessions),
        "insights": [
            {
                "ts": a["ts"],
                "customer": customer,
                "subject": a["subject"],
                "metric": a["metric"],
                "value": a["value"],
                "provenance_query_hash": a.get("provenance_query_hash"),
            }
            for a in atoms[:limit]
        ],
        "last_load_at": None,
        "source": f"query tickets run by the warehouse owner (PID {busy.pid})"
        if busy
        else "query tickets run by the warehouse owner",
    }
    report["health"] = health(home)
    return report
