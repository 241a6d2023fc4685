"""The report as one self-contained HTML page: inline CSS and SVG charts, no script and no
external URL, so it can be mailed or archived as it is. Every value is HTML-escaped."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from activitybi.reporting import formats as f

CSS = """
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
svg text{font:11px system-ui,"DejaVu Sans",sans-serif;fill:#1d2330}svg text.t{font-weight:600}
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
        f'<text x="0" y="14" class="t">{_e(title)}</text>',
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
        f'<text x="0" y="14" class="t">{_e(title)}</text>',
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


def _declared(spec: f.Table, report: dict[str, Any]) -> str:
    return _table(*spec.render(report[spec.key]))


def page(title: str, main: str, *, head: str = "", body_end: str = "") -> str:
    """The document around `main` (already escaped HTML): inline CSS, no external URL."""
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{CSS}</style>{head}</head><body><main>",
            main,
            f"</main>{body_end}</body></html>",
        ]
    )


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page (inline CSS and SVG; no script, no external URL, no
    style attribute, so a strict Content-Security-Policy allows it)."""
    scope = report["customer"] or "all customers"
    return page(f"activitybi report — {scope}", render_main(report))


def render_main(report: dict[str, Any]) -> str:
    """The report's content (what `<main>` holds), every value escaped; the live page
    swaps it in place."""
    t = report["totals"]
    scope = report["customer"] or "all customers"
    since = f" since {report['since']}" if report["since"] else ""
    kpis = [
        ("events", f"{t['events']:,}"),
        ("sessions", f"{t['sessions']:,}"),
        ("tool calls", f"{t['tool_calls']:,}"),
        ("tool errors", f"{t['tool_errors']:,}"),
        ("cost", f.money(t["cost_usd"])),
        ("tokens in / out", f"{t['input_tokens']:,} / {t['output_tokens']:,}"),
        ("ingestion lag p95", f.ms(t["lag_p95_ms"])),
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
        "Cost by model (USD)",
        [r["model"] + (f" ({r['agent']})" if r["agent"] else "") for r in models],
        [("cost", [r["cost_usd"] for r in models])],
    )
    parts = [
        f"<h1>activitybi report — {_e(scope)}{_e(since)}</h1>",
        f'<p class="sub">{_e(f.short_ts(t["first_at"]))} → {_e(f.short_ts(t["last_at"]))} UTC · '
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
                (a["activity"], f"{a['events']:,}", a["customers"], f.short_ts(a["last_at"]))
                for a in report["activities"]
            ],
        )
        + "</div></div>",
        f'<div><h2>Tool calls</h2><div class="card">{tool_chart}{_declared(f.TOOLS, report)}</div></div>',
        f'<div><h2>Cost by model</h2><div class="card">{cost_chart}'
        f"{_declared(f.COST_BY_MODEL, report)}</div></div>",
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
                    f.short_ts(r["started_at"]),
                    f.short_ts(r["ended_at"]),
                    r["events"],
                    "—" if r["questions"] is None else r["questions"],
                    r["tool_calls"],
                    f.money(r["cost_usd"]),
                )
                for r in report["sessions"]
            ],
        )
        + "</div>",
        *(
            f'<h2>{_e(spec.title)}</h2><div class="card">{_declared(spec, report)}</div>'
            for spec in f.SECTIONS
            if spec.shown(report)
        ),
        '<h2>Recent insights</h2><div class="card">'
        + _table(
            ["subject", "metric", "value", "customer", "learned"],
            [
                (i["subject"], i["metric"], f.text(i["value"])[:80], i["customer"], f.short_ts(i["ts"]))
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
                f"last load {f.short_ts(t['last_loaded_at'])} UTC; "
                + (f"running (PID {owner['pid']})" if owner else "not running"),
                h["warehouse"],
            ),
            (
                "quarantine",
                f"{qu['lines']:,} lines" + (f" (last: {qu['last_reason']})" if qu["last_reason"] else ""),
                qu["file"],
            ),
            ("tickets", f.ticket_counts(h["tickets"]), h["tickets_dir"]),
            (
                "artifacts",
                f"{h['artifacts']['count']} ({h['artifacts']['bytes']:,} bytes)",
                h["artifacts"]["dir"],
            ),
        ]
        parts.append(
            '<h2>Health</h2><div class="card">' + _table(["part", "state", "where"], rows) + "</div>"
        )
    return "\n".join(parts)
