"""The MCP server driven by the SDK's own client over stdio and HTTP."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from mcp.shared.exceptions import MCPError

from activitybi import QueueReader
from tests.mcp_clients import HttpServer, http_session, stdio_session, text


def all_events(home: Path) -> list[dict[str, Any]]:
    """Every event a server wrote: those its warehouse owner loaded into DuckDB, then
    those still in the queue."""
    events: list[dict[str, Any]] = []
    if (home / "warehouse.duckdb").exists():
        import duckdb

        con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
        cur = con.execute("SELECT activity_id, activity, customer, feature_json FROM claude_stream")
        for aid, activity, customer, features in cur.fetchall():
            events.append(
                {
                    "activity_id": aid,
                    "activity": activity,
                    "customer": customer,
                    "feature_json": orjson.loads(features) if features else None,
                }
            )
        con.close()
    with QueueReader(str(home / "queue")) as r:
        cp = r.acked()
        while True:
            lines, cp = r.read(cp)
            if not lines:
                return events
            events.extend(orjson.loads(x) for x in lines)


def test_stdio_tools_end_to_end(_home: Path, tmp_path: Path) -> None:
    errlog = (tmp_path / "server.stderr").open("w+")

    async def run() -> None:
        async with stdio_session(_home, "ana@example.com", errlog=errlog) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert {"log_event", "log_insight", "get_context"} <= set(tools)
            schema = tools["log_event"].input_schema
            assert schema["required"] == ["activity"] and schema["additionalProperties"] is False
            assert "customer" not in schema["properties"]
            aid = text(
                await s.call_tool(
                    "log_event",
                    {
                        "activity": "asked_question",
                        "feature_json": {"q": "why"},
                        "model": "claude-x",
                        "input_tokens": 812,
                        "output_tokens": 96,
                        "cost_usd": 0.0123,
                    },
                )
            )
            assert len(aid) == 26
            batch = await s.call_tool(
                "log_events",
                {
                    "events": [
                        {"activity": "ran_query", "cost_usd": 0.5},
                        {"activity": "edited_file", "activity_id": "e-1"},
                    ]
                },
            )
            ids = orjson.loads(text(batch))
            assert len(ids) == 2 and ids[1] == "e-1"
            bad_batch = await s.call_tool(
                "log_events", {"events": [{"activity": "ran_query"}, {"activity": "Not Verb Noun"}]}
            )
            assert bad_batch.is_error and "pattern" in text(bad_batch)
            again = await s.call_tool("log_event", {"activity": "asked_question", "activity_id": "retry-1"})
            assert text(again) == "retry-1"
            for v in (3, 5, 4):
                await s.call_tool("log_insight", {"subject": "repo", "metric": "test_minutes", "value": v})
            await s.call_tool("log_insight", {"subject": "preferences", "metric": "tone", "value": "terse"})
            ctx = orjson.loads(text(await s.call_tool("get_context", {})))
            assert ctx["customer"] == "ana@example.com"
            (series,) = ctx["insights"]
            assert series["latest"] == 4 and series["count"] == 3
            assert (series["min"], series["max"], series["avg"]) == (3, 5, 4)
            assert ctx["preferences"] == {"tone": "terse"}
            res = await s.read_resource("context://me")
            assert orjson.loads(res.contents[0].text)["insights"] == ctx["insights"]
            small = text(await s.call_tool("get_context", {"max_bytes": 256}))
            assert len(small) <= 256 and orjson.loads(small)["customer"] == "ana@example.com"

    anyio.run(run)
    errlog.seek(0)
    assert "differs" not in errlog.read()  # the fast initialize answer is the SDK's own
    events = all_events(_home)
    asked = [e for e in events if e["activity"] == "asked_question"]
    assert any(e["feature_json"] and e["feature_json"].get("cost_usd") == 0.0123 for e in asked)
    calls = [e["feature_json"]["tool"] for e in events if e["activity"] == "called_tool"]
    assert calls.count("log_insight") == 4 and calls.count("get_context") == 2
    assert [e["activity"] for e in events].count("ran_query") == 1  # the bad batch wrote nothing


BAD_ARGUMENTS = [
    ("log_event", {}, "activity"),
    ("log_event", {"activity": "Asked Question"}, "pattern"),
    ("log_event", {"activity": "asked_question", "customer": "eve@evil.io"}, "customer"),
    ("log_event", {"activity": "asked_question", "feature_json": [1]}, "feature_json"),
    ("log_event", {"activity": "asked_question", "revenue_impact": "lots"}, "revenue_impact"),
    ("log_event", {"activity": "asked_question", "input_tokens": -1}, "input_tokens"),
    (
        "log_event",
        {"activity": "asked_question", "activity_id": "no spaces allowed"},
        "activity_id",
    ),
    ("log_event", {"activity": "asked_question", "feature_json": {"p": "x" * (1 << 20)}}, "cap"),
    ("log_insight", {"subject": "", "metric": "m", "value": 1}, "subject"),
    ("log_insight", {"subject": "s", "metric": "m"}, "value"),
    (
        "log_insight",
        {"subject": "s", "metric": "m", "value": 1, "provenance_query_hash": "zz"},
        "provenance",
    ),
    ("get_context", {"max_bytes": 10}, "max_bytes"),
    ("no_such_tool", {}, "Unknown tool"),
]


def test_bad_arguments_are_refused_and_write_nothing(_home: Path) -> None:
    async def run() -> None:
        async with stdio_session(_home, "ana@example.com") as s:
            for tool, args, needle in BAD_ARGUMENTS:
                res = await s.call_tool(tool, args)
                assert res.is_error, (tool, args)
                assert needle in text(res), (tool, args, text(res))
            ctx = orjson.loads(text(await s.call_tool("get_context", {})))
            assert ctx["insights"] == []

    anyio.run(run)
    events = all_events(_home)
    assert {e["activity"] for e in events} == {"called_tool"}
    outcomes = [(e["feature_json"]["tool"], e["feature_json"]["outcome"]) for e in events]
    assert outcomes.count(("log_event", "error")) == 8 and ("get_context", "ok") in outcomes
    assert all("error" in e["feature_json"] for e in events if e["feature_json"]["outcome"] == "error")


def test_insights_are_read_at_once_by_another_process(_home: Path) -> None:
    async def run() -> None:
        async with (
            stdio_session(_home, "bo@example.com") as a,
            stdio_session(_home, "bo@example.com") as b,
        ):
            before = orjson.loads(text(await b.call_tool("get_context", {})))
            assert before["insights"] == []
            await a.call_tool("log_insight", {"subject": "build", "metric": "seconds", "value": 41.5})
            after = orjson.loads(text(await b.call_tool("get_context", {})))
            assert [(i["subject"], i["latest"]) for i in after["insights"]] == [("build", 41.5)]

    anyio.run(run)


def test_two_servers_on_one_home_lose_nothing(_home: Path) -> None:
    async def client(customer: str, n: int) -> list[str]:
        async with stdio_session(_home, customer) as s:
            return [
                text(await s.call_tool("log_event", {"activity": "ran_query", "feature_json": {"i": i}}))
                for i in range(n)
            ]

    async def run() -> list[str]:
        ids: list[str] = []

        async def one(c: str) -> None:
            ids.extend(await client(c, 60))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "a@x.io")
            tg.start_soon(one, "b@x.io")
        return ids

    ids = anyio.run(run)
    assert len(set(ids)) == 120
    subprocess.run(
        ["activitybi", "upload", "--once", "--quiet"],
        check=True,
        capture_output=True,
        env={**os.environ, "ACTIVITYBI_HOME": str(_home)},
    )
    stored = [e["activity_id"] for e in all_events(_home) if e["activity"] == "ran_query"]
    assert sorted(stored) == sorted(ids)


def test_http_customers_never_see_each_other(_home: Path) -> None:
    server = HttpServer(_home, {"tok-a": "alice@a.io", "tok-b": "bob@b.io"})
    try:

        async def run() -> None:
            async with (
                http_session(server.url, "tok-a") as a,
                http_session(server.url, "tok-b") as b,
            ):
                await a.call_tool("log_insight", {"subject": "secret", "metric": "alice_only", "value": 7})
                await a.call_tool(
                    "log_event", {"activity": "asked_question", "feature_json": {"who": "alice"}}
                )
                await b.call_tool("log_insight", {"subject": "secret", "metric": "bob_only", "value": 9})
                ca = orjson.loads(text(await a.call_tool("get_context", {})))
                cb = orjson.loads(text(await b.call_tool("get_context", {})))
                assert ca["customer"] == "alice@a.io" and cb["customer"] == "bob@b.io"
                assert [i["metric"] for i in ca["insights"]] == ["alice_only"]
                assert [i["metric"] for i in cb["insights"]] == ["bob_only"]
                rb = orjson.loads((await b.read_resource("context://me")).contents[0].text)
                assert "alice" not in orjson.dumps(rb).decode()

        anyio.run(run)

        async def intruder() -> None:
            async with http_session(server.url, "tok-unknown"):
                pass

        with pytest.raises(BaseException) as caught:
            anyio.run(intruder)
        assert (
            caught.group_contains(MCPError)
            if isinstance(caught.value, BaseExceptionGroup)
            else isinstance(caught.value, MCPError)
        )
    finally:
        server.stop()
    mine = [e for e in all_events(_home) if e["activity"] == "asked_question"]
    assert [e["customer"] for e in mine] == ["alice@a.io"]


def test_http_stateless_mode_works(_home: Path) -> None:
    server = HttpServer(_home, {"tok": "carol@c.io"}, "--stateless")
    try:

        async def run() -> None:
            async with http_session(server.url, "tok") as s:
                aid = text(await s.call_tool("log_event", {"activity": "opened_app"}))
                assert len(aid) == 26
                ctx = orjson.loads(text(await s.call_tool("get_context", {})))
                assert ctx["customer"] == "carol@c.io"

        anyio.run(run)
    finally:
        server.stop()
