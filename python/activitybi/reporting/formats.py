"""How a figure is written, and the report's tables declared once, so that the terminal
and the HTML page show the same columns in the same words. Cells are plain text: each
renderer escapes them for its own markup."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

Row = dict[str, Any]


def money(v: float | None) -> str:
    if not v:
        return "$0"
    return f"${v:,.4f}" if v < 1 else f"${v:,.2f}"


def ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.2f} ms" if v < 100 else f"{v:,.0f} ms"


def short_ts(v: str | None) -> str:
    return "—" if not v else v.replace("T", " ")[:19]


def short_id(v: str | None) -> str:
    return "—" if not v else v if len(v) <= 14 else f"{v[:6]}…{v[-6:]}"


def count(v: int | None) -> str:
    return "—" if v is None else f"{v:,}"


def percent(v: float | None) -> str:
    return f"{100 * (v or 0):.1f}%"


def text(v: Any) -> str:
    """Any value (a customer's string, a number, JSON) as one line of text."""
    if v is None:
        return "—"
    return v if isinstance(v, str) else orjson.dumps(v).decode()


def ticket_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"


Column = tuple[str, Callable[[Row], str]]

QUIET = {"agent": "main", "cache write": "0", "cache read": "0"}
"""Columns left out when every cell says this: a picture without subagents or prompt
caching (the model's own log_event figures) reads as it always did."""


@dataclass(frozen=True, slots=True)
class Table:
    """One table of the report: its title, the report key holding its rows, its columns
    (header and how a row's cell is written), and when it shows: always, or when a row
    has `needs` (e.g. an MCP server) set."""

    title: str
    key: str
    columns: tuple[Column, ...]
    always: bool = False
    needs: str | None = None

    def shown(self, report: dict[str, Any]) -> bool:
        rows = report[self.key]
        return self.always or any(self.needs is None or r[self.needs] is not None for r in rows)

    def render(self, rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
        """(headers, cells) with the quiet columns left out."""
        cols = [
            (h, cell) for h, cell in self.columns if h not in QUIET or any(cell(r) != QUIET[h] for r in rows)
        ]
        return [h for h, _ in cols], [[cell(r) for _, cell in cols] for r in rows]


def _tool_columns(key: str, header: str) -> tuple[Column, ...]:
    return (
        (header, lambda r: text(r[key])),
        ("calls", lambda r: count(r["calls"])),
        ("p50", lambda r: ms(r["p50_ms"])),
        ("p95", lambda r: ms(r["p95_ms"])),
        ("errors", lambda r: count(r["errors"])),
        ("error rate", lambda r: percent(r["error_rate"])),
    )


def _spend_columns(key: str, header: str, show: Callable[[Any], str] = text) -> tuple[Column, ...]:
    return (
        (header, lambda r: show(r[key])),
        ("agent", lambda r: "main" if r["agent"] is None else text(r["agent"])),
        ("exchanges", lambda r: count(r["exchanges"])),
        ("input tokens", lambda r: count(r["input_tokens"])),
        ("output tokens", lambda r: count(r["output_tokens"])),
        ("cache write", lambda r: count(r["cache_creation_input_tokens"])),
        ("cache read", lambda r: count(r["cache_read_input_tokens"])),
        ("cost", lambda r: money(r["cost_usd"])),
    )


TOOLS = Table("Tool calls", "tools", _tool_columns("tool", "tool"), always=True)
COST_BY_MODEL = Table("Cost by model", "cost_by_model", _spend_columns("model", "model"), always=True)
SECTIONS = (
    Table(
        "Tool calls by MCP server",
        "tool_servers",
        _tool_columns("mcp_server", "MCP server"),
        needs="mcp_server",
    ),
    Table("Cost by project", "cost_by_project", _spend_columns("project", "project"), needs="project"),
    Table("Cost by session", "cost_by_session", _spend_columns("session_id", "session", short_id)),
    Table(
        "Prompts per day",
        "prompts_by_day",
        (
            ("day", lambda r: text(r["day"])),
            ("prompts", lambda r: count(r["prompts"])),
            ("sessions", lambda r: count(r["sessions"])),
            ("mean length", lambda r: text(r["mean_prompt_length"])),
            ("longest", lambda r: count(r["longest_prompt_length"])),
        ),
    ),
    Table(
        "Events by source",
        "events_by_source",
        (
            ("source", lambda r: text(r["source"])),
            ("events", lambda r: count(r["events"])),
            ("activities", lambda r: count(r["activities"])),
            ("first", lambda r: short_ts(r["first_at"])),
            ("last", lambda r: short_ts(r["last_at"])),
        ),
    ),
    Table(
        "Claude Code metrics by day",
        "metrics_by_day",
        (
            ("day", lambda r: text(r["day"])),
            ("metric", lambda r: text(r["name"])),
            ("model", lambda r: text(r["model"])),
            ("type", lambda r: text(r["type"])),
            ("value", lambda r: f"{r['value'] or 0:,.6g} {r['unit'] or ''}".rstrip()),
        ),
    ),
)
"""The tables after Tool calls and Cost by model, in the order shown, when `shown`."""
