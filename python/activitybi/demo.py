"""`activitybi demo`: the whole product on a fresh machine, in well under a minute.

It spawns `activitybi serve` exactly as Claude Desktop does (the MCP SDK's stdio client,
the absolute command `install-claude` would write, the customer in the environment) and
plays three short conversations through it: questions and answers with model, tokens and
cost, insights learned, a query submitted and read back, a chart card when the server
has `render_card`, one mistaken tool call. The servers' own warehouse owner loads DuckDB
meanwhile; once they exit, a last drain makes sure every event is in, and the report is
built from the warehouse like `activitybi report`. Nothing shown is made up on the side.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from activitybi import config

if TYPE_CHECKING:
    from mcp import ClientSession
    from rich.console import Console

CUSTOMER = "demo@example.com"
PRICES = {  # US dollars per million input / output tokens
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-opus-4-1": (15.0, 75.0),
}


class DemoError(RuntimeError):
    """A step of the demo did not do what the product promises."""


@dataclass
class Turn:
    question: str
    topic: str
    input_tokens: int
    output_tokens: int
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Other steps of the turn, logged as events (activity, feature_json)."""


@dataclass
class Conversation:
    title: str
    model: str
    turns: list[Turn]
    insights: list[tuple[str, str, Any]] = field(default_factory=list)
    query: tuple[str, dict[str, Any], str] | None = None
    """(template, params, card kind) to submit, read back and draw."""
    mistake: tuple[str, dict[str, Any]] | None = None
    """A tool call a model might get wrong (it shows up as a failed call)."""


CONVERSATIONS = [
    Conversation(
        "Why are my CI builds slow?",
        "claude-sonnet-4-5",
        [
            Turn(
                "Why did CI take 14 minutes on the web-app repo today?",
                "ci",
                2_412,
                611,
                [
                    ("read_file", {"path": ".github/workflows/ci.yml", "bytes": 3_184}),
                    ("ran_command", {"command": "gh run view --log", "duration_ms": 1_840}),
                ],
            ),
            Turn(
                "Can we cache node_modules between jobs?",
                "ci",
                3_950,
                884,
                [("edited_file", {"path": ".github/workflows/ci.yml", "lines_changed": 12})],
            ),
        ],
        insights=[
            ("repo:web-app", "ci_minutes", 14.2),
            ("repo:web-app", "ci_minutes", 9.6),
            ("preferences", "answer_style", "short, with the exact commands"),
        ],
    ),
    Conversation(
        "What did I spend on Claude?",
        "claude-haiku-4-5",
        [Turn("How much did my conversations cost this week, by model?", "spend", 1_210, 402)],
        insights=[("spend", "weekly_usd_checked", True)],
        query=("cost_by_model", {}, "bar"),
        mistake=("submit_query", {"template": "cost_per_model"}),
    ),
    Conversation(
        "Which tools are slowest?",
        "claude-opus-4-1",
        [
            Turn(
                "Which of my tools are slowest, and do any fail?",
                "tools",
                1_876,
                533,
                [("opened_dashboard", {"name": "tool latency"})],
            )
        ],
        insights=[("tools", "slowest_tool_checked", True)],
        query=("tool_latency", {}, "bar"),
    ),
]


def cost(model: str, input_tokens: int, output_tokens: int) -> float:
    per_in, per_out = PRICES[model]
    return round((input_tokens * per_in + output_tokens * per_out) / 1e6, 6)


def demo_home(home: Path | None) -> Path:
    """`home`, else `$ACTIVITYBI_HOME`, else a fresh directory of its own (so a demo
    never mixes into real data)."""
    if home is None:
        explicit = os.environ.get(config.HOME_ENV)
        home = Path(explicit) if explicit else Path(tempfile.mkdtemp(prefix="activitybi-demo-"))
    home = home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def _text(result: Any) -> str:
    for block in result.content:
        if getattr(block, "type", None) == "text":
            return str(block.text)
    return ""


class _Driver:
    """One conversation's MCP session, failing loudly on any unexpected error."""

    def __init__(self, session: ClientSession) -> None:
        self.s = session
        self.calls = 0
        self.failed = 0

    async def call(self, tool: str, args: dict[str, Any], *, expect_error: bool = False) -> Any:
        result = await self.s.call_tool(tool, args)
        self.calls += 1
        if result.is_error:
            self.failed += 1
            if not expect_error:
                raise DemoError(f"{tool} failed: {_text(result)[:300]}")
        elif expect_error:
            raise DemoError(f"{tool} with {args} should have been refused")
        return result


async def _converse(
    conv: Conversation, command: str, args: list[str], env: dict[str, str], errlog: TextIO, home: Path
) -> dict[str, Any]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=command, args=args, env=env)
    out: dict[str, Any] = {"title": conv.title, "model": conv.model}
    started = time.perf_counter()
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        d = _Driver(session)
        tools = {t.name for t in (await session.list_tools()).tools}
        context = orjson.loads(_text(await d.call("get_context", {})))
        remembered = len(context.get("insights") or [])
        for turn in conv.turns:
            await d.call(
                "log_event",
                {
                    "activity": "asked_question",
                    "feature_json": {"question": turn.question, "topic": turn.topic},
                },
            )
            for activity, features in turn.steps:
                await d.call("log_event", {"activity": activity, "feature_json": features})
            await d.call(
                "log_event",
                {
                    "activity": "received_answer",
                    "model": conv.model,
                    "input_tokens": turn.input_tokens,
                    "output_tokens": turn.output_tokens,
                    "cost_usd": cost(conv.model, turn.input_tokens, turn.output_tokens),
                    "feature_json": {"topic": turn.topic},
                },
            )
        if conv.mistake is not None:
            await d.call(*conv.mistake, expect_error=True)
        if conv.query is not None:
            template, qparams, kind = conv.query
            await d.call("list_query_templates", {})
            out["waited_for_upload_s"] = await _loaded(home)
            ticket = orjson.loads(
                _text(await d.call("submit_query", {"template": template, "params": qparams}))
            )["ticket"]
            out["query"] = await _await_ticket(d, ticket)
            out["query"]["template"] = template
            if "render_card" in tools:
                out["card"] = await _card(d, ticket, kind, home)
        for subject, metric, value in conv.insights:
            await d.call("log_insight", {"subject": subject, "metric": metric, "value": value})
        out.update(
            calls=d.calls, failed=d.failed, remembered=remembered, seconds=time.perf_counter() - started
        )
    return out


async def _loaded(home: Path, timeout: float = 20.0) -> float:
    """Waits until the servers' uploader has loaded every event appended so far (the
    queue's `pending`, shared by all processes, is 0), so the query sees them."""
    import anyio

    from activitybi import Queue

    start = time.monotonic()
    q = Queue(str(config.Home(home).queue))  # only reads the shared counter: no segment is made
    try:
        while q.stats()["pending"] > 0:
            if time.monotonic() - start > timeout:
                raise DemoError(f"the uploader has not loaded the queue after {timeout:g} s")
            await anyio.sleep(0.05)
    finally:
        q.close()
    return time.monotonic() - start


async def _await_ticket(d: _Driver, ticket: str, timeout: float = 40.0) -> dict[str, Any]:
    """Polls get_query_result as a model would, until the owner has run the query."""
    import anyio

    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        status = orjson.loads(_text(await d.call("get_query_result", {"ticket": ticket})))
        polls += 1
        if status["status"] == "succeeded":
            result = status.get("result") or {}
            return {"ticket": ticket, "rows": len(result.get("rows") or []), "polls": polls}
        if status["status"] in ("failed", "cancelled"):
            raise DemoError(f"query {ticket} {status['status']}: {status.get('error')}")
        if time.monotonic() > deadline:
            raise DemoError(f"query {ticket} still {status['status']} after {timeout:g} s")
        await anyio.sleep(0.1)


async def _card(d: _Driver, ticket: str, kind: str, home: Path) -> dict[str, Any]:
    result = await d.call("render_card", {"ticket": ticket, "kind": kind})
    images = [b for b in result.content if getattr(b, "type", None) == "image"]
    if not images:
        raise DemoError("render_card returned no image")
    png = base64.b64decode(images[0].data)
    info = orjson.loads(_text(result) or "{}")
    path = home / "cards" / f"{ticket}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)  # a copy where the user can open it; the artifact is the record
    return {"file": str(path), "bytes": len(png), "artifact": info.get("url")}


def drain(home: Path, timeout: float = 8.0) -> int | None:
    """`activitybi upload --once`, once the servers' owner process has let go of the queue
    and the DuckDB file; then loads the artifact index. Returns the events it loaded, or
    None when another server keeps owning the warehouse (one that was running on this
    home before the demo): then it waits until that owner has loaded everything."""
    import anyio

    from activitybi.owner.uploader import Uploader
    from activitybi.query.artifacts import sync_to_warehouse
    from activitybi.warehouse import TransientError
    from activitybi.warehouse.duckdb import DuckDBWarehouse

    deadline = time.monotonic() + timeout
    while True:
        wh = None
        try:
            wh = DuckDBWarehouse(config.Home(home).warehouse)
            wh.init()
            up = Uploader(config.Home(home).queue, wh)
        except (TransientError, BlockingIOError):
            if wh is not None:
                wh.close()
            if time.monotonic() > deadline:
                anyio.run(_loaded, home)
                return None
            time.sleep(0.1)
            continue
        try:
            stats = up.drain()
            sync_to_warehouse(wh, home)
            return stats.loaded
        finally:
            up.close()
            wh.close()


def run(home: Path | None = None, *, console: Console | None = None) -> dict[str, Any]:
    """Runs the demo and prints what happened; returns the figures (for tests)."""
    import anyio
    from rich.console import Console

    from activitybi.clients.claude_desktop import server_command
    from activitybi.reporting.figures import local_report
    from activitybi.reporting.html import render_html
    from activitybi.reporting.terminal import render_terminal

    console = console or Console()
    started = time.perf_counter()
    home = demo_home(home)
    os.environ[config.HOME_ENV] = str(home)
    command, args = server_command()
    env = {config.HOME_ENV: str(home), "ACTIVITYBI_CUSTOMER": CUSTOMER}
    console.print(
        f"[bold]activitybi demo[/] · home {home}\n"
        f"spawning [cyan]{command} {' '.join(args)}[/] as Claude Desktop would, "
        f"as {CUSTOMER}"
    )
    (config.Home(home).logs).mkdir(exist_ok=True)
    log_path = config.Home(home).logs / "demo-servers.log"
    conversations = []
    with log_path.open("a") as errlog:
        for n, conv in enumerate(CONVERSATIONS, 1):
            out = anyio.run(_converse, conv, command, args, env, errlog, home)
            conversations.append(out)
            extra = ""
            if "query" in out:
                q = out["query"]
                extra += f" · {q['template']} → {q['rows']} rows after {q['polls']} polls"
            if "card" in out:
                extra += f" · card {out['card']['bytes']:,} bytes"
            console.print(
                f"  {n}. [bold]{conv.title}[/] ({conv.model}): {out['calls']} tool calls"
                f" ({out['failed']} failed), context recalled {out['remembered']} "
                f"insights{extra} · {out['seconds']:.1f} s"
            )
    loaded = drain(home)
    # when another server owns this home's warehouse, the report comes through its tickets
    report = local_report(home, customer=None if loaded is not None else CUSTOMER)
    console.print()
    render_terminal(report, console)
    html_path = home / "report.html"
    html_path.write_text(render_html(report), encoding="utf-8")
    seconds = time.perf_counter() - started
    cards = [c["card"]["file"] for c in conversations if "card" in c]
    lines = [
        f"home        {home}",
        f"warehouse   {home / 'warehouse.duckdb'}  (duckdb: SELECT * FROM claude_stream)",
        f"queue       {home / 'queue'}",
        f"report      {html_path}",
        f"cards       {', '.join(cards) if cards else 'none (this server has no render_card)'}",
        f"artifacts   {home / 'artifacts'}",
        f"server log  {log_path}",
    ]
    console.print("\n".join(lines))
    drained = (
        f"{loaded:,} loaded by the final drain"
        if loaded is not None
        else ("loaded by the server that owns this home")
    )
    console.print(
        f"[green]done in {seconds:.1f} s[/]: {report['totals']['events']:,} events "
        f"in DuckDB ({drained}). Again: "
        f"ACTIVITYBI_HOME={home} activitybi report --html report.html"
    )
    return {
        "home": str(home),
        "seconds": seconds,
        "conversations": conversations,
        "events": report["totals"]["events"],
        "report_html": str(html_path),
    }
