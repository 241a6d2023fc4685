"""The Snowflake warehouse against fakesnow running as a server (in this process, on a thread),
talked to by the REAL snowflake-connector-python over HTTP. Nothing of the connector is mocked.

What fakesnow cannot run is said where it matters: row access policies, resource monitors,
warehouses, streams, tasks and Snowflake Scripting (004_governance.sql: checked as text,
and the task's MERGE is run against claude_stream in place of the stream), QUERY_TAG and
statement timeouts (accepted and ignored), MERGE inside a transaction (hence the loader's
INSERT ... WHERE NOT EXISTS).

Every SafeSQL template, `dataset` included (and every case of the conformance corpus),
runs on the same events in a DuckDB file and in fakesnow and must give the same rows; the
few dataset shapes fakesnow cannot run are strict xfails naming the reason (FAKESNOW_*).
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib
import itertools
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest

pytest.importorskip("fakesnow")
pytest.importorskip("snowflake.connector")
pytest.importorskip("uvicorn")

from snowflake.connector.errors import ProgrammingError

from activitybi.events import INSIGHT_ACTIVITY, StreamRow
from activitybi.warehouse import QueryStopped, TransientError, ddl_files
from activitybi.warehouse.snowflake import (
    EMULATOR_UNSUPPORTED,
    SnowflakeWarehouse,
    is_transient,
)

os.environ.setdefault("SNOWFLAKE_DISABLE_PLATFORM_DETECTION", "true")

# When the server is stopped under a running statement, the connector's cancel timer thread
# fails too and prints its error: expected here, not a test failure.
pytestmark = [
    pytest.mark.snowflake,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
    pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning"),
]

T0 = dt.datetime(2024, 5, 1, 10, 0, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FakeSnowServer:
    """fakesnow's ASGI app under uvicorn on a thread: stop() and start() again on the same
    port. Its data and sessions are module globals, so they survive a restart (like a
    Snowflake that was unreachable for a while)."""

    def __init__(self) -> None:
        # Imported here, not at collection: importing fakesnow.server replaces the
        # fakesnow.server() function with the module for everyone after.
        self.app = importlib.import_module("fakesnow.server").app
        self.port = _free_port()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fakesnow server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(15)
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSnowServer]:
    logger = logging.getLogger("fakesnow.server")
    level = logger.level
    logger.setLevel(logging.WARNING)
    srv = FakeSnowServer()
    srv.start()
    yield srv
    srv.stop()
    logger.setLevel(level)


@pytest.fixture
def live(server: FakeSnowServer) -> Iterator[FakeSnowServer]:
    """The server, started again after the test if the test stopped it."""
    if not server.running:
        server.start()
    yield server
    if not server.running:
        server.start()


def _kwargs(server: FakeSnowServer, database: str) -> dict[str, Any]:
    return {
        "user": "fake",
        "password": "snow",
        "account": "fakesnow",
        "host": "127.0.0.1",
        "port": server.port,
        "protocol": "http",
        "database": database,
        "schema": "ACTIVITYBI",
        "login_timeout": 3,
        "network_timeout": 1,
        "backoff_policy": lambda: itertools.repeat(0.05),
        "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
    }


@pytest.fixture
def wh(live: FakeSnowServer) -> Iterator[SnowflakeWarehouse]:
    """A warehouse on a database of its own, initialised."""
    w = SnowflakeWarehouse(_kwargs(live, f"T{uuid.uuid4().hex[:12].upper()}"), emulator=True)
    w.init()
    yield w
    w.close()


def row(aid: str, seconds: float = 0, *, base: dt.datetime = T0, **kw: Any) -> StreamRow:
    return StreamRow(
        activity_id=aid,
        ts=base + dt.timedelta(seconds=seconds),
        activity=kw.pop("activity", "asked_question"),
        customer=kw.pop("customer", "ana@example.com"),
        **kw,
    )


def count(wh: SnowflakeWarehouse, table: str) -> int:
    value = wh.execute(f"SELECT COUNT(*) FROM {table}").rows[0][0]
    return int(value)


def ids(wh: SnowflakeWarehouse) -> list[str]:
    return [r[0] for r in wh.execute("SELECT activity_id FROM claude_stream ORDER BY 1").rows]


# -- DDL -------------------------------------------------------------------------------------


def test_init_is_idempotent(live: FakeSnowServer) -> None:
    w = SnowflakeWarehouse(_kwargs(live, "INITTWICE"), emulator=True)
    try:
        names = w.init()
        first_skipped = list(w.skipped)
        assert (
            w.init()
            == names
            == [
                "001_stream.sql",
                "002_memory.sql",
                "003_queries.sql",
                "004_governance.sql",
                "005_drop_query_tickets.sql",
                "006_customer_key.sql",
            ]
        )
        assert w.skipped == first_skipped
        # Only governance and key statements were skipped, each for a kind fakesnow lacks.
        assert first_skipped and all(
            s.startswith(("004_governance.sql: ", "006_customer_key.sql: EXECUTE IMMEDIATE"))
            for s in first_skipped
        )
        kinds = " | ".join(first_skipped)
        for kind in (
            "CREATE ROW ACCESS POLICY",
            "ALTER ROW ACCESS POLICY",
            "EXECUTE IMMEDIATE",
            "CREATE RESOURCE MONITOR",
            "CREATE WAREHOUSE",
            "ALTER WAREHOUSE",
            "CREATE STREAM",
            "CREATE OR REPLACE TASK",
            "ALTER TASK",
        ):
            assert kind in kinds
        tables = {
            r[0].lower()
            for view in ("tables", "views")
            for r in w.execute(
                f"SELECT table_name FROM information_schema.{view} WHERE table_schema = 'ACTIVITYBI'"
            ).rows
        }
        assert {
            "claude_stream",
            "claude_stream_enriched",
            "context_summary",
            "_activitybi_checkpoints",
            "_activitybi_landing",
            "insight_atoms",
            "context_cache",
            "artifacts",
            "query_audit",
            "activitybi_customer_access",
        } <= tables
        assert "query_tickets" not in tables  # never written: dropped (005)
        # The seed row mapping the init role to every customer is written once.
        assert count(w, "activitybi_customer_access") == 1
        columns = [
            r[0].lower()
            for r in w.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'CLAUDE_STREAM' ORDER BY ordinal_position"
            ).rows
        ]
        assert columns == [
            "activity_id",
            "ts",
            "customer",
            "activity",
            "anonymous_customer_id",
            "feature_json",
            "revenue_impact",
            "link",
            "_session_id",
            "_source",
            "_ingested_at",
        ]
    finally:
        w.close()


def _columns(sql: str) -> dict[str, list[str]]:
    """{table: [column, ...]} of the CREATE TABLE statements of a DDL text."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\)", sql, re.S):
        cols = []
        for line in m.group(2).splitlines():
            line = line.split("--")[0].strip()
            if line and not line.startswith("CONSTRAINT "):
                cols.append(line.split()[0].strip('"').lower())
        out[m.group(1).lower()] = cols
    return out


def test_snowflake_tables_mirror_duckdb() -> None:
    duck = _columns("\n".join(t for _, t in ddl_files("duckdb")))
    snow = _columns("\n".join(t for _, t in ddl_files("snowflake")))
    for table, cols in duck.items():
        assert snow.get(table) == cols, table
    text = "\n".join(t for _, t in ddl_files("snowflake"))
    assert "JSON" not in re.sub(r"TYPE = JSON|--.*", "", text)  # VARIANT, not JSON
    assert re.search(r"CLUSTER BY \(activity, ts\)", text)
    assert re.search(r"CLUSTER BY \(subject, metric, ts\)", text)


def test_governance_sql_text() -> None:
    """fakesnow cannot run row access policies, resource monitors, tasks, streams or
    Snowflake Scripting (it fails to parse them), so 004 is checked as text here."""
    text = dict(ddl_files("snowflake"))["004_governance.sql"]
    sql = re.sub(r"--[^\n]*", "", text)  # the statements, not the comments
    # A row access policy bound to the session's principal through the mapping table ...
    assert re.search(
        r"CREATE ROW ACCESS POLICY IF NOT EXISTS activitybi_customer_policy\s+"
        r"AS \(row_customer VARCHAR\) RETURNS BOOLEAN ->",
        sql,
    )
    assert "CURRENT_USER()" in sql and "CURRENT_ROLE()" in sql
    assert "activitybi_customer_access" in sql
    # ... attached (guarded: only when none is attached) to every table holding a customer.
    customer_tables = {
        "claude_stream": "customer",
        "insight_atoms": "customer_id",
        "context_cache": "customer_id",
        "artifacts": "customer_id",
        "query_audit": "customer_id",
    }
    for table, column in customer_tables.items():
        guard = re.search(
            rf"REF_ENTITY_NAME => '{table}'.*?IF \(n = 0\) THEN\s+"
            rf"ALTER TABLE {table} ADD ROW ACCESS POLICY activitybi_customer_policy"
            rf" ON \({column}\);",
            sql,
            re.S,
        )
        assert guard, table
    # Every table of 001-003 with a customer column is in that list.
    for table, cols in _columns("\n".join(t for _, t in ddl_files("snowflake"))).items():
        if {"customer", "customer_id"} & set(cols) and table != "activitybi_customer_access":
            assert table in customer_tables, table
    assert re.search(r"ALTER TABLE _activitybi_landing ADD ROW ACCESS POLICY", sql)
    # A resource monitor with a credit quota, on the warehouse the task runs on.
    monitor = re.search(r"CREATE RESOURCE MONITOR IF NOT EXISTS activitybi_monitor WITH(.*?);", sql, re.S)
    assert monitor and re.search(r"CREDIT_QUOTA = \d+", monitor.group(1))
    assert re.search(r"ON 100 PERCENT DO SUSPEND\b", monitor.group(1))
    assert "RESOURCE_MONITOR = activitybi_monitor" in sql
    # A task refreshing context_cache every 5 minutes with a MERGE.
    task = re.search(r"CREATE OR REPLACE TASK activitybi_refresh_context_cache(.*?);", sql, re.S)
    assert task
    assert "SCHEDULE = '5 MINUTE'" in task.group(1)
    assert "WAREHOUSE = activitybi_wh" in task.group(1)
    assert re.search(r"AS\s+MERGE INTO context_cache", task.group(1))
    assert "ALTER TASK activitybi_refresh_context_cache RESUME" in sql
    # Idempotent: every CREATE is IF NOT EXISTS or OR REPLACE.
    for create in re.findall(r"^CREATE [^\n]*", sql, re.M):
        assert "IF NOT EXISTS" in create or "OR REPLACE" in create, create


def test_ddl_splits_as_the_connector_splits_it() -> None:
    """execute_string splits on ';' outside quotes and $$ blocks: the Scripting block that
    guards the ALTERs must stay one statement."""
    from snowflake.connector.util_text import split_statements

    text = dict(ddl_files("snowflake"))["004_governance.sql"]
    statements = [s for s, _ in split_statements(StringIO(text)) if s.strip()]
    blocks = [s for s in statements if "EXECUTE IMMEDIATE" in s]
    assert len(blocks) == 1 and blocks[0].rstrip().endswith("$$;")
    assert blocks[0].count("ADD ROW ACCESS POLICY") == 6  # query_tickets dropped (005)


def test_emulator_skip_list_matches_only_unsupported_kinds() -> None:
    def skipped(sql: str) -> bool:
        return any(p.match(sql) for p in EMULATOR_UNSUPPORTED)

    assert skipped("CREATE ROW ACCESS POLICY IF NOT EXISTS p AS (c VARCHAR) RETURNS BOOLEAN -> TRUE")
    assert skipped("CREATE OR REPLACE TASK t SCHEDULE = '5 MINUTE' AS SELECT 1")
    assert skipped("EXECUTE IMMEDIATE $$ BEGIN RETURN 1; END; $$")
    assert not skipped("CREATE TABLE IF NOT EXISTS claude_stream (activity_id VARCHAR)")
    assert not skipped("CREATE OR REPLACE VIEW context_summary AS SELECT 1")
    assert not skipped("INSERT INTO activitybi_customer_access SELECT 1")


# -- loads -----------------------------------------------------------------------------------


def test_load_inserts_once_and_stores_the_checkpoint(wh: SnowflakeWarehouse) -> None:
    rows = [
        row(
            "01A",
            0.123456,
            feature_json={"tool": "search", "n": [1, 2]},
            revenue_impact=1.5,
            link="https://x",
            _session_id="s1",
            _source="mcp",
        ),
        row("01B", 1, customer=None, anonymous_customer_id="anon-1"),
        row("01A", 0.123456, feature_json={"tool": "search", "n": [1, 2]}),  # again, same batch
        row("01C", 2),
    ]
    assert wh.checkpoint("q1") is None
    assert wh.load(rows, "q1", {"segment": 1, "offset": 300}) == 3
    assert wh.checkpoint("q1") == {"segment": 1, "offset": 300}
    assert ids(wh) == ["01A", "01B", "01C"]
    # The same rows again (a crash after COMMIT, before the queue was acknowledged).
    assert wh.load(rows, "q1", {"segment": 1, "offset": 300}) == 0
    assert wh.load([*rows[:2], row("01D", 3)], "q1", {"segment": 1, "offset": 400}) == 1
    assert wh.checkpoint("q1") == {"segment": 1, "offset": 400}
    assert ids(wh) == ["01A", "01B", "01C", "01D"]
    # Values round-trip; absent values are SQL NULL, not JSON null.
    r = wh.execute(
        "SELECT ts, customer, activity, anonymous_customer_id, feature_json, revenue_impact,"
        " link, _session_id, _source, feature_json IS NULL, _ingested_at IS NOT NULL"
        " FROM claude_stream WHERE activity_id = ?",
        ("01A",),
    )
    assert r.columns[:3] == ["ts", "customer", "activity"]
    ts, customer, activity, anon, features, revenue, link, sid, source, _, ingested = r.rows[0]
    assert ts == T0 + dt.timedelta(seconds=0.123456)
    assert (customer, activity, anon) == ("ana@example.com", "asked_question", None)
    assert json.loads(features) == {"tool": "search", "n": [1, 2]}
    assert (revenue, link, sid, source, ingested) == (1.5, "https://x", "s1", "mcp", True)
    r = wh.execute(
        "SELECT customer, anonymous_customer_id, feature_json IS NULL, revenue_impact"
        " FROM claude_stream WHERE activity_id = '01B'"
    )
    assert r.rows == [(None, "anon-1", True, None)]
    # The landing table and its stage are left empty.
    assert count(wh, "_activitybi_landing") == 0
    assert wh.execute("LIST @%_activitybi_landing").rows == []


def test_checkpoints_are_per_queue_and_an_empty_batch_moves_one(wh: SnowflakeWarehouse) -> None:
    assert wh.load([row("01A")], "q1", {"offset": 1}) == 1
    assert wh.load([row("01B")], "q1", None) == 1  # rows only, checkpoint left as it was
    assert wh.checkpoint("q1") == {"offset": 1}
    assert wh.load([], "q1", None) == 0
    assert wh.load([], "q2", {"offset": 7}) == 0  # every line of it quarantined, say
    assert wh.load([], "q1", {"offset": 2}) == 0
    assert wh.checkpoint("q1") == {"offset": 2}
    assert wh.checkpoint("q2") == {"offset": 7}
    assert count(wh, "_activitybi_checkpoints") == 2


def test_checkpoint_is_atomic_with_the_rows(wh: SnowflakeWarehouse) -> None:
    assert wh.load([row("01A")], "q1", {"offset": 1}) == 1

    def fail_after(step: str) -> Any:
        def hook(name: str) -> None:
            if name == step:
                raise RuntimeError(f"crash after {step}")

        return hook

    batch = [row("01B"), row("01C", activity=INSIGHT_ACTIVITY, feature_json=_insight())]
    for step in ("stream", "atoms", "checkpoint_insert", "landing_delete"):
        wh._after_step = fail_after(step)
        with pytest.raises(RuntimeError, match=f"crash after {step}"):
            wh.load(batch, "q1", {"offset": 2})
        wh._after_step = None
        # Rolled back: neither the rows nor the checkpoint moved.
        assert ids(wh) == ["01A"]
        assert count(wh, "insight_atoms") == 0
        assert wh.checkpoint("q1") == {"offset": 1}
    assert wh.load(batch, "q1", {"offset": 2}) == 2
    assert ids(wh) == ["01A", "01B", "01C"] and count(wh, "insight_atoms") == 1
    assert wh.checkpoint("q1") == {"offset": 2}
    assert count(wh, "_activitybi_landing") == 0


def _insight(**kw: Any) -> dict[str, Any]:
    return {
        "subject": "revenue",
        "metric": "mrr",
        "value": 1200,
        "provenance_query_hash": "h1",
        **kw,
    }


def test_insight_atoms_land(wh: SnowflakeWarehouse) -> None:
    rows = [
        row("01A", 0, activity=INSIGHT_ACTIVITY, feature_json=_insight()),
        row(
            "01B",
            1,
            activity=INSIGHT_ACTIVITY,
            customer=None,
            anonymous_customer_id="anon-1",
            feature_json=_insight(subject="usage", metric="dau", value={"p50": 3}),
        ),
        # Without a subject: loaded as an event, not as an atom (insight_atoms needs one).
        row("01C", 2, activity=INSIGHT_ACTIVITY, feature_json={"metric": "x", "value": 1}),
        row("01D", 3),
    ]
    assert wh.load(rows, "q1", {"offset": 4}) == 4
    assert wh.load(rows, "q1", {"offset": 4}) == 0
    r = wh.execute(
        "SELECT atom_id, customer_id, subject, metric, value, provenance_query_hash, ts"
        " FROM insight_atoms ORDER BY atom_id"
    )
    assert r.columns == [
        "atom_id",
        "customer_id",
        "subject",
        "metric",
        "value",
        "provenance_query_hash",
        "ts",
    ]
    assert [(*x[:4], json.loads(x[4]), *x[5:]) for x in r.rows] == [
        ("01A", "ana@example.com", "revenue", "mrr", 1200, "h1", T0),
        ("01B", "anon-1", "usage", "dau", {"p50": 3}, "h1", T0 + dt.timedelta(seconds=1)),
    ]


def test_enriched_view_with_ties_and_a_late_arrival(wh: SnowflakeWarehouse) -> None:
    """Hand-checked. ana: asked_question at 10:00:00 (01A), twice at 10:00:05 (01C and
    01B: a tie, broken by activity_id, so 01B comes first); called_tool at 10:00:02 is
    another partition, and so is the anonymous visitor's asked_question."""
    wh.load(
        [
            row("01A", 0),
            row("01C", 5),
            row("01B", 5),
            row("01D", 2, activity="called_tool"),
            row("01E", 1, customer=None, anonymous_customer_id="anon-1"),
        ],
        "q1",
        {"offset": 5},
    )

    def view() -> dict[str, tuple[int, str | None]]:
        # ::VARCHAR: fakesnow returns a NULL TIMESTAMP_NTZ as 1970-01-01.
        r = wh.execute(
            "SELECT activity_id, activity_occurrence, activity_repeated_at::VARCHAR"
            " FROM claude_stream_enriched"
        )
        return {a: (int(o), rep[:19] if rep else None) for a, o, rep in r.rows}

    assert view() == {
        "01A": (1, "2024-05-01 10:00:05"),
        "01B": (2, "2024-05-01 10:00:05"),
        "01C": (3, None),
        "01D": (1, None),
        "01E": (1, None),
    }
    # A late arrival (queued offline, loaded later) that happened before all of them.
    wh.load([row("01Z", -1)], "q1", {"offset": 6})
    assert view() == {
        "01Z": (1, "2024-05-01 10:00:00"),
        "01A": (2, "2024-05-01 10:00:05"),
        "01B": (3, "2024-05-01 10:00:05"),
        "01C": (4, None),
        "01D": (1, None),
        "01E": (1, None),
    }


def _context_rows() -> list[StreamRow]:
    """Of the last hour (the summary covers 30 days), plus one too old to count."""
    tool = {"tool": "search", "latency_ms": 10, "outcome": "ok"}
    hour_ago = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=1)
    return [
        row("01A", 0, base=hour_ago, _session_id="s1"),
        row("01B", 1, base=hour_ago, _session_id="s1"),
        row("01C", 2, base=hour_ago, activity="called_tool", feature_json=tool, _session_id="s2"),
        row("01D", 3, base=hour_ago, customer="bo@example.com"),
        row("01E", 4, base=hour_ago, activity=INSIGHT_ACTIVITY, feature_json=_insight(value=100)),
        row("01F", 5, base=hour_ago, activity=INSIGHT_ACTIVITY, feature_json=_insight(value=120)),
        row("01G", 6, base=hour_ago, customer=None, anonymous_customer_id="anon-1"),
        row("01H", 0, base=hour_ago - dt.timedelta(days=31)),
    ]


def _check_contexts(wh: SnowflakeWarehouse, version: int) -> None:
    """The JSON of DuckDB's refresh_context.sql, plus the latest insight per subject/metric.
    (fakesnow ignores TO_VARCHAR's format, so only the date of a timestamp is compared.)"""
    r = wh.execute("SELECT customer_id, context, version FROM context_cache ORDER BY 1")
    ctx = {c: json.loads(v) for c, v, _ in r.rows}
    assert {n for _, _, n in r.rows} == {version}
    assert set(ctx) == {"ana@example.com", "bo@example.com", "anon-1"}
    ana = ctx["ana@example.com"]
    assert (ana["window_days"], ana["events"], ana["sessions"]) == (30, 5, 2)
    assert ana["last_seen"][:10] == (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1, seconds=-5)).strftime(
        "%Y-%m-%d"
    )
    assert [(a["activity"], a["count"]) for a in ana["top_activities"]] == [
        ("asked_question", 2),
        (INSIGHT_ACTIVITY, 2),
        ("called_tool", 1),
    ]
    assert ana["tools"] == [{"tool": "search", "calls": 1, "p95_ms": 10, "errors": 0}]
    assert [(i["subject"], i["metric"], i["value"]) for i in ana["insights"]] == [("revenue", "mrr", 120)]
    assert ctx["bo@example.com"]["events"] == 1 and ctx["bo@example.com"]["insights"] == []
    assert ctx["anon-1"]["events"] == 1


def test_context_task_merge_runs_on_the_emulator(wh: SnowflakeWarehouse) -> None:
    """The task's MERGE, run by hand: fakesnow has no streams or tasks, so claude_stream
    stands in for the stream claude_stream_changes (every customer counts as changed)."""
    text = dict(ddl_files("snowflake"))["004_governance.sql"]
    task = re.search(r"CREATE OR REPLACE TASK activitybi_refresh_context_cache.*?;", text, re.S)
    assert task
    merge = task.group(0)[task.group(0).index("MERGE INTO") :].rstrip(";")
    assert "FROM claude_stream_changes" in merge
    merge = merge.replace("FROM claude_stream_changes", "FROM claude_stream")
    wh.load(_context_rows(), "q1", {"offset": 7})
    wh.execute(merge)
    _check_contexts(wh, 1)
    wh.execute(merge)
    _check_contexts(wh, 2)


def test_refresh_context(wh: SnowflakeWarehouse) -> None:
    """On the emulator refresh_context runs the task's MERGE for every customer (on
    Snowflake it does nothing: the task does it)."""
    wh.load(_context_rows(), "q1", {"offset": 7})
    wh.refresh_context()
    _check_contexts(wh, 1)
    wh.refresh_context()
    _check_contexts(wh, 2)


# -- failures --------------------------------------------------------------------------------


def test_server_down_load_fails_fast_and_catches_up(wh: SnowflakeWarehouse, live: FakeSnowServer) -> None:
    assert wh.load([row("01A")], "q1", {"offset": 1}) == 1
    batch = [row("01B", 1), row("01C", 2, activity=INSIGHT_ACTIVITY, feature_json=_insight())]
    live.stop()
    t = time.monotonic()
    with pytest.raises(TransientError):
        wh.load(batch, "q1", {"offset": 3})
    assert time.monotonic() - t < 5
    # Still down: a new connection is refused as fast.
    t = time.monotonic()
    with pytest.raises(TransientError):
        wh.load(batch, "q1", {"offset": 3})
    assert time.monotonic() - t < 5
    live.start()
    assert ids(wh) == ["01A"] and wh.checkpoint("q1") == {"offset": 1}
    assert wh.load(batch, "q1", {"offset": 3}) == 2
    assert ids(wh) == ["01A", "01B", "01C"] and count(wh, "insight_atoms") == 1
    assert wh.checkpoint("q1") == {"offset": 3}


@pytest.mark.parametrize("step", ["put", "copy", "checkpoint_update", "stream", "atoms"])
def test_server_lost_mid_load_leaves_nothing_half_written(
    wh: SnowflakeWarehouse, live: FakeSnowServer, step: str
) -> None:
    """The server goes away between two statements of the load (after the PUT, after the
    COPY, or inside the transaction): TransientError within seconds; when it is back,
    nothing of the batch is visible, and the retry loads it exactly once."""
    assert wh.load([row("01A")], "q1", {"offset": 1}) == 1
    batch = [row("01B", 1), row("01C", 2, activity=INSIGHT_ACTIVITY, feature_json=_insight())]

    def stop(name: str) -> None:
        if name == step:
            live.stop()

    wh._after_step = stop
    t = time.monotonic()
    with pytest.raises(TransientError):
        wh.load(batch, "q1", {"offset": 3})
    assert time.monotonic() - t < 6
    wh._after_step = None
    live.start()
    # Another session (the query connection) sees nothing of the batch.
    assert ids(wh) == ["01A"] and count(wh, "insight_atoms") == 0
    assert wh.checkpoint("q1") == {"offset": 1}
    assert wh.load(batch, "q1", {"offset": 3}) == 2
    assert ids(wh) == ["01A", "01B", "01C"] and count(wh, "insight_atoms") == 1
    assert wh.checkpoint("q1") == {"offset": 3}
    assert count(wh, "_activitybi_landing") == 0


def test_sql_errors_are_permanent(wh: SnowflakeWarehouse) -> None:
    from snowflake.connector.errors import ProgrammingError

    with pytest.raises(ProgrammingError) as info:
        wh.execute("SELECT * FROM no_such_table")
    assert not isinstance(info.value, TransientError) and not is_transient(info.value)
    # The warehouse goes on working after it.
    assert wh.execute("SELECT ? + 1 AS n", (41,)).rows == [(42,)]


def test_is_transient_classification() -> None:
    from snowflake.connector import errors as e

    assert is_transient(e.OperationalError(msg="x", errno=250001))
    assert is_transient(e.OperationalError(msg="x", errno=250003))
    assert is_transient(e.ServiceUnavailableError())
    assert is_transient(e.HttpError(msg="401", errno=290401))
    assert is_transient(e.ProgrammingError(msg="lock", errno=625))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(e.ProgrammingError(msg="syntax", errno=1003, sqlstate="42000"))
    assert not is_transient(e.ProgrammingError(msg="missing", errno=2003, sqlstate="42S02"))
    assert not is_transient(e.IntegrityError(msg="x", errno=100072))
    bad_login = e.DatabaseError(msg="Incorrect username or password", errno=250001, sqlstate="08001")
    assert not is_transient(bad_login)
    assert not is_transient(ValueError("x"))


def test_unreachable_at_connect_is_transient(live: FakeSnowServer) -> None:
    kwargs = _kwargs(live, "NOWHERE")
    kwargs["port"] = _free_port()  # nobody listens there
    w = SnowflakeWarehouse(kwargs, emulator=True)
    t = time.monotonic()
    with pytest.raises(TransientError):
        w.checkpoint("q1")
    assert time.monotonic() - t < 5
    w.close()


# -- queries and configuration ------------------------------------------------------------


def test_execute_binds_parameters(wh: SnowflakeWarehouse) -> None:
    wh.load([row("01A"), row("01B", customer="bo@example.com")], "q1", {"offset": 2})
    r = wh.execute(
        "SELECT activity_id, customer FROM claude_stream WHERE customer = ? ORDER BY 1",
        ("bo@example.com",),
        query_tag="cdesk_" + str(uuid.uuid4()),
    )
    assert r.columns == ["activity_id", "customer"] and r.rows == [("01B", "bo@example.com")]
    hostile = "x' OR '1'='1"
    assert wh.execute("SELECT COUNT(*) FROM claude_stream WHERE customer = ?", (hostile,)).rows == [(0,)]
    with pytest.raises(TypeError):
        wh.execute("SELECT 1", {"a": 1})


def test_run_query(wh: SnowflakeWarehouse, live: FakeSnowServer) -> None:
    """Submitted asynchronously and polled. fakesnow runs an async query to the end before
    it answers, so a query can't be stopped midway here: the timeout and cancellation of a
    running query (SYSTEM$CANCEL_QUERY, STATEMENT_TIMEOUT_IN_SECONDS) are Snowflake-only."""
    from snowflake.connector.errors import ProgrammingError

    wh.load([row("01A"), row("01B", customer="bo@example.com")], "q1", {"offset": 2})
    seen: list[float] = []

    def run(sql: str, params: tuple[Any, ...] = (), cancelled: bool = False) -> Any:
        return wh.run_query(
            sql,
            params,
            timeout_s=5,
            query_tag="cdesk_" + str(uuid.uuid4()),
            cancelled=lambda: cancelled,
            progress=seen.append,
        )

    r = run("SELECT activity_id FROM claude_stream WHERE customer = ?", ("bo@example.com",))
    assert (r.columns, r.rows) == (["activity_id"], [("01B",)])
    with pytest.raises(QueryStopped) as stopped:
        run("SELECT 1", cancelled=True)
    assert stopped.value.reason == "cancelled"
    with pytest.raises(ProgrammingError):
        run("SELECT * FROM no_such_table")
    live.stop()
    t = time.monotonic()
    with pytest.raises(TransientError):
        run("SELECT 1")
    assert time.monotonic() - t < 5
    live.start()
    assert run("SELECT COUNT(*) AS n FROM claude_stream").rows == [(2,)]


def test_from_env(live: FakeSnowServer) -> None:
    env = {
        "SNOWFLAKE_ACCOUNT": "fakesnow",
        "SNOWFLAKE_USER": "fake",
        "SNOWFLAKE_PASSWORD": "snow",
        "SNOWFLAKE_ROLE": "LOADER",
        "SNOWFLAKE_WAREHOUSE": "ACTIVITYBI_WH",
        "SNOWFLAKE_DATABASE": "ENVDB",
        "SNOWFLAKE_SCHEMA": "ACTIVITYBI",
        "SNOWFLAKE_HOST": "127.0.0.1",
        "SNOWFLAKE_PORT": str(live.port),
        "SNOWFLAKE_PROTOCOL": "http",
        "SNOWFLAKE_LOGIN_TIMEOUT": "3",
        "SNOWFLAKE_NETWORK_TIMEOUT": "5",
        "ACTIVITYBI_SNOWFLAKE_EMULATOR": "1",
    }
    w = SnowflakeWarehouse.from_env(env)
    assert w.kind == "snowflake" and w.emulator
    assert w._kwargs["port"] == live.port and w._kwargs["role"] == "LOADER"
    assert "snow" not in repr(w)
    try:
        w.init()
        assert w.load([row("01A")], "q1", {"offset": 1}) == 1
        assert w.checkpoint("q1") == {"offset": 1}
    finally:
        w.close()

    keypair = {k: v for k, v in env.items() if k != "SNOWFLAKE_PASSWORD"}
    keypair["SNOWFLAKE_PRIVATE_KEY_PATH"] = "~/keys/rsa_key.p8"
    keypair["SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"] = "pw"
    kw = SnowflakeWarehouse.from_env(keypair)._kwargs
    assert kw["authenticator"] == "SNOWFLAKE_JWT" and kw["private_key_file"].endswith("keys/rsa_key.p8")
    assert kw["private_key_file_pwd"] == "pw" and "password" not in kw
    for missing in ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_DATABASE"):
        with pytest.raises(ValueError, match=missing):
            SnowflakeWarehouse.from_env({k: v for k, v in env.items() if k != missing})
    no_secret = {k: v for k, v in env.items() if k != "SNOWFLAKE_PASSWORD"}
    with pytest.raises(ValueError, match="PRIVATE_KEY_PATH"):
        SnowflakeWarehouse.from_env(no_secret)


def test_connector_is_imported_lazily() -> None:
    code = (
        "import sys, activitybi.warehouse, activitybi.warehouse.snowflake\n"
        "import activitybi.warehouse.snowpipe\n"
        "assert 'snowflake.connector' not in sys.modules, 'imported eagerly'\n"
        "assert 'snowflake.ingest' not in sys.modules, 'imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- snowpipe-streaming (optional path) ---------------------------------------------------
# The SDK cannot run offline (it talks to Snowflake's ingest service from its Rust core), so
# the wrapper is driven by a fake of the SDK's offset-token protocol: appends are pending
# until the "server" commits them in batches with the last token of the batch; reopening a
# channel supersedes the old handle (CLOSED_CHANNEL_ERROR on it); the committed token is
# what a new handle reads.


class _Code:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeIngestError(Exception):
    def __init__(self, code: str, http: int) -> None:
        super().__init__(f"{code} ({http})")
        self.error_code = _Code(code)
        self.http_status_code = http


class FakeIngestService:
    """What Snowflake keeps: the rows and the last committed token of each channel."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.committed: dict[str, str | None] = {}
        self.generation: dict[str, int] = {}
        self.down = False


class FakeChannel:
    def __init__(self, service: FakeIngestService, name: str) -> None:
        self.service, self.name = service, name
        self.gen = service.generation[name]
        self.pending: list[tuple[list[dict[str, Any]], str | None]] = []

    def _check(self) -> None:
        if self.service.down:
            raise FakeIngestError("HTTP_RETRYABLE_CLIENT_ERROR", 503)
        if self.service.generation[self.name] != self.gen:
            raise FakeIngestError("CLOSED_CHANNEL_ERROR", 409)

    def append_rows(
        self,
        rows: list[dict[str, Any]],
        start_offset_token: str | None = None,
        end_offset_token: str | None = None,
    ) -> None:
        self._check()
        self.pending.append((list(rows), end_offset_token))

    def commit(self) -> None:
        """The service commits everything pending at once: the token jumps to the last."""
        for rows, token in self.pending:
            self.service.rows.extend(rows)
            self.service.committed[self.name] = token
        self.pending.clear()

    def get_latest_committed_offset_token(self) -> str | None:
        self._check()
        return self.service.committed.get(self.name)

    def wait_for_commit(self, token_checker: Any, timeout_seconds: float | None = None) -> None:
        self._check()
        self.commit()
        if not token_checker(self.service.committed.get(self.name)):
            raise TimeoutError("not committed in time")

    def close(self, drop: bool = False, wait_for_flush: bool = True) -> None:
        pass


class FakeIngestClient:
    def __init__(self, service: FakeIngestService) -> None:
        self.service = service
        self.channels: list[FakeChannel] = []

    def open_channel(self, name: str, offset_token: str | None = None) -> tuple[FakeChannel, Any]:
        if self.service.down:
            raise FakeIngestError("HTTP_RETRYABLE_CLIENT_ERROR", 503)
        self.service.generation[name] = self.service.generation.get(name, 0) + 1
        self.service.committed.setdefault(name, None)
        channel = FakeChannel(self.service, name)
        self.channels.append(channel)
        return channel, object()

    def close(self, wait_for_flush: bool = True, timeout_seconds: float | None = None) -> None:
        pass


def _opened(service: FakeIngestService) -> list[str]:
    return list(service.generation)


def test_snowpipe_offset_tokens_resume_exactly_once() -> None:
    from activitybi.warehouse.snowpipe import SnowpipeStreamer, channel_name, covers

    service = FakeIngestService()
    first = SnowpipeStreamer(FakeIngestClient(service))
    assert first.resume("q/1") is None  # a brand-new channel
    assert channel_name("q/1") == "activitybi_q_1" == _opened(service)[0]
    batch1, batch2 = [row("01A"), row("01B")], [row("01C"), row("01D")]
    first.append(batch1, "q/1", {"seg-1": 10})
    first.wait_committed("q/1", {"seg-1": 10}, timeout_s=1)
    first.append(batch2, "q/1", {"seg-1": 20})  # appended, not committed: then the crash
    # A new process opens the same channel: it supersedes the old handle and resumes
    # from the last committed checkpoint, so batch2 is sent again and batch1 is not.
    second = SnowpipeStreamer(FakeIngestClient(service))
    assert second.resume("q/1") == {"seg-1": 10}
    with pytest.raises(TransientError):  # the superseded handle can't commit anything
        first.wait_committed("q/1", {"seg-1": 20}, timeout_s=1)
    second.append(batch2, "q/1", {"seg-1": 20})
    second.wait_committed("q/1", {"seg-1": 20}, timeout_s=1)
    assert [r["activity_id"] for r in service.rows] == ["01A", "01B", "01C", "01D"]
    assert second.resume("q/1") == {"seg-1": 20}
    assert service.rows[0] == {
        "activity_id": "01A",
        "ts": T0,
        "customer": "ana@example.com",
        "activity": "asked_question",
    }
    # Commits come in batches: a committed token past the one waited for covers it.
    assert covers({"seg-1": 20, "seg-2": 5}, {"seg-1": 10})
    assert not covers({"seg-1": 5}, {"seg-1": 10}) and not covers(None, {"seg-1": 0})


def test_snowpipe_errors() -> None:
    from activitybi.warehouse.snowpipe import SnowpipeStreamer

    service = FakeIngestService()
    streamer = SnowpipeStreamer(FakeIngestClient(service))
    streamer.resume("q1")
    service.down = True
    with pytest.raises(TransientError):
        streamer.append([row("01A")], "q1", {"s": 1})
    service.down = False
    streamer.append([row("01A")], "q1", {"s": 1})
    with pytest.raises(TransientError):  # not committed in time
        streamer.wait_committed("q1", {"s": 2}, timeout_s=0.1)

    def refuse() -> None:
        raise FakeIngestError("INVALID_ARGUMENT", 400)

    with pytest.raises(FakeIngestError):  # a bad request is not retried
        streamer._guard(refuse, "q1")
    with pytest.raises(ValueError, match="SNOWFLAKE_PRIVATE_KEY_PATH"):
        SnowpipeStreamer.from_env({"SNOWFLAKE_ACCOUNT": "a"})


# -- templates: the same rows as DuckDB ------------------------------------------------------

PARITY_CUSTOMER = "ana@example.com"
"""Whose rows every template reads; the others' rows are loaded too and must never show."""
ODD_NUMBERS = ("fast", "n/a", "", "1,5", "12 apples", {"nested": 1}, [3], True)
"""Values where a number is expected that are not one: each reads as NULL on both."""


def _parity_rows() -> list[StreamRow]:
    """Events of every kind the templates read, with non-numeric values where numbers are
    expected, JSON nulls, missing keys, unicode, equal timestamps and microseconds."""
    rng = random.Random(14)
    people = [PARITY_CUSTOMER] * 5 + ["bo@example.com", None]
    texts = ["café ☕", "日本語", "api", "web", None, "ü\u00e9"]
    rows = []

    def number(good: float | int) -> Any:
        roll = rng.random()
        return good if roll < 0.7 else None if roll < 0.8 else rng.choice(ODD_NUMBERS)

    for i in range(260):
        who = rng.choice(people)
        ts = T0 + dt.timedelta(
            days=rng.randint(0, 40),
            minutes=rng.choice([0, 0, 7, 30]),
            microseconds=rng.choice([0, 0, 5, 250_000]),
        )
        kind = rng.choice(
            ["called_tool", "called_model", "asked_question", "recorded_metric", "opened_pr", "ran_tests"]
        )
        f: dict[str, Any] = {}
        if kind == "called_tool":
            f = {"tool": rng.choice(texts), "latency_ms": number(round(rng.uniform(0.1, 90), 3))}
            f["outcome"] = rng.choice(["ok", "ok", "error", None])
            if rng.random() < 0.5:
                f["mcp_server"] = rng.choice(texts)
        elif kind == "called_model":
            f = {
                "model": rng.choice(["claude-ü", "m2", "m3"]),
                "input_tokens": number(rng.randint(0, 5000)),
                "output_tokens": number(rng.randint(0, 900)),
                "cache_read_input_tokens": number(rng.randint(0, 99)),
                "cost_usd": number(round(rng.uniform(0, 2), 6)),
                "project": rng.choice(texts),
                "agent": rng.choice([None, None, "explorer"]),
            }
        elif kind == "asked_question":
            f = {"prompt_length": number(rng.randint(1, 4000)), "session_id": rng.choice(["s1", "s2", None])}
        elif kind == "recorded_metric":
            f = {
                "name": rng.choice(["claude_code.cost.usage", "claude_code.token.usage"]),
                "value": number(round(rng.uniform(0, 10), 4)),
                "day": rng.choice(["2024-05-03", "not a day", None, "2024-05-20"]),
                "model": rng.choice(["m2", None]),
                "unit": rng.choice(["USD", "tokens"]),
            }
        elif kind == "opened_pr":
            f = {"repository": rng.choice(texts), "size": number(rng.randint(1, 500))}
        else:
            f = {
                "repo": rng.choice(texts),
                "minutes": number(rng.randint(1, 9)),
                "score": number(round(rng.uniform(-1, 1), 3)),
                "passed": rng.choice([True, False, None, "maybe", "yes"]),
                "when": rng.choice(["2024-05-02 10:00:00", "2024-05-02T11:30:00.5", "soon", None]),
                "dotted.key": rng.choice(texts),
            }
        rows.append(
            StreamRow(
                activity_id=f"p{i:03d}" + "x" * (i % 4),
                ts=ts,
                activity=kind,
                customer=who,
                anonymous_customer_id=None if who else "anon-7",
                feature_json={k: v for k, v in f.items() if v is not None or rng.random() < 0.5},
                revenue_impact=round(rng.uniform(0, 50), 2)
                if kind == "opened_pr" and rng.random() < 0.8
                else None,
                _session_id=rng.choice(["s1", "s2", "s3", None]),
                _source=rng.choice(["mcp", "hook", "otel", None]),
            )
        )
    for i, value in enumerate(ODD_NUMBERS):  # every one, whatever the draws above gave
        rows.append(
            StreamRow(
                activity_id=f"odd{i}",
                ts=T0 + dt.timedelta(days=i, seconds=1),
                activity="called_tool",
                customer=PARITY_CUSTOMER,
                feature_json={"tool": "odd", "latency_ms": value, "outcome": "ok"},
            )
        )
    for i, value in enumerate([0.75, "dropped", {"n": "ü"}, 2]):
        rows.append(
            StreamRow(
                activity_id=f"i{i}",
                ts=T0 + dt.timedelta(hours=i),
                activity=INSIGHT_ACTIVITY,
                customer=PARITY_CUSTOMER if i != 3 else "bo@example.com",
                feature_json={
                    "subject": "tests",
                    "metric": "pass_rate",
                    "value": value,
                    "provenance_query_hash": "h",
                },
            )
        )
    return rows


class Parity:
    """The same events in a DuckDB file (through the DuckDB sink) and in fakesnow (through
    the Snowflake sink and the real connector). The load time each sink stamps is then set
    to the same value on both (ts plus a lag per row), so templates reading it compare too."""

    def __init__(self, duck: Any, snow: SnowflakeWarehouse) -> None:
        self.duck, self.snow = duck, snow

    def run(
        self, template: str, params: dict[str, Any], customer: str = PARITY_CUSTOMER
    ) -> tuple[Any, Any, str]:
        from activitybi.query import templates

        sql, values = templates.get(template).bind(params, customer)
        snow_sql, snow_values = templates.for_warehouse(sql, values, "snowflake")
        duck = self.duck.execute(sql, values)
        snow = self.snow.run_query(
            snow_sql,
            snow_values,
            timeout_s=60,
            query_tag="cdesk_parity",
            cancelled=lambda: False,
            progress=lambda _: None,
        )
        return duck, snow, sql


@pytest.fixture(scope="module")
def parity(server: FakeSnowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parity]:
    from activitybi.warehouse.duckdb import DuckDBWarehouse

    if not server.running:
        server.start()
    rows = _parity_rows()
    duck = DuckDBWarehouse(tmp_path_factory.mktemp("parity") / "warehouse.duckdb")
    duck.init()
    snow = SnowflakeWarehouse(_kwargs(server, "PARITY"), emulator=True)
    snow.init()
    assert duck.load(rows, "q-parity", None) == snow.load(rows, "q-parity", None) == len(rows)
    duck.execute("UPDATE claude_stream SET _ingested_at = ts + to_milliseconds(length(activity_id) * 250)")
    snow.execute(
        "UPDATE claude_stream SET _ingested_at = DATEADD(millisecond, LENGTH(activity_id) * 250, ts)"
    )
    yield Parity(duck, snow)
    snow.close()
    duck.close()


def _cell(value: Any) -> Any:
    """A value as both warehouses' drivers can agree on it: numbers as floats (Snowflake
    returns NUMBER as int or Decimal), a JSON document (a VARIANT comes back as its text,
    spaced as Snowflake prints it) as the parsed value."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | Decimal):
        return pytest.approx(float(value), rel=1e-9, abs=1e-12)
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


FAKESNOW_NULL_TIMESTAMP = dt.datetime(1970, 1, 1)
"""fakesnow's server sends a NULL TIMESTAMP_NTZ as 1970-01-01 00:00 (the Arrow struct it
encodes timestamps in has no null mask): read as NULL on the Snowflake side. The events
hold no such time, so a real one cannot be mistaken for it."""


def _assert_same_rows(duck: Any, snow: Any, sql: str, what: str) -> None:
    import sqlglot

    assert snow.columns == duck.columns, what
    ordered = sqlglot.parse_one(sql, read="duckdb").args.get("order") is not None
    d = [tuple(map(_cell, r)) for r in duck.rows]
    s = [tuple(_cell(None if v == FAKESNOW_NULL_TIMESTAMP else v) for v in r) for r in snow.rows]
    if not ordered:  # order-insensitive: the same multiset of rows
        d.sort(key=repr)
        s.sort(key=repr)
    assert s == d, f"{what}: Snowflake gave {snow.rows}, DuckDB {duck.rows}"


FAKESNOW_TRY_CAST_TIMESTAMP = (
    "fakesnow rewrites TRY_CAST(<text> AS TIMESTAMP_NTZ) into its _fs_to_timestamp macro, a plain "
    "CAST: a value that is not a timestamp ('soon') fails the query where Snowflake gives NULL"
)
FAKESNOW_ARRAY_TO_STRING = (
    "fakesnow (through sqlglot) writes ARRAY_TO_STRING(<array>, ?) for DuckDB with the bound "
    "delimiter twice (CASE WHEN ? IS NULL ...), so DuckDB lacks a value for the second"
)
FAKESNOW_WINDOWED_ARRAY_AGG = (
    "fakesnow cannot run ARRAY_AGG(...) WITHIN GROUP (...) OVER (... ROWS ...) (DuckDB: no "
    "list_transform(JSON, JSON)); Snowflake's LISTAGG takes no window frame, so a running listagg "
    "is written this way"
)


def _dataset_specs() -> list[Any]:
    """Specs for the dataset template: every relationship kind without and with a join
    condition, every aggregation, every cohort occurrence (the time spine at each interval).
    What fakesnow cannot run is a case of its own, marked with the reason."""
    from activitybi.query.dataset import RELATIONSHIPS

    def append(relationship: str, join: bool, columns: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if columns is not None:
            pass
        elif relationship.startswith("aggregate_"):
            columns = [
                {"feature": "minutes", "type": "integer", "agg": agg, "as": f"minutes_{agg}"}
                for agg in ("count", "count_distinct", "sum", "min", "max", "avg", "is_null", "not_null")
            ]
            columns += [
                {"feature": "score", "type": "float", "agg": "first_value", "as": "first_score"},
                {"feature": "score", "type": "float", "agg": "last_value", "as": "last_score"},
                {"feature": "passed", "type": "boolean", "agg": "sum_bool", "as": "passes"},
            ]
        else:
            columns = [
                {"column": "activity_id", "as": "test_id"},
                {"column": "ts", "as": "test_ts_text"},
                {"feature": "minutes", "type": "integer", "as": "minutes"},
                {"feature": "score", "type": "float", "as": "score"},
                {"feature": "passed", "type": "boolean", "as": "passed"},
                {"feature": "dotted.key", "as": "dotted"},
                {"column": "activity_occurrence", "as": "occurrence"},
                {"column": "activity_repeated_at", "type": "timestamp", "as": "repeated_at"},
            ]
        a: dict[str, Any] = {"activity": "ran_tests", "relationship": relationship, "columns": columns}
        if relationship.startswith("nth_"):
            a["nth"] = 2
        if join:
            a["join"] = [{"feature": "repo", "cohort_feature": "repository"}]
        else:
            a["filters"] = [{"feature": "passed", "type": "boolean", "op": "not_null"}]
        return a

    cohort = {
        "activity": "opened_pr",
        "columns": [
            {"column": "activity_id", "as": "pr"},
            {"column": "ts", "type": "timestamp", "as": "at"},
            {"feature": "repository", "as": "repository"},
            {"feature": "size", "type": "integer", "as": "size"},
            {"column": "revenue_impact", "as": "revenue_text"},
        ],
    }

    def case(label: str, spec_cohort: dict[str, Any], *appends: dict[str, Any], xfail: str = "") -> Any:
        # fakesnow answers HTTP 500 to a statement it cannot translate (TransientError
        # here), and a failed cast as Snowflake would (ProgrammingError).
        raises = ProgrammingError if xfail == FAKESNOW_TRY_CAST_TIMESTAMP else TransientError
        marks = [pytest.mark.xfail(reason=xfail, strict=True, raises=raises)] if xfail else []
        return pytest.param(label, {"cohort": spec_cohort, "appends": list(appends)}, marks=marks, id=label)

    cases = [
        case(f"{rel}{'+join' if join else ''}", cohort, append(rel, join))
        for rel in RELATIONSHIPS
        for join in (False, True)
    ]
    listagg = [
        {"feature": "repo", "agg": "listagg", "delimiter": " | ", "as": "repos"},
        {"feature": "minutes", "type": "integer", "agg": "listagg", "as": "minutes_list"},
        {"column": "ts", "type": "timestamp", "agg": "listagg", "delimiter": ",", "as": "test_times"},
    ]
    distinct = [{"feature": "repo", "agg": "listagg_distinct", "as": "distinct_repos"}]
    for rel in ("aggregate_all_ever", "aggregate_in_between", "aggregate_before", "aggregate_after"):
        running = rel in ("aggregate_before", "aggregate_after")
        cases.append(
            case(
                f"{rel}+listagg",
                cohort,
                append(rel, False, listagg),
                xfail=FAKESNOW_WINDOWED_ARRAY_AGG if running else "",
            )
        )
        cases.append(
            case(
                f"{rel}+listagg_distinct",
                cohort,
                append(rel, True, distinct),
                xfail=FAKESNOW_WINDOWED_ARRAY_AGG if running else FAKESNOW_ARRAY_TO_STRING,
            )
        )
    when = [{"feature": "when", "type": "timestamp", "as": "when_at"}]
    cases.append(
        case(
            "timestamp_feature", cohort, append("first_after", False, when), xfail=FAKESNOW_TRY_CAST_TIMESTAMP
        )
    )
    filtered = {
        **cohort,
        "filters": [
            {"feature": "size", "type": "integer", "op": ">=", "value": 100},
            {"feature": "repository", "op": "in", "value": ["api", "café ☕", "日本語"]},
        ],
    }
    for occurrence, extra in (("first", {}), ("last", {}), ("nth", {"nth": 2})):
        cases.append(
            case(
                f"cohort_{occurrence}",
                {**filtered, "occurrence": occurrence, **extra},
                append("first_after", False),
                append("aggregate_in_between", True),
            )
        )
    for interval, end in (
        ("day", "max"),
        ("week", "max"),
        ("month", "now"),
        ("quarter", "max"),
        ("year", "now"),
    ):
        spine = {
            "activity": "opened_pr",
            "occurrence": "time_spine",
            "time_spine": {"interval": interval, "end_period": end},
            "columns": [
                {"column": "ts", "as": "period"},
                {"column": "activity_id", "as": "period_id"},
                {"column": "activity_occurrence", "as": "n"},
                {"column": "activity_repeated_at", "type": "timestamp", "as": "next_period"},
            ],
        }
        cases.append(
            case(
                f"time_spine_{interval}",
                spine,
                append("aggregate_in_between", False),
                append("last_before", False),
            )
        )
    return cases


PARITY_VALUES: dict[str, Any] = {
    "since": "2020-01-01",
    "subject": "tests",
    "metric": "pass_rate",
    "bucket": "hour",
    "limit": 7,
}
"""A value for each parameter the templates take (a template with a parameter not named
here fails the test below, until a value is given)."""
SAMPLES: dict[tuple[str, str], list[Any]] = {("dataset", "spec"): _dataset_specs()}
"""Several values of a parameter (pytest params of (label, value)), each a case of its own."""


def _parity_cases() -> list[Any]:
    from activitybi.query import templates

    cases = []
    for name, t in templates.TEMPLATES.items():
        samples = [pytest.param("", None, id="")]
        for p in t.params:
            samples = [
                pytest.param(s.values[0], {p.name: s.values[1]}, marks=s.marks, id=s.id)
                for s in SAMPLES.get((name, p.name), [])
            ] or samples
        for sample in samples:
            label, given = sample.values
            params = {p.name: (given or {}).get(p.name, PARITY_VALUES.get(p.name)) for p in t.params}
            cases.append(
                pytest.param(name, params, marks=sample.marks, id=f"{name}[{label}]" if label else name)
            )
    return cases


@pytest.mark.parametrize(("template", "params"), _parity_cases())
def test_template_gives_the_same_rows_as_duckdb(
    parity: Parity, template: str, params: dict[str, Any]
) -> None:
    """Every template (from the registry, so a new one is covered), run on the same events
    in DuckDB and in fakesnow through the connector, gives the same rows."""
    missing = [k for k, v in params.items() if v is None]
    assert not missing, f"give a value for {missing} in PARITY_VALUES or SAMPLES"
    duck, snow, sql = parity.run(template, params)
    _assert_same_rows(duck, snow, sql, template)
    assert duck.rows or template in ("recent_insights",), f"{template} read no rows: the test data misses it"
    assert "bo@example.com" not in repr(snow.rows)


@pytest.fixture(scope="module")
def corpus(server: FakeSnowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parity]:
    """The ActivitySchema conformance corpus's stream, through both sinks."""
    from activitybi.warehouse.duckdb import DuckDBWarehouse
    from tests.test_dataset_conformance import CORPUS, MANIFEST

    if not server.running:
        server.start()
    with (CORPUS / MANIFEST["stream"]).open(newline="") as f:
        rows = [
            StreamRow(
                activity_id=r["activity_id"],
                ts=dt.datetime.fromisoformat(r["ts"]),
                activity=r["activity"],
                customer=r["customer"] or None,
                anonymous_customer_id=r["anonymous_customer_id"] or None,
                feature_json=json.loads(r["feature_json"]) if r["feature_json"] else None,
                revenue_impact=float(r["revenue_impact"]) if r["revenue_impact"] else None,
                link=r["link"] or None,
            )
            for r in csv.DictReader(f)
        ]
    duck = DuckDBWarehouse(tmp_path_factory.mktemp("corpus") / "warehouse.duckdb")
    duck.init()
    snow = SnowflakeWarehouse(_kwargs(server, "CORPUS"), emulator=True)
    snow.init()
    assert duck.load(rows, "q-corpus", None) == snow.load(rows, "q-corpus", None) == len(rows)
    yield Parity(duck, snow)
    snow.close()
    duck.close()


def _corpus_cases() -> list[Any]:
    from tests.test_dataset_conformance import CASES

    cases = []
    for name, case in sorted(CASES.items()):
        aggs = {c.get("agg") for a in case["appends"] for c in a["columns"]}
        marks = []
        if "listagg_distinct" in aggs:
            marks.append(
                pytest.mark.xfail(reason=FAKESNOW_ARRAY_TO_STRING, strict=True, raises=TransientError)
            )
        cases.append(pytest.param(name, marks=marks, id=name))
    return cases


@pytest.mark.parametrize("name", _corpus_cases())
def test_conformance_case_gives_the_same_rows_on_snowflake(corpus: Parity, name: str) -> None:
    """Every case of the conformance corpus (which test_dataset_conformance.py checks on
    DuckDB against the expected rows), for every customer, gives the same rows on fakesnow."""
    from tests.test_dataset_conformance import CASES

    case = CASES[name]
    spec = {"cohort": case["cohort"], "appends": case["appends"]}
    customers = corpus.duck.execute(
        "SELECT DISTINCT coalesce(customer, anonymous_customer_id) FROM claude_stream ORDER BY 1"
    ).rows
    assert len(customers) > 1
    for (customer,) in customers:
        duck, snow, sql = corpus.run("dataset", {"spec": spec}, customer)
        _assert_same_rows(duck, snow, sql, f"{name} for {customer}")


def test_a_value_that_is_not_a_number_reads_as_null_on_both(parity: Parity) -> None:
    """The values of ODD_NUMBERS where a number is expected read as NULL on both warehouses
    (sqlglot alone turns TRY_CAST into CAST for Snowflake: one such value failed the query)."""
    spec = {
        "cohort": {
            "activity": "called_tool",
            "columns": [
                {"column": "activity_id", "as": "id"},
                {"feature": "latency_ms", "as": "raw"},
                {"feature": "latency_ms", "type": "float", "as": "latency"},
                {"feature": "latency_ms", "type": "integer", "as": "whole"},
            ],
        }
    }
    duck, snow, sql = parity.run("dataset", {"spec": spec})
    _assert_same_rows(duck, snow, sql, "dataset")
    odd = [r for r in snow.rows if r[1] is not None and r[2] is None]
    assert odd and all(r[3] is None for r in odd)
    assert {r[1] for r in odd} >= {"fast", "n/a", "", "1,5", "12 apples", '{"nested":1}', "[3]", "true"}
    assert any(r[2] is not None for r in snow.rows)


def test_snowflake_form_keeps_try_cast_and_binds_the_same_values() -> None:
    """Every TRY_CAST of a template stays one in its Snowflake form; every value stays bound
    (a feature key of a dataset becomes a literal, checked against the key pattern)."""
    from activitybi.query import templates

    for name, t in templates.TEMPLATES.items():
        if t.build is not None:
            continue
        params = {p.name: PARITY_VALUES.get(p.name) for p in t.params}
        sql, values = t.bind(params, PARITY_CUSTOMER)
        snow_sql, snow_values = templates.for_warehouse(sql, values, "snowflake")
        assert snow_sql.count("TRY_CAST(") == sql.count("TRY_CAST("), name
        assert "->>" not in snow_sql and "JSON_EXTRACT_PATH_TEXT" not in snow_sql, name
        assert sorted(map(repr, snow_values)) == sorted(map(repr, values)), name
    spec = {"cohort": {"activity": "a", "columns": [{"feature": "dotted.key", "type": "integer", "as": "n"}]}}
    sql, values = templates.get("dataset").bind({"spec": spec}, PARITY_CUSTOMER)
    snow_sql, snow_values = templates.for_warehouse(sql, values, "snowflake")
    assert "TRY_CAST(CAST(c.feature_json['dotted.key'] AS VARCHAR) AS BIGINT)" in snow_sql
    assert snow_values == [v for v in values if v != "dotted.key"]
    from activitybi.query.dialect import to_snowflake

    with pytest.raises(ValueError, match="not a feature key"):
        to_snowflake(sql, [("x' OR '1'='1" if v == "dotted.key" else v) for v in values])


SNOWFLAKE_UNMODELLED = frozenset({"OBJECT_CONSTRUCT_KEEP_NULL", "ARRAY_TO_STRING"})
"""Real Snowflake functions a sqlglot the project admits (>= 25) may not model, so parse
as ``exp.Anonymous``: the two that `activitybi.query.dialect` writes by name
(``exp.Anonymous``), not through a sqlglot class: OBJECT_CONSTRUCT_KEEP_NULL (a struct join
key's JSON text) and ARRAY_TO_STRING (a running listagg), both in Snowflake's function
reference. Any other unknown function is one Snowflake may lack."""


def _not_snowflake(snow_sql: str) -> list[str]:
    """What a Snowflake statement uses that Snowflake does not have: a function sqlglot
    does not know (outside :data:`SNOWFLAKE_UNMODELLED`; DuckDB's ``arg_min_null`` passes
    through transpilation unchanged), or a row value as a function argument (DuckDB's
    ``arg_min(x, (ts, activity_id))``, whose MIN_BY form Snowflake rejects). fakesnow runs
    both, on DuckDB, so only the text tells."""
    import sqlglot
    from sqlglot import expressions as exp

    tree = sqlglot.parse_one(snow_sql, read="snowflake")
    found = [
        f"{f.name.upper()}()"
        for f in tree.find_all(exp.Anonymous)
        if f.name.upper() not in SNOWFLAKE_UNMODELLED
    ]
    found += [
        f"a row value in {t.parent.sql(dialect='snowflake')}"
        for t in tree.find_all(exp.Tuple)
        if isinstance(t.parent, exp.Func)
    ]
    return sorted(set(found))


def test_snowflake_forms_use_only_snowflake_sql() -> None:
    """The Snowflake form of every template (every dataset spec of the parity cases) and
    of every conformance case uses only what Snowflake has."""
    from activitybi.query import templates
    from tests.test_dataset_conformance import CASES

    bound = {p.id: templates.get(p.values[0]).bind(p.values[1], PARITY_CUSTOMER) for p in _parity_cases()}
    for name, c in CASES.items():
        spec = {"cohort": c["cohort"], "appends": c["appends"]}
        bound[f"corpus {name}"] = templates.get("dataset").bind({"spec": spec}, PARITY_CUSTOMER)
    assert len(bound) > len(templates.TEMPLATES) + len(CASES)
    wrong = {}
    for label, (sql, values) in bound.items():
        snow_sql, _ = templates.for_warehouse(sql, values, "snowflake")
        if found := _not_snowflake(snow_sql):
            wrong[label] = found
    assert not wrong, wrong


def test_the_snowflake_check_rejects_duckdb_only_functions() -> None:
    """The check above fails on the form first_ever had (DuckDB's arg_min_null over a
    (ts, activity_id) key), and on MIN_BY with that key."""
    from activitybi.query.dialect import to_snowflake

    picked = "SELECT s._entity, {}(s.link, (s.ts, s.activity_id)) AS link FROM _s AS s GROUP BY s._entity"
    snow_sql, _ = to_snowflake(picked.format("arg_min_null"), [])
    assert _not_snowflake(snow_sql) == [
        "ARG_MIN_NULL()",
        "a row value in ARG_MIN_NULL(s.link, (s.ts, s.activity_id))",
    ]
    snow_sql, _ = to_snowflake(picked.format("arg_min"), [])
    assert _not_snowflake(snow_sql) == ["a row value in MIN_BY(s.link, (s.ts, s.activity_id))"]


class Killed(BaseException):
    """The process dies here (nothing catches it)."""


def test_upload_streaming_is_exactly_once_across_restarts(
    wh: SnowflakeWarehouse, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`activitybi upload` in streaming mode: the uploader reads the queue from the channel's
    committed token. Killed after a commit but before the queue ack, killed between an
    append and its commit, and a commit that fails transiently: every event lands once."""
    from activitybi import Queue, QueueReader
    from activitybi.owner.uploader import Uploader
    from activitybi.warehouse.snowpipe import SnowpipeStreamer, StreamingLoad

    qdir = tmp_path / "queue"
    with Queue(str(qdir)) as q:
        sent = q.append_many([{"activity": "asked_question", "customer": "a@x.io"}] * 150)
        atom = q.append(
            {
                "activity": INSIGHT_ACTIVITY,
                "customer": "a@x.io",
                "feature_json": {"subject": "repo", "metric": "m", "value": 1},
            }
        )
    service = FakeIngestService()

    def uploader() -> Uploader:
        sink = StreamingLoad(wh, SnowpipeStreamer(FakeIngestClient(service)), commit_timeout_s=1)
        return Uploader(qdir, wh, batch_lines=50, sink=sink)

    # 1. Batch 1 is committed, then the process dies before acknowledging the queue.
    up = uploader()
    load = up.sink.load

    def load_then_die(*args: Any) -> int:
        load(*args)
        raise Killed

    monkeypatch.setattr(up.sink, "load", load_then_die)
    with pytest.raises(Killed):
        up.step()
    up.close()
    assert len(service.rows) == 50

    # 2. Batch 2 is appended; the process dies before Snowflake commits it.
    def die(self: FakeChannel, *args: Any, **kwargs: Any) -> None:
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(FakeChannel, "wait_for_commit", die)
        up = uploader()
        with pytest.raises(Killed):
            up.step()
        up.close()
    assert len(service.rows) == 50

    # 3. One commit fails transiently (503): the channel is reopened and the batch sent again.
    real_wait = FakeChannel.wait_for_commit
    failed: list[bool] = []

    def flaky(self: FakeChannel, *args: Any, **kwargs: Any) -> None:
        if not failed:
            failed.append(True)
            raise FakeIngestError("HTTP_RETRYABLE_CLIENT_ERROR", 503)
        real_wait(self, *args, **kwargs)

    monkeypatch.setattr(FakeChannel, "wait_for_commit", flaky)
    up = uploader()
    stats = up.drain()
    up.close()
    assert failed and stats.retries == 1
    streamed = [r["activity_id"] for r in service.rows]
    assert sorted(streamed) == sorted(sent)  # every event once, none twice
    assert ids(wh) == [atom]  # the insight took the COPY path, with its atom
    assert count(wh, "insight_atoms") == 1
    with QueueReader(str(qdir)) as r:
        assert r.pending() == 0


def test_the_load_mode_setting(wh: SnowflakeWarehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from activitybi.extras import MissingExtra
    from activitybi.owner.uploader import streaming_sink

    assert streaming_sink(wh) is None  # copy, the default
    monkeypatch.setenv("ACTIVITYBI_SNOWFLAKE_LOAD", "streaming")
    with pytest.raises(ValueError, match="SNOWFLAKE_PRIVATE_KEY_PATH"):
        streaming_sink(wh)
    for name in ("ACCOUNT", "USER", "PRIVATE_KEY_PATH", "DATABASE", "SCHEMA"):
        monkeypatch.setenv(f"SNOWFLAKE_{name}", "x")
    if importlib.util.find_spec("snowflake.ingest") is None:
        with pytest.raises(MissingExtra, match=r"activitybi\[snowflake\]"):
            streaming_sink(wh)
    monkeypatch.setenv("ACTIVITYBI_SNOWFLAKE_LOAD", "kafka")
    with pytest.raises(ValueError, match="copy or streaming"):
        streaming_sink(wh)


# -- one row per fact, per customer ----------------------------------------------------------


def test_activity_ids_are_per_customer(wh: SnowflakeWarehouse) -> None:
    """Issue 16 item 3: Bob's id never hides, replaces or reveals Alice's event."""
    assert wh.load([row("conv-42-step-1", customer="bob", link="https://bob")], "q", None) == 1
    assert wh.load([row("conv-42-step-1", customer="alice", link="https://alice")], "q", None) == 1
    assert wh.load([row("conv-42-step-1", customer="alice", link="https://again")], "q", None) == 0
    got = wh.execute("SELECT customer, link FROM claude_stream ORDER BY 1").rows
    assert [tuple(r) for r in got] == [("alice", "https://alice"), ("bob", "https://bob")]


def test_a_higher_ranked_source_replaces_whatever_the_order(wh: SnowflakeWarehouse) -> None:
    """The precedence rule: otel > hook > transcript, in every arrival order, batch or not."""
    sources = ("transcript", "hook", "otel")
    for i, order in enumerate(itertools.permutations(sources)):
        aid = f"call-{i}"
        for source in order:
            wh.load([row(aid, customer="alice", _source=source, link=source)], "q", None)
        wh.load([row(f"batch-{i}", customer="alice", _source=s, link=s) for s in order], "q", None)
    got = wh.execute("SELECT activity_id, link, _source FROM claude_stream ORDER BY 1").rows
    assert len(got) == 12 and all(r[1] == r[2] == "otel" for r in got)
