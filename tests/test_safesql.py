"""SafeSQL templates and query tickets: validation, isolation, injection, byte cap,
timeout, cancellation, restart, rate limits, audit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activitybi import QueueReader
from activitybi.owner.executor import TicketExecutor
from activitybi.query import templates
from activitybi.query.templates import Template, TemplateError
from activitybi.query.tickets import TicketStore, cap_rows
from activitybi.warehouse.duckdb import DuckDBWarehouse
from tests.mcp_clients import HttpServer, http_session, stdio_session, text
from tests.test_server import all_events

INJECTIONS = [
    "x'; DROP TABLE claude_stream; --",
    "' OR '1'='1",
    '"; SELECT 1; --',
    "$$",
    "\\x00",
    "‘ OR ‘1’=‘1",  # noqa: RUF001 (typographic quotes on purpose)
    "a\x00b",
    "); DELETE FROM insight_atoms; --",
    "${customer}",
    "$customer",
]


@pytest.fixture
def wh(tmp_path: Path) -> Any:
    w = DuckDBWarehouse(tmp_path / "w.duckdb")
    w.init()
    yield w
    w.close()


def run(executor: TicketExecutor, store: TicketStore) -> None:
    for ticket in store.unfinished():
        executor.execute(ticket)


@pytest.mark.parametrize(
    ("template", "params", "message"),
    [
        ("no_such_template", {}, "no template"),
        ("activity_counts", {"since": "yesterday"}, "YYYY-MM-DD"),
        (
            "activity_counts",
            {"since": "2026-01-01", "customer": "eve@x.io"},
            "no parameter 'customer'",
        ),
        ("insight_history", {"subject": "a"}, "needs parameter 'metric'"),
        ("sessions", {"limit": 0}, "at least 1"),
        ("sessions", {"limit": "10"}, "integer"),
        ("dataset", {"spec": {"cohort": {}}}, "spec"),
    ],
)
def test_refused_before_anything_runs(
    tmp_path: Path, template: str, params: dict[str, Any], message: str
) -> None:
    store = TicketStore(tmp_path / "tickets")
    with pytest.raises(TemplateError, match=message):
        store.submit("a@x.io", template, params, 65536)
    assert [p for p in (tmp_path / "tickets").rglob("*") if p.is_file()] == []


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_string_parameters_never_change_the_sql(value: str) -> None:
    for t in templates.TEMPLATES.values():
        if t.build is not None:
            continue  # the dataset builder has its own property tests
        strings = [p for p in t.params if p.type == "str"]
        base = {p.name: "benign" for p in t.params if p.required}
        sql, _ = t.bind(base, "a@x.io")
        for p in strings:
            try:
                got, values = t.bind({**base, p.name: value}, value or "c")
            except TemplateError:
                continue
            assert got == sql and "?" in sql and "$" not in sql
            assert value in values and (value or "c") in values


def test_everyone_is_for_a_reader_of_the_whole_file_only() -> None:
    """The local report reads the file for every customer; that scope drops the customer
    filter of the templates written with it, and fails closed for any other."""
    for t in templates.TEMPLATES.values():
        if t.build is not None:
            with pytest.raises(TemplateError, match="one customer at a time"):
                t.bind({"spec": {}}, templates.EVERYONE)
            continue
        base = {p.name: "x" for p in t.params if p.required}
        sql, values = t.bind(base, templates.EVERYONE)
        assert "TRUE" in sql and templates.EVERYONE not in values
        assert len(values) == len(t.bind(base, "c@x.io")[1]) - t.sql.count("$customer")
    leaky = Template("leaky", "", (), "SELECT 1 WHERE customer = $customer")
    with pytest.raises(TemplateError):
        leaky.bind({}, templates.EVERYONE)


def test_injection_strings_come_back_only_as_data(wh: DuckDBWarehouse) -> None:
    import datetime as dt

    for i, s in enumerate(INJECTIONS):
        wh.execute(
            "INSERT INTO insight_atoms VALUES (?, ?, ?, ?, ?, NULL, ?)",
            [f"a{i}", "victim@x.io", s, s, orjson.dumps(s).decode(), dt.datetime(2026, 1, 1)],
        )
    t = templates.get("insight_history")
    for s in INJECTIONS:
        sql, values = t.bind({"subject": s, "metric": s, "since": "2020-01-01"}, "victim@x.io")
        assert sql == t.bind({"subject": "a", "metric": "b"}, "c")[0]
        rows = wh.execute(sql, values).rows
        assert [orjson.loads(r[1]) for r in rows] == [s]
        sql, values = t.bind({"subject": s, "metric": s, "since": "2020-01-01"}, s)
        assert wh.execute(sql, values).rows == []  # an injected customer matches nobody
    assert wh.execute("SELECT count(*) FROM insight_atoms").rows == [(len(INJECTIONS),)]


def test_byte_cap_samples_whole_rows_deterministically() -> None:
    rows = [(i, "x" * 50) for i in range(1000)]
    full = cap_rows(["i", "pad"], rows, 1 << 20)
    assert full["sampled"] is False and len(full["rows"]) == 1000
    a = cap_rows(["i", "pad"], rows, 4096)
    b = cap_rows(["i", "pad"], rows, 4096)
    assert a == b and a["sampled"] is True
    assert a["total_rows"] == 1000 and a["returned_rows"] == len(a["rows"]) > 10
    assert len(orjson.dumps(a)) <= 4096
    indices = [r["i"] for r in a["rows"]]
    assert indices == sorted(indices) and all(r["pad"] == "x" * 50 for r in a["rows"])


def slow_template() -> Template:
    return Template(
        "slow",
        "test only: a query that runs for minutes",
        (),
        "SELECT count(*) FROM range(20000000000) t(i) WHERE $customer IS NOT NULL AND hash(i) % 7 = 3",
    )


def test_timeout_stops_the_query(
    tmp_path: Path, wh: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(templates.TEMPLATES, "slow", slow_template())
    store = TicketStore(tmp_path / "tickets")
    ticket = store.submit("a@x.io", "slow", {}, 65536)
    t = time.monotonic()
    run(TicketExecutor(store, wh, timeout_s=0.5), store)
    assert time.monotonic() - t < 10
    done = store.get(ticket.ticket_id)
    assert done is not None and done.status == "failed" and "timeout" in (done.error or "")
    assert wh.execute("SELECT outcome, template FROM query_audit").rows == [("failed", "slow")]


def test_cancel_a_running_query(tmp_path: Path, wh: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(templates.TEMPLATES, "slow", slow_template())
    store = TicketStore(tmp_path / "tickets")
    executor = TicketExecutor(store, wh, timeout_s=120, poll=0.01)
    ticket = store.submit("a@x.io", "slow", {}, 65536)
    executor.start()
    deadline = time.monotonic() + 10
    while store.get(ticket.ticket_id).status != "running" and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    store.cancel(ticket.ticket_id)
    while store.get(ticket.ticket_id).status == "running" and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    executor.stop.set()
    executor.join()
    done = store.get(ticket.ticket_id)
    assert done is not None and done.status == "cancelled"
    queued = store.submit("a@x.io", "activity_counts", {}, 65536)
    store.cancel(queued.ticket_id)
    assert store.get(queued.ticket_id).status == "cancelled"  # type: ignore[union-attr]


def test_tickets_belong_to_their_customer(tmp_path: Path) -> None:
    store = TicketStore(tmp_path / "tickets")
    ticket = store.submit("a@x.io", "activity_counts", {}, 65536)
    assert store.get(ticket.ticket_id, "a@x.io") is not None
    assert store.get(ticket.ticket_id, "b@x.io") is None
    assert store.get("../../etc/passwd", "a@x.io") is None


def _seed(s: Any, who: str) -> Any:
    async def go() -> None:
        await s.call_tool(
            "log_event",
            {
                "activity": "asked_question",
                "model": f"model-{who}",
                "input_tokens": 10,
                "cost_usd": 0.5,
                "feature_json": {"secret": f"secret-of-{who}"},
            },
        )
        await s.call_tool("log_event", {"activity": "received_answer"})
        await s.call_tool("log_insight", {"subject": f"subject-{who}", "metric": "m", "value": 1})

    return go()


def every_template_params(who: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("activity_counts", {"since": "2020-01-01"}),
        ("usage_by_day", {"since": "2020-01-01"}),
        ("tool_latency", {"since": "2020-01-01"}),
        ("sessions", {"since": "2020-01-01"}),
        ("cost_by_model", {"since": "2020-01-01"}),
        ("cost_by_session", {"since": "2020-01-01"}),
        ("insight_history", {"subject": f"subject-{who}", "metric": "m", "since": "2020-01-01"}),
        (
            "dataset",
            {
                "spec": {
                    "cohort": {
                        "activity": "asked_question",
                        "occurrence": "all",
                        "filters": [],
                        "columns": [
                            {"column": "activity_id", "type": "string", "as": "activity_id"},
                            {"column": "customer", "type": "string", "as": "customer"},
                            {"feature": "secret", "type": "string", "as": "secret"},
                        ],
                    },
                    "appends": [
                        {
                            "activity": "received_answer",
                            "relationship": "first_after",
                            "filters": [],
                            "columns": [{"column": "ts", "type": "timestamp", "as": "answered_at"}],
                        }
                    ],
                }
            },
        ),
    ]


async def wait_result(s: Any, ticket: str) -> dict[str, Any]:
    for _ in range(400):
        got = orjson.loads(text(await s.call_tool("get_query_result", {"ticket": ticket})))
        if got["status"] in ("succeeded", "failed", "cancelled"):
            return dict(got)
        await anyio.sleep(0.05)
    raise AssertionError(f"ticket {ticket} did not finish")


def test_two_customers_every_template_over_mcp(_home: Path) -> None:
    server = HttpServer(_home, {"tok-a": "alice@a.io", "tok-b": "bob@b.io"})
    try:

        async def go() -> None:
            async with (
                http_session(server.url, "tok-a") as a,
                http_session(server.url, "tok-b") as b,
            ):
                await _seed(a, "alice")
                await _seed(b, "bob")
                listed = orjson.loads(text(await a.call_tool("list_query_templates", {})))
                assert {t["name"] for t in listed} == set(templates.TEMPLATES)
                for _ in range(200):  # until the owner has loaded both customers' events
                    if _home.joinpath("warehouse.duckdb").exists() and not QueueReader_pending(_home):
                        break
                    await anyio.sleep(0.05)
                await anyio.sleep(0.3)
                for who, s, other in (("alice", a, "bob"), ("bob", b, "alice")):
                    for name, params in every_template_params(who):
                        sub = orjson.loads(
                            text(await s.call_tool("submit_query", {"template": name, "params": params}))
                        )
                        got = await wait_result(s, sub["ticket"])
                        assert got["status"] == "succeeded", (name, got)
                        body = orjson.dumps(got["result"]).decode()
                        assert other not in body, (name, body)
                        assert got["result"]["total_rows"] >= 1, (name, body)
                    foreign = orjson.loads(
                        text(
                            await (b if s is a else a).call_tool(
                                "submit_query", {"template": "activity_counts"}
                            )
                        )
                    )["ticket"]
                    res = await s.call_tool("get_query_result", {"ticket": foreign})
                    assert res.is_error and "no ticket" in text(res)

        anyio.run(go)
    finally:
        server.stop()
    import duckdb

    con = duckdb.connect(str(_home / "warehouse.duckdb"), read_only=True)
    audit = con.execute(
        "SELECT customer_id, template, outcome, row_count, bytes, duration_ms, "
        "length(params_hash), query_tag FROM query_audit"
    ).fetchall()
    con.close()
    assert len(audit) >= 16
    assert all(r[2] == "succeeded" and r[3] >= 1 and r[4] > 0 and r[5] >= 0 and r[6] == 64 for r in audit)
    assert all(len(r[7]) == len("cdesk_") + 36 for r in audit)


def QueueReader_pending(home: Path) -> int:
    try:
        with QueueReader(str(home / "queue")) as r:
            return r.pending()
    except BlockingIOError:  # the owner is reading: ask the state it keeps instead
        from activitybi import Queue

        with Queue(str(home / "queue")) as q:
            return int(q.stats()["pending"])


def test_tickets_survive_a_restart(_home: Path) -> None:
    holder = QueueReader(str(_home / "queue"))  # no owner can start: tickets stay queued

    async def submit() -> list[str]:
        async with stdio_session(_home, "r@x.io") as s:
            await s.call_tool("log_event", {"activity": "asked_question"})
            return [
                orjson.loads(text(await s.call_tool("submit_query", {"template": "activity_counts"})))[
                    "ticket"
                ]
                for _ in range(3)
            ]

    tickets = anyio.run(submit)
    holder.close()

    async def read() -> None:
        async with stdio_session(_home, "r@x.io") as s:
            for t in tickets:
                assert (await wait_result(s, t))["status"] == "succeeded"

    anyio.run(read)


def test_rate_limits_refuse_and_write_nothing(_home: Path) -> None:
    async def go() -> None:
        async with stdio_session(
            # refills slow enough (one event per 100 s) that a loaded machine cannot blur them
            _home,
            "rl@x.io",
            ACTIVITYBI_QUERIES_PER_MINUTE="2",
            ACTIVITYBI_EVENTS_PER_SECOND="0.1",
        ) as s:
            for _ in range(2):
                assert not (await s.call_tool("submit_query", {"template": "activity_counts"})).is_error
            third = await s.call_tool("submit_query", {"template": "activity_counts"})
            assert third.is_error and "rate limit" in text(third)
            batch = await s.call_tool("log_events", {"events": [{"activity": "spammed_events"}] * 2})
            assert batch.is_error and "rate limit" in text(batch)  # over the burst: none written
            results = [await s.call_tool("log_event", {"activity": "spammed_events"}) for _ in range(4)]
            assert [r.is_error for r in results] == [False, True, True, True]  # a burst of 1
            assert all("rate limit" in text(r) for r in results[1:])

    anyio.run(go)
    assert len(list((_home / "tickets").glob("*/*.json"))) == 2
    spammed = [e for e in all_events(_home) if e["activity"] == "spammed_events"]
    assert len(spammed) == 1
