"""Deduplication per customer and the precedence rule, on the DuckDB load (issues 12, 16)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from activitybi import Queue
from activitybi.capture import facts
from activitybi.events import StreamRow, from_event
from activitybi.owner.uploader import Uploader
from activitybi.warehouse.duckdb import DuckDBWarehouse

T0 = dt.datetime(2026, 11, 2, 9, 30)


@pytest.fixture
def wh(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    w = DuckDBWarehouse(tmp_path / "w.duckdb")
    w.init()
    yield w
    w.close()


def model_call(source: facts.Source, customer: str = "alice") -> StreamRow:
    """One model call as each source reports it: a transcript's placeholder token counts."""
    by_source: dict[str, dict[str, Any]] = {
        "otel": {"input_tokens": 1200, "output_tokens": 340, "cost_usd": 0.0123},
        "hook": {"input_tokens": 1100, "output_tokens": 300},
        "transcript": {"input_tokens": 3, "output_tokens": 1},
    }
    figures = by_source[source]
    event = facts.called_model(
        customer=customer,
        source=source,
        ts=T0,
        request_id="req_011CVx",
        session_id="sess-1",
        model="claude-sonnet-4-5",
        cache_read_input_tokens=5000,
        **figures,
    )
    return from_event(event)


def stored(wh: DuckDBWarehouse) -> list[tuple[str, str, dict[str, object]]]:
    rows = wh.execute("SELECT customer, _source, feature_json FROM claude_stream ORDER BY 1, 2").rows
    return [(r[0], r[1], orjson.loads(r[2])) for r in rows]


def test_an_id_is_unique_per_customer_only(wh: DuckDBWarehouse) -> None:
    """Bob logs an id first; Alice's event with the same id still lands, and neither
    replaces the other (issue 16 item 3)."""
    bob = StreamRow("conv-42-step-1", T0, "asked_question", customer="bob", link="https://b")
    alice = StreamRow("conv-42-step-1", T0, "asked_question", customer="alice", link="https://a")
    anon = StreamRow("conv-42-step-1", T0, "asked_question", anonymous_customer_id="v1")
    assert wh.load([bob], "q", None) == 1
    assert wh.load([alice, anon], "q", None) == 2
    assert wh.load([alice, bob, anon], "q", None) == 0
    rows = wh.execute("SELECT customer, anonymous_customer_id, link FROM claude_stream ORDER BY 3").rows
    assert rows == [("alice", None, "https://a"), ("bob", None, "https://b"), (None, "v1", None)]


@pytest.mark.parametrize("batched", [False, True])
def test_otel_figures_win_in_every_arrival_order(wh: DuckDBWarehouse, batched: bool) -> None:
    """The same call from three sources, in every order, one load each or one batch: one
    row with OpenTelemetry's figures; loading any of them again changes nothing."""
    for order in itertools.permutations(("transcript", "hook", "otel")):
        wh.execute("DELETE FROM claude_stream")
        rows = [model_call(s) for s in order]  # type: ignore[arg-type]
        if batched:
            wh.load(rows, "q", None)
        else:
            for r in rows:
                wh.load([r], "q", None)
        before = wh.execute("SELECT * FROM claude_stream").rows
        assert wh.load(rows, "q", None) == 0, order
        assert wh.execute("SELECT * FROM claude_stream").rows == before
        ((customer, source, features),) = stored(wh)
        assert (customer, source) == ("alice", "otel"), order
        assert features["input_tokens"] == 1200 and features["cost_usd"] == 0.0123


def test_precedence_through_the_queue_and_uploader(wh: DuckDBWarehouse, tmp_path: Path) -> None:
    """End to end: the transcript's row arrives in one upload, OTel's in a later one, and
    the same request from another customer stays apart."""
    qdir = tmp_path / "queue"
    up = Uploader(qdir, wh, quarantine_file=tmp_path / "quarantine.jsonl")
    with Queue(str(qdir)) as q:
        q.append(model_call("transcript").columns() | {"ts": "2026-11-02T09:30:00Z"})
        q.append(model_call("transcript", "bob").columns() | {"ts": "2026-11-02T09:30:00Z"})
    up.drain()
    with Queue(str(qdir)) as q:
        q.append(model_call("otel").columns() | {"ts": "2026-11-02T09:30:00Z"})
    up.drain()
    up.close()
    got = [(c, s, f["input_tokens"]) for c, s, f in stored(wh)]
    assert got == [("alice", "otel", 1200), ("bob", "transcript", 3)]


def test_migration_keeps_rows_of_the_old_key(tmp_path: Path) -> None:
    """A warehouse of the previous version (activity_id the only key) keeps its rows and
    takes the per-customer key; running init again changes nothing."""
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for name in ("001_stream.sql", "002_memory.sql"):
        con.execute((Path(__file__).parents[1] / "python/activitybi/ddl/duckdb" / name).read_text())
    con.execute(
        "INSERT INTO claude_stream (activity_id, ts, customer, activity) "
        "VALUES ('x', now(), 'bob', 'did_thing')"
    )
    con.execute("INSERT INTO insight_atoms VALUES ('a1', 'bob', 'subject', 'metric', '1', NULL, now())")
    con.close()
    w = DuckDBWarehouse(path)
    w.init()
    w.init()
    assert w.execute("SELECT activity_id, customer, _customer_key FROM claude_stream").rows == [
        ("x", "bob", "bob")
    ]
    assert w.load([StreamRow("x", T0, "did_thing", customer="alice")], "q", None) == 1
    atom = {"subject": "s", "metric": "m", "value": 2}
    rows = [StreamRow("a1", T0, "learned_insight", customer=c, feature_json=atom) for c in ("alice", "bob")]
    w.load(rows, "q", None)
    assert w.execute("SELECT customer_id, subject FROM insight_atoms ORDER BY 1").rows == [
        ("alice", "s"),
        ("bob", "subject"),
    ]
    w.close()
