"""The ticket store's layout and the executor's scheduling: the owner lists only pending
tickets, finished ones expire, customers take turns, queued work per customer is capped,
and DuckDB's memory and threads are bounded in the owner."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pytest

from activitybi import QueueReader
from activitybi.owner.executor import TicketExecutor
from activitybi.query import templates
from activitybi.query.templates import Template
from activitybi.query.tickets import TicketStore, TooManyTickets, customer_key, submitted_day
from activitybi.warehouse.duckdb import DuckDBWarehouse
from tests.mcp_clients import stdio_session, text


@pytest.fixture
def wh(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    w = DuckDBWarehouse(tmp_path / "w.duckdb")
    w.init()
    yield w
    w.close()


def heavy_template() -> Template:
    return Template(
        "heavy",
        "test only: a query that runs until its statement timeout",
        (),
        "SELECT count(*) FROM range(20000000000) t(i) WHERE $customer IS NOT NULL AND hash(i) % 7 = 3",
    )


def test_layout_day_folders_and_pending_markers(tmp_path: Path, wh: DuckDBWarehouse) -> None:
    store = TicketStore(tmp_path / "tickets")
    ticket = store.submit("a@x.io", "activity_counts", {}, 65536)
    day = submitted_day(ticket.ticket_id)
    assert day == dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert (tmp_path / "tickets" / day / f"{ticket.ticket_id}.json").is_file()
    marker = tmp_path / "tickets" / "pending" / customer_key("a@x.io") / ticket.ticket_id
    assert marker.is_file() and marker.stat().st_size == 0
    TicketExecutor(store, wh).execute(ticket)
    assert not marker.exists()  # finished: out of the owner's scan ...
    assert store.pending() == {}
    done = store.get(ticket.ticket_id, "a@x.io")  # ... and still readable by id
    assert done is not None and done.status == "succeeded"
    assert store.result(ticket.ticket_id) is not None
    with pytest.raises(KeyError):
        submitted_day("../../etc/passwd")


def test_an_interrupted_running_ticket_runs_again(tmp_path: Path, wh: DuckDBWarehouse) -> None:
    store = TicketStore(tmp_path / "tickets")
    ticket = store.submit("a@x.io", "activity_counts", {}, 65536)
    ticket.status, ticket.progress = "running", 10.0  # the owner died here
    store.save(ticket)
    executor = TicketExecutor(store, wh)
    again = executor.next_ticket()
    assert again is not None and again.ticket_id == ticket.ticket_id
    executor.execute(again)
    assert store.get(ticket.ticket_id).status == "succeeded"  # type: ignore[union-attr]
    assert executor.next_ticket() is None


def test_a_marker_left_by_a_crash_after_the_final_save_is_dropped(tmp_path: Path) -> None:
    store = TicketStore(tmp_path / "tickets")
    ticket = store.submit("a@x.io", "activity_counts", {}, 65536)
    ticket.status = "succeeded"
    store.save(ticket)  # saved final, crashed before the marker went
    assert store.pending() == {}
    assert list((tmp_path / "tickets" / "pending").iterdir()) == []  # empty folders go too


def test_finished_tickets_expire_pending_ones_stay(tmp_path: Path, wh: DuckDBWarehouse) -> None:
    store = TicketStore(tmp_path / "tickets")
    done = store.submit("a@x.io", "activity_counts", {}, 65536)
    waiting = store.submit("b@x.io", "activity_counts", {}, 65536)
    TicketExecutor(store, wh).execute(done)
    today = dt.datetime.now(dt.UTC).date()
    assert store.expire(7, today + dt.timedelta(days=7)) == 0  # kept for 7 days
    assert store.expire(0, today + dt.timedelta(days=365)) == 0  # 0 keeps them
    assert store.expire(7, today + dt.timedelta(days=8)) == 2  # the ticket and its result
    assert store.get(done.ticket_id) is None and store.result(done.ticket_id) is None
    assert store.get(waiting.ticket_id) is not None
    assert [t.ticket_id for t in store.unfinished()] == [waiting.ticket_id]


def test_tickets_of_the_flat_layout_are_moved_once(tmp_path: Path) -> None:
    root = tmp_path / "tickets"
    store = TicketStore(root)
    queued = store.submit("a@x.io", "activity_counts", {}, 65536)
    finished = store.submit("a@x.io", "activity_counts", {}, 65536)
    finished.status = "succeeded"
    store.save(finished)
    for t in (queued, finished):  # as the layout before day folders had them
        os.replace(store._path(t.ticket_id), root / f"{t.ticket_id}.json")
    for marker in (root / "pending").rglob("*"):
        if marker.is_file():
            marker.unlink()
    assert store.migrate() == 2
    assert [t.ticket_id for t in store.unfinished()] == [queued.ticket_id]
    assert store.get(finished.ticket_id).status == "succeeded"  # type: ignore[union-attr]
    assert store.migrate() == 0


def test_customers_take_turns(tmp_path: Path, wh: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three heavy tickets of one customer delay another's trivial one by at most the heavy
    query already running (FIFO would make it wait for all three)."""
    monkeypatch.setitem(templates.TEMPLATES, "heavy", heavy_template())
    store = TicketStore(tmp_path / "tickets")
    heavy = [store.submit("hog@x.io", "heavy", {}, 65536) for _ in range(3)]
    light = store.submit("light@x.io", "activity_counts", {}, 65536)
    executor = TicketExecutor(store, wh, timeout_s=0.5, poll=0.01)
    started = time.monotonic()
    executor.start()
    try:
        deadline = time.monotonic() + 30
        while store.get(light.ticket_id).status != "succeeded":  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        waited = time.monotonic() - started
    finally:
        executor.stop.set()
        executor.join()
    light_start = store.get(light.ticket_id).started_at  # type: ignore[union-attr]
    before = [t for t in heavy if (store.get(t.ticket_id).started_at or "~") < (light_start or "")]  # type: ignore[union-attr]
    assert len(before) <= 1
    assert waited < 0.5 + 5  # one heavy query's timeout, plus a loaded machine's slack


def test_queued_tickets_per_customer_are_capped(tmp_path: Path, wh: DuckDBWarehouse) -> None:
    store = TicketStore(tmp_path / "tickets", per_customer=3)
    mine = [store.submit("a@x.io", "activity_counts", {}, 65536) for _ in range(3)]
    with pytest.raises(TooManyTickets, match="3 queued or running"):
        store.submit("a@x.io", "activity_counts", {}, 65536)
    assert len(list((tmp_path / "tickets").glob("*/*.json"))) == 3  # the refused one wrote nothing
    store.submit("b@x.io", "activity_counts", {}, 65536)  # another customer is not affected
    TicketExecutor(store, wh).execute(mine[0])
    store.submit("a@x.io", "activity_counts", {}, 65536)  # one finished: room for one more


def test_the_cap_is_a_clear_tool_error(_home: Path) -> None:
    holder = QueueReader(str(_home / "queue"))  # no owner can start: tickets stay queued
    try:

        async def go() -> None:
            async with stdio_session(_home, "cap@x.io", ACTIVITYBI_TICKETS_PER_CUSTOMER="2") as s:
                for _ in range(2):
                    ok = await s.call_tool("submit_query", {"template": "activity_counts"})
                    assert not ok.is_error and orjson.loads(text(ok))["status"] == "queued"
                refused = await s.call_tool("submit_query", {"template": "activity_counts"})
                assert refused.is_error and "too many queries waiting" in text(refused)

        anyio.run(go)
    finally:
        holder.close()


def test_the_owner_bounds_duckdb_memory_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIVITYBI_QUERY_MEMORY_LIMIT", "256MB")
    monkeypatch.setenv("ACTIVITYBI_QUERY_THREADS", "1")
    w = DuckDBWarehouse.open_default()
    try:
        limit, threads = w.execute("SELECT current_setting('memory_limit'), current_setting('threads')").rows[
            0
        ]
    finally:
        w.close()
    assert limit in ("244.1 MiB", "256.0 MiB", "256MB") and int(threads) == 1
