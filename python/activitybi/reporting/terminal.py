"""The report as rich tables in a terminal. Every value that comes from a customer (a
tool name, an insight, a path) is shown as plain `Text`, never parsed as rich markup, so
`[/]` or `[link=...]` in it can neither crash the report nor restyle it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from activitybi.reporting import formats as f

if TYPE_CHECKING:
    from rich.console import Console


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A report table: first column left, the others right; every cell plain text."""
    tb = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left", title_style="bold")
    for i, c in enumerate(columns):
        tb.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        tb.add_row(*(Text(c) for c in r))
    return tb


def _declared(spec: f.Table, report: dict[str, Any]) -> Table:
    return table(spec.title, *spec.render(report[spec.key]))


def render_terminal(report: dict[str, Any], console: Console) -> None:
    """The report as rich tables."""
    t = report["totals"]
    scope = report["customer"] or "all customers"
    since = f" since {report['since']}" if report["since"] else ""
    head = (
        f"[bold]{t['events']:,}[/] events · [bold]{t['sessions']:,}[/] sessions · "
        f"[bold]{t['customers']:,}[/] customers · [bold]{t['tool_calls']:,}[/] tool calls "
        f"({t['tool_errors']:,} failed) · [bold]{f.money(t['cost_usd'])}[/] · "
        f"{t['input_tokens']:,} in / {t['output_tokens']:,} out tokens\n"
        f"{f.short_ts(t['first_at'])} → {f.short_ts(t['last_at'])} UTC · ingestion lag "
        f"p50 {f.ms(t['lag_p50_ms'])}, p95 {f.ms(t['lag_p95_ms'])}"
    )
    if report.get("note"):
        head += f"\n[yellow]{escape(report['note'])}[/]"
    console.print(Panel(head, title=escape(f"activitybi report — {scope}{since}"), expand=False))

    console.print(
        table(
            "Activities",
            ["activity", "events", "customers", "last"],
            [
                [a["activity"], f.count(a["events"]), f.count(a["customers"]), f.short_ts(a["last_at"])]
                for a in report["activities"]
            ],
        )
    )
    console.print(_declared(f.TOOLS, report))
    console.print(_declared(f.COST_BY_MODEL, report))
    many = t["customers"] > 1  # else the customer column says the same on every line
    console.print(
        table(
            f"Sessions (newest {len(report['sessions'])} of {report['sessions_total']:,})",
            ["session", *(["customer"] if many else []), "started", "events", "tool calls", "tokens", "cost"],
            [
                [
                    f.short_id(r["session_id"]),
                    *([f.text(r["customer"])] if many else []),
                    f.short_ts(r["started_at"]),
                    f.count(r["events"]),
                    f.count(r["tool_calls"]),
                    f.count(r["input_tokens"] + r["output_tokens"]),
                    f.money(r["cost_usd"]),
                ]
                for r in report["sessions"]
            ],
        )
    )
    for spec in f.SECTIONS:
        if spec.shown(report):
            console.print(_declared(spec, report))
    console.print(
        table(
            "Recent insights",
            ["subject", "metric", "value", *(["customer"] if many else []), "learned"],
            [
                [
                    i["subject"],
                    i["metric"],
                    f.text(i["value"])[:60],
                    *([i["customer"]] if many else []),
                    f.short_ts(i["ts"]),
                ]
                for i in report["insights"]
            ],
        )
    )
    h = report.get("health")
    if h:
        q, qu, owner = h["queue"], h["quarantine"], h["owner"]
        lines = [
            f"queue        {q['pending']:,} events pending · {q['sealed_segments']} sealed + "
            f"{q['open_segments']} open segments · {q['dir']}",
            f"uploader     last load {f.short_ts(t['last_loaded_at'])} UTC · "
            + (f"running (PID {owner['pid']})" if owner else "not running"),
            f"quarantine   {qu['lines']:,} lines"
            + (f" (last: {qu['last_reason']})" if qu["last_reason"] else "")
            + f" · {qu['file']}",
            "tickets      " + f.ticket_counts(h["tickets"]),
            f"artifacts    {h['artifacts']['count']} ({h['artifacts']['bytes']:,} bytes) · "
            f"{h['artifacts']['dir']}",
        ]
        style = "yellow" if qu["lines"] or q["pending"] > 10_000 else "green"
        console.print(Panel(Text("\n".join(lines)), title="Health", border_style=style, expand=False))
