"""DuckDB, the embedded default: one file under $ACTIVITYBI_HOME, no account.

DuckDB lets one process open a file for writing. The process that holds the queue's
reader lock (the uploader) owns it; another process that tries gets `TransientError`
("lock held") and retries, or hands its work over through the queue.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from activitybi import config
from activitybi.events import LOADED_COLUMNS, StreamRow
from activitybi.warehouse import (
    Checkpoint,
    DataError,
    Params,
    QueryResult,
    QueryStopped,
    TransientError,
    ddl_files,
    source_rank_sql,
)

_STREAM_TYPES = {"ts": pa.timestamp("us"), "revenue_impact": pa.float64(), "_n": pa.int64()}
_REPLACED = tuple(c for c in LOADED_COLUMNS if c not in ("activity_id", "customer", "anonymous_customer_id"))
"""What a higher-ranked source's row replaces (the key columns stay)."""
_ATOM_COLUMNS = (
    "atom_id",
    "customer_id",
    "subject",
    "metric",
    "value",
    "provenance_query_hash",
    "ts",
)


_ONLY_IF = "-- only if: "
_COLS = ", ".join(LOADED_COLUMNS)
_UPSERT_STREAM = f"""
INSERT INTO claude_stream ({_COLS}, _customer_key)
SELECT {_COLS}, _customer_key FROM (
    SELECT *, coalesce(customer, anonymous_customer_id, '') AS _customer_key FROM _batch
)
QUALIFY row_number() OVER (
    PARTITION BY _customer_key, activity_id ORDER BY {source_rank_sql("_source")} DESC, _n
) = 1
ON CONFLICT (_customer_key, activity_id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _REPLACED)},
    _ingested_at = now() AT TIME ZONE 'UTC'
WHERE {source_rank_sql("excluded._source")} > {source_rank_sql("claude_stream._source")}
"""
"""One statement, keyed by (customer or anonymous id, activity_id): a new row is inserted;
a row whose source outranks the stored one's (`SOURCE_RANK`: otel > hook > transcript >
the rest) replaces it; an equal or lower rank changes nothing, so a re-read batch is a
no-op. Within a batch the highest rank wins, then the first line."""


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _stream_table(rows: Sequence[StreamRow]) -> pa.Table:
    columns: dict[str, list[Any]] = {c: [] for c in LOADED_COLUMNS}
    columns["_n"] = list(range(len(rows)))
    for r in rows:
        columns["activity_id"].append(r.activity_id)
        columns["ts"].append(r.ts)
        columns["customer"].append(r.customer)
        columns["activity"].append(r.activity)
        columns["anonymous_customer_id"].append(r.anonymous_customer_id)
        columns["feature_json"].append(_json(r.feature_json))
        columns["revenue_impact"].append(r.revenue_impact)
        columns["link"].append(r.link)
        columns["_session_id"].append(r._session_id)
        columns["_source"].append(r._source)
    return pa.table({c: pa.array(v, type=_STREAM_TYPES.get(c, pa.string())) for c, v in columns.items()})


def _atom_table(atoms: list[dict[str, Any]]) -> pa.Table:
    data = {c: [a[c] for a in atoms] for c in _ATOM_COLUMNS}
    data["value"] = [_json(v) for v in data["value"]]
    return pa.table(
        {c: pa.array(v, type=pa.timestamp("us") if c == "ts" else pa.string()) for c, v in data.items()}
    )


class DuckDBWarehouse:
    kind = "duckdb"

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        memory_limit: str | None = None,
        threads: int | None = None,
    ) -> None:
        """`memory_limit` and `threads` bound the whole database instance, so one query
        (they run one at a time) cannot take the owner's machine."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        limits: dict[str, str | bool | int | float | list[str]] = {}
        if memory_limit is not None:
            limits["memory_limit"] = memory_limit
        if threads is not None:
            limits["threads"] = threads
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only, config=limits)
        except duckdb.IOException as e:
            raise TransientError(f"DuckDB file {self.path} is busy: {e}") from e

    @classmethod
    def open_default(cls) -> DuckDBWarehouse:
        settings = config.settings()
        return cls(
            config.Home.current().warehouse,
            memory_limit=settings.query_memory_limit,
            threads=settings.query_threads,
        )

    def init(self) -> list[str]:
        """Runs the numbered DDL files; a file whose first line is `-- only if: <query>`
        runs only when that query answers true (a migration DuckDB cannot make idempotent)."""
        names = []
        for name, sql in ddl_files(self.kind):
            first = sql.partition("\n")[0]
            if first.startswith(_ONLY_IF):
                row = self.con.execute(first.removeprefix(_ONLY_IF)).fetchone()
                if not (row and row[0]):
                    names.append(name)
                    continue
            self.con.execute(sql)
            names.append(name)
        return names

    def load(self, rows: Sequence[StreamRow], queue_id: str, checkpoint: Checkpoint | None) -> int:
        con = self.con
        atoms = [a for a in (r.insight() for r in rows) if a is not None]
        con.begin()
        try:
            inserted = 0
            if rows:
                con.register("_batch", _stream_table(rows))
                inserted = int(con.execute(_UPSERT_STREAM).fetchone()[0])  # type: ignore[index]
                con.unregister("_batch")
            if atoms:
                con.register("_atoms", _atom_table(atoms))
                cols = ", ".join(_ATOM_COLUMNS)
                con.execute(
                    f"INSERT OR IGNORE INTO insight_atoms ({cols}) SELECT {cols} FROM _atoms "
                    "WHERE customer_id IS NOT NULL AND subject IS NOT NULL "
                    "AND metric IS NOT NULL AND value IS NOT NULL"
                )
                con.unregister("_atoms")
            if checkpoint is not None:
                con.execute(
                    "INSERT OR REPLACE INTO _activitybi_checkpoints VALUES (?, ?, now() AT TIME ZONE 'UTC')",
                    [queue_id, orjson.dumps(checkpoint).decode()],
                )
            con.commit()
        except (
            duckdb.ConversionException,
            duckdb.ConstraintException,
            duckdb.InvalidInputException,
            duckdb.OutOfRangeException,
        ) as e:
            con.rollback()
            raise DataError(str(e)) from e
        except BaseException:
            con.rollback()
            raise
        return inserted

    def refresh_context(self) -> None:
        folder = resources.files("activitybi") / "ddl" / self.kind
        self.con.execute((folder / "refresh_context.sql").read_text())

    def checkpoint(self, queue_id: str) -> Checkpoint | None:
        row = self.con.execute(
            "SELECT checkpoint FROM _activitybi_checkpoints WHERE queue_id = ?", [queue_id]
        ).fetchone()
        return None if row is None else dict(orjson.loads(row[0]))

    def execute(self, sql: str, params: Params = ()) -> QueryResult:
        cur = self.con.cursor()
        try:
            cur.execute(sql, params)
            columns = [d[0] for d in cur.description or ()]
            return QueryResult(columns, cur.fetchall() if columns else [])
        finally:
            cur.close()

    def run_query(
        self,
        sql: str,
        params: Params,
        *,
        timeout_s: float,
        query_tag: str,
        cancelled: Callable[[], bool],
        progress: Callable[[float], None],
    ) -> QueryResult:
        """A watcher thread interrupts the query past the timeout or on cancellation, and
        reports DuckDB's progress meanwhile. (`query_tag` is for Snowflake's history.)"""
        cur = self.con.cursor()
        done = threading.Event()
        stopped: list[str] = []

        def watch() -> None:
            deadline = time.monotonic() + timeout_s
            while not done.wait(0.05):
                if cancelled() or time.monotonic() > deadline:
                    stopped.append("cancelled" if cancelled() else "timeout")
                    cur.interrupt()
                    return
                with contextlib.suppress(duckdb.Error):
                    progress(cur.query_progress())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            cur.execute(sql, params)
            columns = [d[0] for d in cur.description or ()]
            return QueryResult(columns, cur.fetchall())
        except duckdb.InterruptException:
            if stopped:
                raise QueryStopped(stopped[0]) from None
            raise
        finally:
            done.set()
            watcher.join()
            cur.close()

    def compact(self) -> None:
        """Rewrites the file with only its live data: DuckDB keeps deleted rows in free
        blocks, so an erasure is not done until they are gone. The copy is made under a
        temporary name, fsynced and swapped in atomically; a kill leaves either file whole
        (a stale copy is removed by the next call)."""
        fresh = self.path.with_name(f".{self.path.name}.compact")
        for stale in (fresh, fresh.with_name(fresh.name + ".wal")):
            stale.unlink(missing_ok=True)
        name = self.con.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        self.con.execute("CHECKPOINT")
        quoted = str(fresh).replace("'", "''")
        self.con.execute(f"ATTACH '{quoted}' AS _compact")
        try:
            self.con.execute(f'COPY FROM DATABASE "{name}" TO _compact')
        finally:
            self.con.execute("DETACH _compact")
        self.con.close()
        wal = self.path.with_name(self.path.name + ".wal")
        if wal.exists():  # a clean close leaves none; never pair the new file with an old log
            raise RuntimeError(f"{wal} is still there after a clean close")
        fd = os.open(fresh, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(fresh, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.con = duckdb.connect(str(self.path))

    def close(self) -> None:
        self.con.close()
