"""DuckDB, the embedded default: one file under $ACTIVITYBI_HOME, no account.

DuckDB lets one process open a file for writing. The process that holds the queue's
reader lock (the uploader) owns it; another process that tries gets `TransientError`
("lock held") and retries, or hands its work over through the queue.
"""

from __future__ import annotations

import contextlib
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
    Params,
    QueryResult,
    QueryStopped,
    Staged,
    TransientError,
    ddl_files,
)

_STREAM_TYPES = {"ts": pa.timestamp("us"), "revenue_impact": pa.float64()}
_ATOM_COLUMNS = (
    "atom_id",
    "customer_id",
    "subject",
    "metric",
    "value",
    "provenance_query_hash",
    "ts",
)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _stream_table(rows: Sequence[StreamRow]) -> pa.Table:
    columns: dict[str, list[Any]] = {c: [] for c in LOADED_COLUMNS}
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


_STAGED = "_activitybi_staged"
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
        f"try_strptime(ts[2:-2], '{_TS_FORMAT}') IS NOT NULL",
        *(f"coalesce(starts_with({c}, '\"'), true)" for c in _TEXT),
        "coalesce(regexp_full_match(revenue_impact, '-?[0-9]{1,15}([.][0-9]{1,17})?'), true)",
        "coalesce(starts_with(feature_json, '{') AND NOT contains(substr(feature_json, 2), '{')"
        " AND NOT contains(feature_json, 'NaN') AND NOT contains(feature_json, 'Infinity')"
        " AND NOT regexp_matches(feature_json, '[0-9]{17}|[eE][+-]?[0-9]{3}')"
        " AND list_unique(json_keys(feature_json)) = len(json_keys(feature_json)), true)",
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
CREATE OR REPLACE TEMP TABLE {_STAGED} AS
SELECT coalesce({_CLEAN}, false) AS clean, 1 + {_SIZE} AS size,
    activity_id[2:-2] AS activity_id, try_strptime(ts[2:-2], '{_TS_FORMAT}') AS ts,
    activity[2:-2] AS activity, feature_json, try_cast(revenue_impact AS DOUBLE) AS revenue_impact,
    {_TEXT_SELECT}
FROM read_json($path, format = 'newline_delimited', ignore_errors = true,
    columns = {{{_JSON_COLUMNS}}})
"""
"""The batch, one row per line in line order (DuckDB preserves insertion order, so the
temporary table's rowid is the line's index); the values are read as clean lines have
them (strings without escapes, where told so)."""


def _stage_text(lines: Sequence[bytes]) -> tuple[bytes, set[int]]:
    """The batch as NDJSON for DuckDB, and the lines it must not judge: an escaped NUL, or a
    line that would not stay one line (empty, or with a carriage return). Those are written
    as `0`, which is never clean. (A line that is not UTF-8 DuckDB reads as NULL: not clean.)"""
    buf = b"\n".join(lines)
    suspects: set[int] = set()
    if b"\r" in buf or b"\\u0000" in buf or not all(lines):
        suspects = {i for i, line in enumerate(lines) if b"\r" in line or b"\\u0000" in line or not line}
        buf = b"\n".join(b"0" if i in suspects else line for i, line in enumerate(lines))
    return buf, suspects


def _atom_table(atoms: list[dict[str, Any]]) -> pa.Table:
    data = {c: [a[c] for a in atoms] for c in _ATOM_COLUMNS}
    data["value"] = [_json(v) for v in data["value"]]
    return pa.table(
        {c: pa.array(v, type=pa.timestamp("us") if c == "ts" else pa.string()) for c, v in data.items()}
    )


class DuckDBWarehouse:
    kind = "duckdb"

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
            self._stage_dir = str(self.path.parent)
        except duckdb.IOException as e:
            raise TransientError(f"DuckDB file {self.path} is busy: {e}") from e

    @classmethod
    def open_default(cls) -> DuckDBWarehouse:
        return cls(config.home() / "warehouse.duckdb")

    def init(self) -> list[str]:
        names = []
        for name, sql in ddl_files(self.kind):
            self.con.execute(sql)
            names.append(name)
        return names

    def load(self, rows: Sequence[StreamRow], queue_id: str, checkpoint: Checkpoint | None) -> int:
        select = f"SELECT {', '.join(LOADED_COLUMNS)} FROM _batch" if rows else None
        return self._insert(select, _stream_table(rows) if rows else None, rows, queue_id, checkpoint)

    def _insert(
        self,
        select: str | None,
        batch: pa.Table | None,
        rows: Sequence[StreamRow],
        queue_id: str,
        checkpoint: Checkpoint | None,
    ) -> int:
        """Inserts the stream rows of `select` (which may read `batch` as `_batch`), the
        insight atoms among `rows` and the checkpoint in one transaction; returns the stream
        rows inserted. A plain INSERT is tried first: it costs half of INSERT OR IGNORE,
        and a batch with an id already stored (rare: a re-read after a crash) is then
        inserted again, skipping those ids."""
        try:
            return self._transaction("INSERT", select, batch, rows, queue_id, checkpoint)
        except duckdb.ConstraintException:
            pass
        try:
            return self._transaction("INSERT OR IGNORE", select, batch, rows, queue_id, checkpoint)
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
        batch: pa.Table | None,
        rows: Sequence[StreamRow],
        queue_id: str,
        checkpoint: Checkpoint | None,
    ) -> int:
        con = self.con
        atoms = [a for a in (r.insight() for r in rows) if a is not None]
        con.begin()
        try:
            inserted = 0
            if batch is not None:
                con.register("_batch", batch)
            if select is not None:
                sql = f"{insert} INTO claude_stream ({', '.join(LOADED_COLUMNS)}) {select}"
                inserted = int(con.execute(sql).fetchone()[0])  # type: ignore[index]
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
            for name in ("_batch", "_atoms"):
                with contextlib.suppress(duckdb.Error):
                    con.unregister(name)
        return inserted

    def stage(self, lines: Sequence[bytes]) -> Staged:
        """DuckDB's own reader parses the batch into a temporary table and keeps the clean
        lines; the rest are left to the drift rule in Python.

        DuckDB ignores keys it was not asked for, so a line counts as clean only when its
        length is that of its known keys and values as DuckDB writes them again: values are
        never longer written again (numbers keep their text, strings lose escapes at most),
        so any other key, a duplicate, whitespace or an escape makes the line longer."""
        buf, suspects = _stage_text(lines)
        with tempfile.NamedTemporaryFile(suffix=".ndjson", dir=self._stage_dir) as f:
            f.write(buf)
            f.flush()
            try:
                self.con.execute(_STAGE_SQL, {"path": f.name})
            except duckdb.Error:  # a line past DuckDB's object size, say: Python judges all
                return Staged(list(range(len(lines))), 0)
        got = self.con.execute(f"SELECT clean, size FROM {_STAGED} ORDER BY rowid").fetchnumpy()
        sizes = np.fromiter(map(len, lines), np.int64, len(lines))
        if len(got["clean"]) != len(lines):  # never expected; then Python judges all
            return Staged(list(range(len(lines))), 0)
        clean = got["clean"] & (got["size"] == sizes)
        if suspects:
            clean[sorted(suspects)] = False
        slow = np.flatnonzero(~clean)
        demoted = np.flatnonzero(~clean & got["clean"])
        if len(demoted):
            self.con.execute(
                f"UPDATE {_STAGED} SET clean = false WHERE list_contains($n, rowid)", {"n": demoted.tolist()}
            )
        return Staged(slow.tolist(), len(lines) - len(slow))

    def load_staged(
        self, staged: Staged, rows: Sequence[tuple[int, StreamRow]], queue_id: str, checkpoint: Checkpoint
    ) -> int:
        cols = ", ".join(LOADED_COLUMNS)
        plain = [r for _, r in rows]
        if not staged.clean:  # the staged table may be another batch's: leave it
            return self.load(plain, queue_id, checkpoint)
        if not rows:  # the staged rows are in line order already
            return self._insert(
                f"SELECT {cols} FROM {_STAGED} WHERE clean", None, plain, queue_id, checkpoint
            )
        batch = _stream_table(plain).append_column("n", pa.array([n for n, _ in rows], pa.int64()))
        select = (
            f"SELECT {cols} FROM (SELECT rowid AS n, {cols} FROM {_STAGED} WHERE clean "
            f"UNION ALL SELECT n, {cols} FROM _batch) ORDER BY n"
        )
        return self._insert(select, batch, plain, queue_id, checkpoint)

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

    def close(self) -> None:
        self.con.close()
