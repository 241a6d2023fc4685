"""The warehouse behind one small interface: DuckDB (embedded default) or Snowflake.

A backend loads stream rows idempotently (an `activity_id` already present is skipped)
and stores the uploader's queue checkpoint in the same transaction, so a crash at any
point leaves every event loaded exactly once.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, runtime_checkable

from activitybi.events import StreamRow

Checkpoint = dict[str, int]
Params = Sequence[Any] | Mapping[str, Any]


class TransientError(Exception):
    """The warehouse cannot be reached or is busy right now; the same call may succeed later."""


class DataError(Exception):
    """The warehouse refused rows for what they hold (a value out of range, say): the
    uploader isolates the rows and quarantines them. Any other error stops the upload."""


class QueryStopped(Exception):
    """The warehouse stopped a query: `reason` is 'timeout' or 'cancelled'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


class Sink(Protocol):
    """Where the uploader loads: a `Warehouse` itself, or a streaming channel into one."""

    def load(self, rows: Sequence[StreamRow], queue_id: str, checkpoint: Checkpoint | None) -> int: ...

    def checkpoint(self, queue_id: str) -> Checkpoint | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Lines:
    """Queue lines as `QueueReader.read_block` hands them out: one buffer, the lines joined
    by newlines, where each ends in it, and which are irregular (empty, or with a carriage
    return or an escaped NUL). A line is cut out only where it is needed alone (the drift
    rule, quarantine); the warehouse reads the buffer as it is."""

    data: bytes
    ends: array[int]
    irregular: list[int]

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> bytes:
        return self.data[self.ends[i - 1] + 1 if i else 0 : self.ends[i]]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.data.split(b"\n") if self.ends else ())


@dataclass(slots=True)
class Staged:
    """A batch of queue lines the warehouse has parsed itself: `slow` are the indices of the
    lines it left for the Python drift rule, `clean` how many it kept, `rows` those lines as
    the warehouse parsed them (its own form, for `load_staged`). Self-contained, so that the
    next batch can be staged while this one loads."""

    slow: list[int]
    clean: int
    rows: Any = None


@runtime_checkable
class LineLoader(Protocol):
    """A warehouse that parses clean lines itself, in bulk (the uploader's fast path)."""

    def stage(self, lines: Lines) -> Staged:
        """Parses the lines that need no drift handling. Safe to call from another thread
        while a load runs (the uploader stages the next batch meanwhile)."""

    def load_staged(
        self, staged: Staged, rows: Sequence[tuple[int, StreamRow]], queue_id: str, checkpoint: Checkpoint
    ) -> int:
        """Like `load`, with the staged lines and `rows` (each with its line index) inserted
        in line order. Raises DataError when a row is refused (nothing is stored then)."""


class Warehouse(Protocol):
    kind: str

    def init(self) -> list[str]:
        """Applies every DDL file of this backend (idempotent); returns their names."""

    def load(self, rows: Sequence[StreamRow], queue_id: str, checkpoint: Checkpoint | None) -> int:
        """Inserts the rows whose activity_id is new (and the insight atoms among them)
        and stores `checkpoint` (when given) for `queue_id`, atomically. Returns rows
        inserted."""

    def checkpoint(self, queue_id: str) -> Checkpoint | None:
        """The checkpoint stored by the last committed `load` of this queue."""

    def execute(self, sql: str, params: Params = ()) -> QueryResult:
        """Runs one statement with bound parameters."""

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
        """Runs one template query, stopping it (QueryStopped) past `timeout_s` or when
        `cancelled()`; reports progress in percent when the warehouse knows it."""

    def refresh_context(self) -> None:
        """Rebuilds `context_cache` from the stream (a task does it on Snowflake)."""

    def close(self) -> None: ...


def source_rank_sql(column: str) -> str:
    """SQL for the precedence rank of a row's `_source` (`capture.facts.SOURCE_RANK`)."""
    from activitybi.capture.facts import SOURCE_RANK

    cases = " ".join(f"WHEN '{source}' THEN {rank}" for source, rank in SOURCE_RANK.items())
    return f"(CASE {column} {cases} ELSE 0 END)"


def ddl_files(kind: str) -> list[tuple[str, str]]:
    """(name, text) of the numbered DDL files of a backend, in order."""
    folder = resources.files("activitybi") / "ddl" / kind
    files = sorted(
        (p for p in folder.iterdir() if p.name[:1].isdigit() and p.name.endswith(".sql")),
        key=lambda p: p.name,
    )
    return [(p.name, p.read_text()) for p in files]


def configured_kind() -> str:
    from activitybi import config

    return config.settings().warehouse


def open_warehouse(kind: str | None = None) -> Warehouse:
    """The configured warehouse (`ACTIVITYBI_WAREHOUSE`, default duckdb)."""
    kind = kind or configured_kind()
    if kind == "snowflake":
        from activitybi import extras

        extras.require("snowflake.connector", "snowflake", "the Snowflake warehouse")
        from activitybi.warehouse.snowflake import SnowflakeWarehouse

        return SnowflakeWarehouse.from_env()
    from activitybi.warehouse.duckdb import DuckDBWarehouse

    return DuckDBWarehouse.open_default()
