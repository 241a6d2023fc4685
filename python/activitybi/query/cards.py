"""Chart cards: a finished query result drawn as a PNG that an MCP client shows inline.

A card has a title, labelled axes and a provenance footer (template, parameters hash,
when the data was read), also kept in the PNG's text chunks so that a saved card still
says where it came from. matplotlib (Agg, object API, no pyplot state) is imported on the
first card only: server start-up does not pay for it. Past `MAX_BARS` categories a bar
chart keeps the largest and says so; a line chart of many rows keeps each pixel column's
first, lowest, highest and last point, which looks the same and draws 10,000 rows in
about 0.2 s.
"""

from __future__ import annotations

import datetime as dt
import io
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from activitybi.query.artifacts import Artifact, ArtifactStore
    from activitybi.query.tickets import Ticket, TicketStore

KINDS = ("auto", "bar", "line")
MAX_BARS = 40
MAX_LINES = 4
WIDTH_PX, HEIGHT_PX, DPI = 1000, 600, 100
PREFERRED_METRIC = {
    "cost_by_model": "cost_usd",
    "cost_by_session": "cost_usd",
    "tool_latency": "p95_ms",
    "activity_counts": "events",
    "usage_by_day": "events",
    "sessions": "events",
}
"""The figure a template's card shows first, when the result has it."""
_lock = threading.Lock()  # matplotlib's font cache and text layout are not thread-safe


class CardError(ValueError):
    """A result that cannot be drawn, or a ticket that has no result to draw (yet)."""


@dataclass(slots=True)
class Card:
    png: bytes
    info: dict[str, Any]
    artifact: Artifact | None = None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)  # decimals arrive as text (JSON has no decimal type)
        except ValueError:
            return None
    return None


def _when(v: Any) -> dt.datetime | None:
    if isinstance(v, dt.datetime):
        return v
    if isinstance(v, dt.date):
        return dt.datetime.combine(v, dt.time())
    if isinstance(v, str) and 10 <= len(v) <= 40 and v[4:5] == "-" and v[7:8] == "-":
        try:
            parsed = dt.datetime.fromisoformat(v)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is None else parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return None


def _rows(result: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    if not isinstance(result, dict) or "rows" not in result:
        raise CardError("a card needs a query result with 'columns' and 'rows'")
    rows = result.get("rows") or []
    first = rows[0] if rows and isinstance(rows[0], dict) else {}
    columns = list(result.get("columns") or first.keys())
    if not rows:
        raise CardError("the result has no rows: there is nothing to draw")
    if not isinstance(rows[0], dict):
        rows = [dict(zip(columns, r, strict=False)) for r in rows]
    return columns, rows


def _plan(
    columns: list[str], rows: list[dict[str, Any]], kind: str, prefer: str | None = None
) -> dict[str, Any]:
    """Which column goes on x, which are plotted, and as what."""
    if kind not in KINDS:
        raise CardError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    numeric: list[str] = []
    temporal: dict[str, list[dt.datetime | None]] = {}
    for c in columns:
        values = [r.get(c) for r in rows]
        if all(v is None for v in values):
            continue
        if all(v is None or _number(v) is not None for v in values):
            numeric.append(c)
            continue
        when = [_when(v) for v in values]
        if all(w is not None or v is None for v, w in zip(values, when, strict=True)):
            temporal[c] = when
    labels = [c for c in columns if c not in numeric]
    if labels:
        x = next(iter(temporal)) if temporal else labels[0]
        ys = numeric
    elif len(numeric) >= 2:
        x, ys = numeric[0], numeric[1:]
    else:
        x, ys = None, numeric
    if not ys:
        raise CardError(
            "the result has no plottable column: a card needs at least one numeric column "
            f"(columns: {', '.join(columns) or 'none'})"
        )
    if prefer in ys:
        ys = [prefer, *(y for y in ys if y != prefer)]
    ordered = x is None or x in temporal or x in numeric
    chosen = kind if kind != "auto" else ("line" if ordered and len(rows) > 1 else "bar")
    return {
        "x": x,
        "ys": ys,
        "temporal": x in temporal,
        "numeric_x": x in numeric,
        "kind": chosen,
        "when": temporal.get(x) if x else None,
    }


def render_card(
    result: dict[str, Any],
    *,
    title: str,
    template: str,
    params_hash: str,
    created_at: str | dt.datetime,
    kind: str = "auto",
    y: str | None = None,
) -> bytes:
    """The result as a PNG card (1000x600). `y` picks the metric drawn first (default: the
    first numeric column). CardError (a ValueError) for an empty result, a result with no
    numeric column, or an unknown kind."""
    return render(
        result, title=title, template=template, params_hash=params_hash, created_at=created_at, kind=kind, y=y
    )[0]


def render(
    result: dict[str, Any],
    *,
    title: str,
    template: str,
    params_hash: str,
    created_at: str | dt.datetime,
    kind: str = "auto",
    y: str | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """`render_card`, also returning what was drawn (kind, columns, rows shown)."""
    columns, rows = _rows(result)
    plan = _plan(columns, rows, kind, y)
    x, ys, chosen = plan["x"], list(plan["ys"]), plan["kind"]
    if plan["temporal"]:
        xs: list[Any] = plan["when"]
    elif plan["numeric_x"]:
        xs = [_number(r.get(x)) for r in rows]
    elif x is None:
        xs = list(range(1, len(rows) + 1))
    else:
        xs = [str(r.get(x)) for r in rows]
    series = {y: [_number(r.get(y)) for r in rows] for y in ys}
    order = list(range(len(rows)))
    ordered_x = plan["temporal"] or plan["numeric_x"]
    note = ""
    if chosen == "bar":
        ys = ys[:1]
        if len(rows) > MAX_BARS:
            first = series[ys[0]]
            order = sorted(order, key=lambda i: -(first[i] or 0))[:MAX_BARS]
            note = f"largest {MAX_BARS} of {len(rows):,} rows by {ys[0]}"
    else:
        peak = max((abs(v or 0) for v in series[ys[0]]), default=0) or 1
        ys = [y for y in ys if max((abs(v or 0) for v in series[y]), default=0) <= 20 * peak]
        ys = ys[:MAX_LINES]
    if ordered_x:
        order.sort(key=lambda i: (xs[i] is None, xs[i] or 0))
    stamp = (
        created_at.isoformat(timespec="seconds") if isinstance(created_at, dt.datetime) else str(created_at)
    )
    total = int(result.get("total_rows") or len(rows))
    sampled = bool(result.get("sampled"))
    provenance = (
        f"template {template} · params {params_hash[:16]} · data of "
        f"{stamp.replace('T', ' ')} UTC · {len(rows):,} rows"
        + (f" sampled from {total:,}" if sampled else "")
    )
    with _lock:
        png = _draw(
            [xs[i] for i in order],
            {y: [series[y][i] for i in order] for y in ys},
            x,
            chosen,
            plan,
            title=title,
            note=note,
            provenance=provenance,
            metadata={
                "Title": title,
                "Software": "activitybi",
                "activitybi:template": template,
                "activitybi:params_hash": params_hash,
                "activitybi:created_at": stamp,
                "activitybi:rows": str(len(rows)),
                "activitybi:sampled": "true" if sampled else "false",
            },
        )
    return png, {
        "kind": chosen,
        "x": x,
        "y": ys,
        "rows": len(rows),
        "rows_drawn": len(order),
        "note": note or None,
        "total_rows": total,
        "sampled": sampled,
    }


def _envelope(xs: list[Any], ys: list[float | None], buckets: int) -> tuple[list[Any], list[float | None]]:
    """Keeps each bucket's first, lowest, highest and last point: at the plot's width the
    line looks the same, and Agg draws a tenth of the vertices."""
    n = len(xs)
    if n <= 4 * buckets:
        return xs, ys
    keep: list[int] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        idx = [i for i in range(lo, hi) if ys[i] is not None]
        if not idx:
            continue
        low = min(idx, key=lambda i: ys[i])  # type: ignore[arg-type,return-value]
        high = max(idx, key=lambda i: ys[i])  # type: ignore[arg-type,return-value]
        keep.extend(sorted({idx[0], low, high, idx[-1]}))
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _draw(
    xs: list[Any],
    series: dict[str, list[float | None]],
    x: str | None,
    kind: str,
    plan: dict[str, Any],
    *,
    title: str,
    note: str,
    provenance: str,
    metadata: dict[str, str],
) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.09, 0.2, 0.88, 0.67))
    fig.text(
        0.09,
        0.94,
        title if len(title) <= 90 else title[:89] + "…",
        fontsize=15,
        fontweight="bold",
        color="#1d2330",
    )
    if note:
        fig.text(0.97, 0.94, note, fontsize=9, color="#5a6475", ha="right")
    ys = list(series)
    colors = ("#2563eb", "#f59e0b", "#10b981", "#ef4444")
    n = len(xs)
    if kind == "bar":
        positions = list(range(n))
        bars = ax.bar(positions, [v or 0.0 for v in series[ys[0]]], color=colors[0], width=0.7)
        if n <= 20:
            ax.bar_label(
                bars, labels=[_label(v) for v in series[ys[0]]], fontsize=8, padding=2, color="#374151"
            )
        ax.set_xticks(positions)
        ax.set_xticklabels(
            [_tick(v) for v in xs], rotation=30 if n > 6 else 0, ha="right" if n > 6 else "center", fontsize=8
        )
    else:
        categorical = not (plan["temporal"] or plan["numeric_x"] or x is None)
        px = list(range(n)) if categorical else xs
        for i, y in enumerate(ys):
            lx, ly = _envelope(px, series[y], int(WIDTH_PX * 0.88 / 2))
            ax.plot(
                lx,
                [float("nan") if v is None else v for v in ly],
                color=colors[i],
                linewidth=1.4,
                marker="o" if n <= 60 else None,
                markersize=3,
                label=y,
            )
        if categorical:
            step = max(1, n // 12)
            ax.set_xticks(px[::step])
            ax.set_xticklabels([_tick(v) for v in xs[::step]], rotation=30, ha="right", fontsize=8)
        if plan["temporal"]:
            import matplotlib.dates as mdates

            locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_locator(locator)
            formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_formatter(formatter)
        if len(ys) > 1:
            ax.legend(frameon=True, framealpha=0.9, edgecolor="none", fontsize=9, loc="upper left")
    ax.set_xlabel(x or "row", fontsize=10, color="#1d2330")
    ax.set_ylabel(ys[0] if len(ys) == 1 else "value", fontsize=10, color="#1d2330")
    ax.grid(axis="y", color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.add_artist(_rule(fig))
    fig.text(0.01, 0.025, provenance, fontsize=8, color="#374151")
    fig.text(0.99, 0.025, "activitybi", fontsize=8, color="#9ca3af", ha="right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=metadata)
    return buf.getvalue()


def _rule(fig: Any) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([0.01, 0.99], [0.065, 0.065], transform=fig.transFigure, color="#d1d5db", linewidth=0.8)


def _label(v: float | None) -> str:
    if v is None:
        return ""
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:,.2f}" if abs(v) >= 1 else f"{v:.4g}"


def _tick(v: Any) -> str:
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d") if v.time() == dt.time() else v.strftime("%m-%d %H:%M")
    s = str(v)
    return s if len(s) <= 24 else s[:23] + "…"


def card_title(ticket: Ticket) -> str:
    """`Cost by model · since 2026-11-01`, from the template and its parameters."""
    words = ticket.template.replace("_", " ").capitalize()
    params = []
    for k, v in sorted(ticket.params.items()):
        if isinstance(v, dict):
            spec = v.get("cohort")
            cohort = spec.get("activity") if isinstance(spec, dict) else None
            params.append(f"cohort {cohort}" if cohort else k)
        else:
            params.append(f"{k} {v}")
    title = " · ".join([words, *params])
    return title if len(title) <= 90 else title[:89] + "…"


def card_for_ticket(
    tickets: TicketStore,
    ticket_id: str,
    customer: str,
    *,
    kind: str = "auto",
    store: ArtifactStore | None = None,
) -> Card:
    """Draws the customer's finished ticket and stores the card as an artifact.

    CardError for an unknown or foreign ticket (the same message: a foreign ticket's
    existence is not disclosed), one that has not succeeded, or a result that cannot be
    drawn."""
    ticket = tickets.get(ticket_id, customer)
    if ticket is None:
        raise CardError(f"no ticket {ticket_id[:40]!r} for this user")
    if ticket.status != "succeeded":
        detail = {
            "queued": "it has not started yet",
            "running": f"it is still running ({ticket.progress or 0:g}%)",
            "failed": f"it failed: {ticket.error}",
            "cancelled": "it was cancelled",
        }.get(ticket.status, ticket.status)
        raise CardError(
            f"ticket {ticket.ticket_id} has no result to draw: {detail}. "
            "Call get_query_result until its status is succeeded."
        )
    result = tickets.result(ticket.ticket_id)
    if result is None:
        raise CardError(f"ticket {ticket.ticket_id} succeeded but its result file is gone")
    try:
        png, drawn = render(
            result,
            title=card_title(ticket),
            template=ticket.template,
            params_hash=ticket.params_hash,
            created_at=ticket.finished_at or ticket.submitted_at,
            kind=kind,
            y=PREFERRED_METRIC.get(ticket.template),
        )
    except CardError:
        raise
    except (ValueError, OverflowError) as e:  # matplotlib on values it cannot lay out
        raise CardError(f"ticket {ticket.ticket_id}'s values cannot be drawn: {e}") from e
    info: dict[str, Any] = {
        "ticket": ticket.ticket_id,
        "template": ticket.template,
        "params_hash": ticket.params_hash,
        **drawn,
        "content_type": "image/png",
        "size_bytes": len(png),
    }
    artifact = None
    if store is not None:
        artifact = store.put(customer, png, "image/png")
        info.update(artifact_id=artifact.artifact_id, expires_at=artifact.to_json()["expires_at"])
    return Card(png, info, artifact)
