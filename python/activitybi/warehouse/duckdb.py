"""DuckDB, the embedded default: one file under $ACTIVITYBI_HOME, no account.

DuckDB lets one process open a file for writing. The process that holds the queue's
reader lock (the uploader) owns it; another process that tries gets `TransientError`
("lock held") and retries, or hands its work over through the queue.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from activitybi import config
from activitybi.events import INSIGHT_ACTIVITY, LOADED_COLUMNS, StreamRow
from activitybi.warehouse import (
    Checkpoint,
    DataError,
    Lines,
    Params,
    QueryResult,
    QueryStopped,
    Staged,
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


def _stream_insert(insert: str, select: str) -> str:
    """The statement that stores the stream rows `select` gives (its columns and `_n`, the
    line's place in the batch, in that order), keyed by (customer or anonymous id,
    activity_id).

    `INSERT` fails on any id already taken (in the table or twice in the batch), which is
    rare (a re-read after a crash, several sources of one fact), and then `UPSERT` runs: a
    new row is inserted; a row whose source outranks the stored one's (`SOURCE_RANK`: otel
    > hook > transcript > the rest) replaces it; an equal or lower rank changes nothing, so
    a re-read batch is a no-op. Within a batch the highest rank wins, then the first line.
    The plain form goes first because it costs half as much."""
    keyed = f"SELECT *, coalesce(customer, anonymous_customer_id, '') AS _customer_key FROM ({select})"
    head = f"INSERT INTO claude_stream ({_COLS}, _customer_key) SELECT {_COLS}, _customer_key FROM ({keyed})"
    if insert == "INSERT":
        return head
    rank = source_rank_sql
    return f"""{head}
QUALIFY row_number() OVER (PARTITION BY _customer_key, activity_id ORDER BY {rank("_source")} DESC, _n) = 1
ON CONFLICT (_customer_key, activity_id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _REPLACED)},
    _ingested_at = now() AT TIME ZONE 'UTC'
WHERE {rank("excluded._source")} > {rank("claude_stream._source")}"""


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _stream_table(rows: Sequence[StreamRow], places: Sequence[int] | None = None) -> pa.Table:
    """The rows as an Arrow table, with `_n`: each row's place in its batch (`places`, or
    the order given), which decides between rows of one fact with sources of equal rank."""
    columns: dict[str, list[Any]] = {c: [] for c in LOADED_COLUMNS}
    columns["_n"] = list(places) if places is not None else list(range(len(rows)))
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


_TEXT = ("customer", "anonymous_customer_id", "link", "_session_id", "_source")
_JSON_COLUMNS = ", ".join(f"{c}: 'JSON'" for c in LOADED_COLUMNS)
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%gZ"
_CLEAN = " AND ".join(
    [
        "starts_with(activity_id, '\"') AND activity_id <> '\"\"' AND NOT contains(activity_id, '\\')",
        "starts_with(activity, '\"') AND NOT contains(activity, '\\')",
        "regexp_matches(activity[2:-2], '[!-~]')",
        f"activity <> '\"{INSIGHT_ACTIVITY}\"'",
        "regexp_full_match(ts, '\"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[.][0-9]{3}Z\"')",
        "parsed_ts IS NOT NULL",
        *(f"coalesce(starts_with({c}, '\"'), true)" for c in _TEXT),
        "(revenue_impact IS NULL OR regexp_full_match(revenue_impact, '-?[0-9]{1,15}([.][0-9]{1,17})?'))",
        "coalesce(starts_with(feature_json, '{') AND NOT contains(substr(feature_json, 2), '{')"
        " AND NOT contains(feature_json, 'NaN') AND NOT contains(feature_json, 'Infinity')"
        " AND NOT regexp_matches(feature_json, '[0-9]{17}|[eE][+-]?[0-9]{3}')"
        " AND list_unique(feature_keys) = len(feature_keys), true)",
    ]
)
"""A line DuckDB loads itself has each known key with a value of the type the stream row
wants (so no drift), `ts` in the queue's own form, no insight atom, and a flat
`feature_json` (a nested duplicate key would read differently) free of numbers that DuckDB
reads and orjson (the drift rule's parser) refuses: NaN, Infinity, out of range. A line
that merely looks so (a backslash in its activity, say) goes the Python way, which is only
slower. That it has no other key is checked by its length: see `DuckDBWarehouse.stage`."""
_SIZE = " + ".join(f"coalesce({len(c) + 4} + strlen({c}), 0)" for c in LOADED_COLUMNS)
_TEXT_SELECT = ", ".join(
    f"CASE WHEN contains({c}, '\\') THEN {c}->>'$' ELSE {c}[2:-2] END AS {c}" for c in _TEXT
)
_STAGE_SQL = f"""
SELECT coalesce({_CLEAN}, false) AS clean, 1 + {_SIZE} AS size,
    activity_id[2:-2] AS activity_id, parsed_ts AS ts,
    activity[2:-2] AS activity, feature_json, try_cast(revenue_impact AS DOUBLE) AS revenue_impact,
    {_TEXT_SELECT}
FROM (
    SELECT *, try_strptime(ts[2:-2], '{_TS_FORMAT}') AS parsed_ts, json_keys(feature_json) AS feature_keys
    FROM read_json($path, format = 'newline_delimited', ignore_errors = true, columns = {{{_JSON_COLUMNS}}})
)
"""
"""The batch, one row per line in line order (DuckDB preserves insertion order, and no
setting here turns that off); the values are read as clean lines have them (strings
without escapes, where told so). The inner query works out once what both the test and
the row need: the parsed `ts` and the keys of `feature_json`."""


def _stage_text(lines: Lines) -> bytes:
    """The batch as NDJSON for DuckDB. Its irregular lines DuckDB must not judge (a line with
    an escaped NUL, or one that would not stay one line): they are written as `0`, which is
    never clean. (A line that is not UTF-8 DuckDB reads as NULL: not clean.)"""
    if not lines.irregular:
        return lines.data
    every = list(lines)
    for i in lines.irregular:
        every[i] = b"0"
    return b"\n".join(every)


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
            self._stage_dir = str(self.path.parent)
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
        if not rows:
            return self._insert(None, {}, rows, queue_id, checkpoint)
        return self._insert(
            f"SELECT {_COLS}, _n FROM _batch", {"_batch": _stream_table(rows)}, rows, queue_id, checkpoint
        )

    def _insert(
        self,
        select: str | None,
        tables: dict[str, pa.Table],
        rows: Sequence[StreamRow],
        queue_id: str,
        checkpoint: Checkpoint | None,
    ) -> int:
        """Stores the stream rows of `select` (which may read `tables` by their names), the
        insight atoms among `rows` and the checkpoint in one transaction; returns the stream
        rows inserted or replaced (see `_stream_insert`)."""
        try:
            return self._transaction("INSERT", select, tables, rows, queue_id, checkpoint)
        except duckdb.ConstraintException:
            pass
        try:
            return self._transaction("UPSERT", select, tables, rows, queue_id, checkpoint)
        except (
            duckdb.ConversionException,
            duckdb.ConstraintException,
            duckdb.InvalidInputException,
            duckdb.OutOfRangeException,
        ) as e:
            raise DataError(str(e)) from e

    def _transaction(
        self,
        insert: str,
        select: str | None,
        tables: dict[str, pa.Table],
        rows: Sequence[StreamRow],
        queue_id: str,
        checkpoint: Checkpoint | None,
    ) -> int:
        con = self.con
        atoms = [a for a in (r.insight() for r in rows) if a is not None]
        con.begin()
        try:
            inserted = 0
            for name, table in tables.items():
                con.register(name, table)
            if select is not None:
                inserted = int(con.execute(_stream_insert(insert, select)).fetchone()[0])  # type: ignore[index]
            if atoms:
                con.register("_atoms", _atom_table(atoms))
                cols = ", ".join(_ATOM_COLUMNS)
                con.execute(
                    f"INSERT OR IGNORE INTO insight_atoms ({cols}) SELECT {cols} FROM _atoms "
                    "WHERE customer_id IS NOT NULL AND subject IS NOT NULL "
                    "AND metric IS NOT NULL AND value IS NOT NULL"
                )
            if checkpoint is not None:
                con.execute(
                    "INSERT OR REPLACE INTO _activitybi_checkpoints VALUES (?, ?, now() AT TIME ZONE 'UTC')",
                    [queue_id, orjson.dumps(checkpoint).decode()],
                )
            con.commit()
        except BaseException:
            con.rollback()
            raise
        finally:
            for name in [*tables, "_atoms"]:
                with contextlib.suppress(duckdb.Error):
                    con.unregister(name)
        return inserted

    def stage(self, lines: Lines) -> Staged:
        """DuckDB's own reader parses the batch, on a cursor of its own (so that a load may
        run meanwhile), and keeps the clean lines as an Arrow table with `_n`, each line's
        index; the rest are left to the drift rule in Python.

        DuckDB ignores keys it was not asked for, so a line counts as clean only when its
        length is that of its known keys and values as DuckDB writes them again: values are
        never longer written again (numbers keep their text, strings lose escapes at most),
        so any other key, a duplicate, whitespace or an escape makes the line longer."""
        everything = Staged(list(range(len(lines))), 0)
        buf = _stage_text(lines)
        with (
            tempfile.NamedTemporaryFile(suffix=".ndjson", dir=self._stage_dir) as f,
            self.con.cursor() as cur,
        ):
            f.write(buf)
            f.flush()
            try:
                got = cur.sql(_STAGE_SQL, params={"path": f.name}).to_arrow_table()
            except duckdb.Error:  # a line past DuckDB's object size, say: Python judges all
                return everything
        if got.num_rows != len(lines):  # never expected; then Python judges all
            return everything
        sizes = np.diff(np.frombuffer(lines.ends, np.int64), prepend=-1) - 1
        clean = got["clean"].to_numpy() & (got["size"].to_numpy() == sizes)
        clean[lines.irregular] = False
        kept = np.flatnonzero(clean)
        rows = got.drop_columns(["clean", "size"]).filter(clean).append_column("_n", pa.array(kept))
        return Staged(np.flatnonzero(~clean).tolist(), len(kept), rows)

    def load_staged(
        self, staged: Staged, rows: Sequence[tuple[int, StreamRow]], queue_id: str, checkpoint: Checkpoint
    ) -> int:
        plain = [r for _, r in rows]
        if not staged.clean:
            return self.load(plain, queue_id, checkpoint)
        select = f"SELECT {_COLS}, _n FROM _staged"
        if not rows:
            return self._insert(select, {"_staged": staged.rows}, plain, queue_id, checkpoint)
        both = f"SELECT * FROM ({select} UNION ALL SELECT {_COLS}, _n FROM _batch) ORDER BY _n"
        tables = {"_staged": staged.rows, "_batch": _stream_table(plain, [n for n, _ in rows])}
        return self._insert(both, tables, plain, queue_id, checkpoint)

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
