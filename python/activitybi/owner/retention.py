"""Retention: stream rows past `ACTIVITYBI_RETENTION_DAYS` leave the warehouse, and every
other thing the tool keeps is cleaned after its own limit (README, "How long data stays").

DuckDB rows go to one Parquet file per month under `$ACTIVITYBI_HOME/archive/`. Each
month is crash-safe without a log: the new file (the old one's rows plus the month's rows
not yet in it) is written under a temporary name, fsynced and renamed; only then are the
rows the durable file holds deleted from the table, in one transaction. A kill before the
rename leaves the table as it was; a kill after it leaves rows in both places until the
next run, which merges (never duplicates) and deletes them. `claude_stream_all` reads both
and never counts a row twice. On Snowflake the rows are optionally unloaded to a stage
first (`ACTIVITYBI_ARCHIVE_STAGE`), then deleted; a state file makes a rerun unload and
delete exactly the same rows.

Only the warehouse owner runs this (the owner loop once a day, or `activitybi retention
run`, which takes the owner's place for the while).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from activitybi import config
from activitybi.query.artifacts import ArtifactStore
from activitybi.warehouse import Warehouse

DAY = 86_400.0
STATE_FILE = "retention.json"
UNLOAD_FILE = "snowflake-unload.json"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def sql_text(value: str) -> str:
    """A string literal, for the few places DuckDB takes no bound parameter (file paths)."""
    return "'" + value.replace("'", "''") + "'"


def fsync_path(path: Path) -> None:
    """Makes a file's bytes (or a directory's entries) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replaces `path` by `data` durably: temporary name, fsync, rename, directory fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


@dataclass
class RetentionReport:
    """What one run moved (or, dry, would move) and removed, by where."""

    cutoff: dt.datetime
    months: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "months": self.months,
            "removed": self.removed,
            "dry_run": self.dry_run,
        }


# --- the archive (DuckDB) ---------------------------------------------------------------


def archive_files(archive_dir: Path) -> list[Path]:
    return sorted(archive_dir.glob("stream-*.parquet"))


def month_file(archive_dir: Path, month: str) -> Path:
    return archive_dir / f"stream-{month}.parquet"


def months_due(warehouse: Warehouse, cutoff: dt.datetime) -> dict[str, int]:
    """Stream rows older than `cutoff`, by month (YYYY-MM)."""
    rows = warehouse.execute(
        "SELECT date_trunc('month', ts) AS m, count(*) FROM claude_stream WHERE ts < ? GROUP BY m ORDER BY m",
        [cutoff],
    ).rows
    return {f"{m:%Y-%m}": int(n) for m, n in rows}


def write_parquet(con: Any, query: str, path: Path) -> None:
    """COPY `query` to `path` durably and atomically (temporary name, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    con.execute(f"COPY ({query}) TO {sql_text(str(tmp))} (FORMAT parquet, COMPRESSION zstd)")
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def archive_month(con: Any, archive_dir: Path, month: str, cutoff: dt.datetime) -> int:
    """Moves the month's rows older than `cutoff` into its Parquet file; returns how many
    left the table. Safe to run again after a kill at any point."""
    path = month_file(archive_dir, month)
    start = dt.datetime.strptime(month, "%Y-%m")
    end = (start + dt.timedelta(days=32)).replace(day=1)
    due = (
        f"SELECT * FROM claude_stream WHERE ts >= TIMESTAMP {sql_text(start.isoformat(sep=' '))} "
        f"AND ts < TIMESTAMP {sql_text(min(end, cutoff).isoformat(sep=' '))}"
    )
    if path.exists():
        old = f"read_parquet({sql_text(str(path))})"
        new = f"SELECT d.* FROM ({due}) d ANTI JOIN {old} o USING (_customer_key, activity_id)"
        if con.execute(f"SELECT count(*) FROM ({new})").fetchone()[0]:
            write_parquet(con, f"SELECT * FROM {old} UNION ALL BY NAME {new} ORDER BY ts, activity_id", path)
    else:
        write_parquet(con, f"{due} ORDER BY ts, activity_id", path)
    con.begin()
    try:
        deleted = con.execute(  # ids are per customer: another customer's row may share one
            f"DELETE FROM claude_stream s USING read_parquet({sql_text(str(path))}) a "
            "WHERE s._customer_key = a._customer_key AND s.activity_id = a.activity_id"
        ).fetchone()[0]
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return int(deleted)


def write_manifest(con: Any, archive_dir: Path) -> None:
    """`manifest.json`: per month its file, rows, ts range and SHA-256 (for whoever copies
    the archive elsewhere). Derived from the files, so it is never out of step for long."""
    months: dict[str, Any] = {}
    for path in archive_files(archive_dir):
        n, lo, hi = con.execute(
            f"SELECT count(*), min(ts), max(ts) FROM read_parquet({sql_text(str(path))})"
        ).fetchone()
        months[path.stem.removeprefix("stream-")] = {
            "file": path.name,
            "rows": int(n),
            "min_ts": lo.isoformat() if lo else None,
            "max_ts": hi.isoformat() if hi else None,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    write_atomic(archive_dir / "manifest.json", orjson.dumps({"months": months}, option=orjson.OPT_INDENT_2))


def create_archive_view(con: Any, archive_dir: Path) -> None:
    """`claude_stream_all`: the table and the archive, each row once (a row caught in both
    places by a killed run is read from the table)."""
    files = archive_files(archive_dir)
    if files:
        glob = sql_text(str(archive_dir / "stream-*.parquet"))
        body = (
            "SELECT * FROM claude_stream UNION ALL BY NAME "
            f"SELECT a.* REPLACE (a.feature_json::JSON AS feature_json) FROM read_parquet({glob}) a "
            "ANTI JOIN claude_stream s USING (_customer_key, activity_id)"
        )
    else:
        body = "SELECT * FROM claude_stream"
    con.execute(f"CREATE OR REPLACE VIEW claude_stream_all AS {body}")


def archive_duckdb(warehouse: Any, archive_dir: Path, cutoff: dt.datetime) -> dict[str, int]:
    """Every month with rows older than `cutoff`, archived; returns rows moved per month."""
    archive_dir.mkdir(parents=True, exist_ok=True)
    moved = {m: archive_month(warehouse.con, archive_dir, m, cutoff) for m in months_due(warehouse, cutoff)}
    write_manifest(warehouse.con, archive_dir)
    create_archive_view(warehouse.con, archive_dir)
    return moved


# --- Snowflake --------------------------------------------------------------------------


def archive_snowflake(warehouse: Warehouse, state_dir: Path, cutoff: dt.datetime, stage: str | None) -> int:
    """Unloads (when `stage` is set) then deletes the rows older than `cutoff` loaded
    before the run began. The plan is written first and kept until the delete is done, so a
    rerun after a kill unloads the same rows to the same path (OVERWRITE) and deletes them."""
    state_path = state_dir / UNLOAD_FILE
    try:
        plan = orjson.loads(state_path.read_bytes())
    except FileNotFoundError:
        plan = {"cutoff": cutoff.isoformat(), "loaded_before": utcnow().isoformat(), "unloaded": False}
        write_atomic(state_path, orjson.dumps(plan))
    where = "ts < ? AND _ingested_at <= ?"
    bounds = [dt.datetime.fromisoformat(plan["cutoff"]), dt.datetime.fromisoformat(plan["loaded_before"])]
    if stage and not plan["unloaded"]:
        stamp = plan["cutoff"][:10]
        warehouse.execute(
            f"COPY INTO {stage.rstrip('/')}/claude_stream/cutoff={stamp}/ "
            f"FROM (SELECT * FROM claude_stream WHERE {where}) "
            "FILE_FORMAT = (TYPE = PARQUET) HEADER = TRUE OVERWRITE = TRUE",
            bounds,
        )
        plan["unloaded"] = True
        write_atomic(state_path, orjson.dumps(plan))
    gone = warehouse.execute(f"DELETE FROM claude_stream WHERE {where}", bounds).rows
    state_path.unlink()
    return int(gone[0][0]) if gone else 0


# --- everything else --------------------------------------------------------------------


def _older_files(folder: Path, pattern: str, days: float, now: float) -> Iterator[Path]:
    if days <= 0 or not folder.is_dir():
        return
    for path in folder.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and path.stat().st_mtime < now - days * DAY:
                yield path


def _unlink_all(paths: Iterator[Path]) -> int:
    n = 0
    for path in paths:
        path.unlink(missing_ok=True)
        n += 1
    return n


def trim_quarantine(path: Path, days: float, now: dt.datetime) -> int:
    """Drops the uploader's quarantined lines older than `days`; returns how many."""
    if days <= 0 or not path.exists():
        return 0
    cutoff = (now - dt.timedelta(days=days)).isoformat()
    keep, dropped = [], 0
    for line in path.read_bytes().splitlines():
        try:
            at = str(orjson.loads(line)["at"])[:26].replace("+00:00", "")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            at = ""
        if at and at < cutoff:
            dropped += 1
        else:
            keep.append(line + b"\n")
    if dropped:
        write_atomic(path, b"".join(keep))
    return dropped


def cleanup(warehouse: Warehouse, home: Path, settings: config.Settings, now: dt.datetime) -> dict[str, int]:
    """Everything but the stream, each after its own limit (0 keeps it)."""
    paths, wall = config.Home(home), time.time()
    removed: dict[str, int] = {}
    if settings.audit_retention_days > 0:
        old = [now - dt.timedelta(days=settings.audit_retention_days)]
        n = warehouse.execute("SELECT count(*) FROM query_audit WHERE executed_at < ?", old).rows[0][0]
        if n:
            warehouse.execute("DELETE FROM query_audit WHERE executed_at < ?", old)
        removed["query_audit rows"] = int(n)
    if settings.snapshot_retention_days > 0:
        old = [now - dt.timedelta(days=settings.snapshot_retention_days)]
        n = warehouse.execute("SELECT count(*) FROM context_cache WHERE updated_at < ?", old).rows[0][0]
        if n:
            warehouse.execute("DELETE FROM context_cache WHERE updated_at < ?", old)
        removed["context_cache rows"] = int(n)
    removed["context snapshots"] = _unlink_all(
        _older_files(paths.context, "*.json", settings.snapshot_retention_days, wall)
    )
    removed["insight journals"] = _unlink_all(
        _older_files(paths.memory, "*.ndjson", settings.journal_retention_days, wall)
    )
    removed["quarantined lines"] = trim_quarantine(paths.quarantine, settings.quarantine_retention_days, now)
    removed["quarantined queue files"] = _unlink_all(
        _older_files(paths.queue / "quarantine", "*", settings.quarantine_retention_days, wall)
    )
    removed["log files"] = _unlink_all(_older_files(paths.logs, "**/*", settings.log_retention_days, wall))
    removed["artifacts"] = len(ArtifactStore.from_env(home).expire(now))
    return removed


# --- one run ----------------------------------------------------------------------------


def dry_run(
    warehouse: Warehouse, settings: config.Settings, now: dt.datetime | None = None
) -> RetentionReport:
    cutoff = (now or utcnow()) - dt.timedelta(days=settings.retention_days)
    months = months_due(warehouse, cutoff) if settings.retention_days > 0 else {}
    return RetentionReport(cutoff, months, dry_run=True)


def run(
    warehouse: Warehouse, home: Path, settings: config.Settings, now: dt.datetime | None = None
) -> RetentionReport:
    """One full run: the stream past retention, then every other limit; records when."""
    now = now or utcnow()
    paths = config.Home(home)
    report = RetentionReport(now - dt.timedelta(days=settings.retention_days))
    if settings.retention_days > 0:
        if warehouse.kind == "duckdb":
            report.months = archive_duckdb(warehouse, paths.archive, report.cutoff)
        else:
            n = archive_snowflake(warehouse, paths.lifecycle, report.cutoff, settings.archive_stage)
            report.months = {"all": n}
    report.removed = cleanup(warehouse, home, settings, now)
    write_atomic(paths.lifecycle / STATE_FILE, orjson.dumps({"last_run": time.time(), **report.to_json()}))
    return report


def due(home: Path, every: float = DAY) -> bool:
    """Whether the daily run is due (never run, or last run `every` seconds ago)."""
    try:
        last = float(orjson.loads((config.Home(home).lifecycle / STATE_FILE).read_bytes())["last_run"])
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return True
    return time.time() - last >= every
