"""Queue → warehouse, exactly once.

The uploader is the queue's single reader. Each batch is read from the checkpoint, parsed
(bad lines go to quarantine with their reason), loaded idempotently together with the new
checkpoint in one warehouse transaction, and only then acknowledged in the queue. A crash
anywhere re-reads at most the last batch, whose rows the warehouse already skips.

A warehouse that can (`LineLoader`: DuckDB) parses the lines that need no drift handling
itself, in bulk; only the rest go through the drift rule in Python, and both are loaded
in line order in the one transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import orjson

from activitybi import QueueReader, config, ulid
from activitybi.events import Rejected, StreamRow, to_row
from activitybi.warehouse import (
    Checkpoint,
    DataError,
    LineLoader,
    Lines,
    Sink,
    Staged,
    TransientError,
    Warehouse,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
BATCH_LINES = 122_880
"""DuckDB's row group: a transaction that fills one writes it to the file once, where a
smaller one goes through the write-ahead log and is written again at the checkpoint."""
BULK_LINES = 2_000
"""From this many lines a batch is parsed by the warehouse itself (`LineLoader`); below it,
staging (a temporary file, one long statement) costs more than the drift rule in Python,
and small batches are what a live server's owner sees: they decide ingestion lag."""


def queue_id(queue_dir: Path) -> str:
    """A stable identity for this machine's queue, so that one warehouse can take many."""
    path = queue_dir / "queue.id"
    if not path.exists():
        queue_dir.mkdir(parents=True, exist_ok=True)
        tmp = queue_dir / f".queue.id.{ulid()}"
        tmp.write_text(ulid())
        try:
            os.link(tmp, path)  # atomic: the first process to get here names the queue
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


@dataclass
class Backoff:
    """Exponential backoff with full jitter, without a limit on the number of tries."""

    base: float = 0.1
    cap: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay = random.uniform(0, min(self.cap, self.base * 2**self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class UploadStats:
    read: int = 0
    loaded: int = 0
    duplicates: int = 0
    quarantined: int = 0
    drifted: int = 0
    retries: int = 0
    batches: int = 0
    drift_reasons: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_commit: float | None = None


@dataclass(slots=True)
class Batch:
    """Lines read from the queue (and those that failed their checksum), the checkpoint
    just after them, and the warehouse's own parse of them when it made one."""

    lines: Lines
    damaged: list[tuple[str, bytes]]
    checkpoint: Checkpoint
    staged: Staged | None


def _merge(a: Checkpoint | None, b: Checkpoint | None) -> Checkpoint:
    out = dict(a or {})
    for k, v in (b or {}).items():
        out[k] = max(v, out.get(k, 0))
    return out


class Uploader:
    def __init__(
        self,
        queue_dir: Path,
        warehouse: Warehouse,
        *,
        quarantine_file: Path | None = None,
        batch_lines: int = BATCH_LINES,
        batch_bytes: int = 48 * 1024 * 1024,
        stop: threading.Event | None = None,
        sink: Sink | None = None,
        bulk_lines: int = BULK_LINES,
    ) -> None:
        """`sink` is where rows load, the warehouse itself unless a streaming channel."""
        self.queue_dir = queue_dir
        self.warehouse = warehouse
        self.sink: Sink = sink or warehouse
        self.reader = QueueReader(str(queue_dir))
        self.queue_id = queue_id(queue_dir)
        self.quarantine_file = quarantine_file or config.Home(queue_dir.parent).quarantine
        self.batch_lines = batch_lines
        self.batch_bytes = batch_bytes
        self.bulk_lines = bulk_lines
        self.stop = stop or threading.Event()
        self.stats = UploadStats()
        self._backoff = Backoff()
        self._checkpoint: Checkpoint | None = None
        self._caught_up_at = time.time()  # when the queue was last found drained
        self._behind = False

    def pending(self) -> int:
        return int(self.reader.pending())

    def health(self) -> dict[str, object]:
        """Progress and health, for metrics and `activitybi status`."""
        s = self.stats
        return {
            "pid": os.getpid(),
            "updated_at": time.time(),
            "pending": self.pending(),
            "loaded": s.loaded,
            "duplicates": s.duplicates,
            "quarantined": s.quarantined,
            "retries": s.retries,
            "consecutive_failures": self._backoff.attempt,
            "drifted": s.drifted,
            "batches": s.batches,
            "last_error": s.last_error,
            "last_commit": s.last_commit,
            "lag_seconds": time.time() - self._caught_up_at if self._behind else 0.0,
        }

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Runs `fn` until it succeeds, backing off on transient warehouse failures."""
        while True:
            try:
                result = fn()
            except TransientError as e:
                self.stats.retries += 1
                self.stats.last_error = f"{what}: {e}"
                delay = self._backoff.next_delay()
                log.warning("%s failed (%s); retrying in %.2fs", what, e, delay)
                if self.stop.wait(delay):
                    raise
                continue
            self._backoff.reset()
            return result

    def _start_checkpoint(self) -> Checkpoint:
        if self._checkpoint is None:
            stored = self._retrying("read checkpoint", lambda: self.sink.checkpoint(self.queue_id))
            self._checkpoint = _merge(self.reader.acked(), stored)
        return self._checkpoint

    def _quarantine(self, bad: list[tuple[str, bytes]]) -> None:
        self.quarantine_file.parent.mkdir(parents=True, exist_ok=True)
        at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        with self.quarantine_file.open("ab") as f:
            for reason, line in bad:
                f.write(orjson.dumps({"at": at, "reason": reason, "line": line.decode("utf-8", "replace")}))
                f.write(b"\n")
            f.flush()
        self.stats.quarantined += len(bad)

    def _load(self, rows: Sequence[StreamRow], checkpoint: Checkpoint | None) -> int:
        """Loads rows; a batch the warehouse refuses for what its rows hold is split until
        the refused rows are alone, and those go to quarantine. Other errors propagate."""
        try:
            return self._retrying("load", lambda: self.sink.load(rows, self.queue_id, checkpoint))
        except DataError as e:
            if len(rows) <= 1:
                self._quarantine([(f"warehouse refused: {e}", orjson.dumps(r.columns())) for r in rows])
                return self._retrying("checkpoint", lambda: self.sink.load([], self.queue_id, checkpoint))
            half = len(rows) // 2
            return self._load(rows[:half], None) + self._load(rows[half:], checkpoint)

    def _parse(self, lines: Lines, which: Iterable[int]) -> list[tuple[int, StreamRow]]:
        """The drift rule for the lines at `which`: their rows, with the line index; the
        lines it rejects go to quarantine, and drift is counted."""
        rows: list[tuple[int, StreamRow]] = []
        bad: list[tuple[str, bytes]] = []
        for i in which:
            line = lines[i]
            try:
                row = to_row(line)
            except Rejected as e:
                bad.append((str(e), line))
                continue
            rows.append((i, row))
            if row.drift:
                self.stats.drifted += 1
                for reason in row.drift:
                    self.stats.drift_reasons[reason] = self.stats.drift_reasons.get(reason, 0) + 1
        if bad:
            self._quarantine(bad)
        return rows

    def _read(self, start: Checkpoint) -> Batch:
        """The batch after `start`, not staged yet."""
        data, ends, irregular, damaged, checkpoint = self.reader.read_block(
            start, max_lines=self.batch_lines, max_bytes=self.batch_bytes
        )
        return Batch(Lines(data, ends, irregular), damaged, checkpoint, None)

    def _stage(self, batch: Batch) -> Batch:
        """The batch with the warehouse's own parse of it, when the warehouse parses lines
        itself. Touches no state of the uploader: `drain` runs it on a second thread."""
        wh = self.warehouse
        if self.sink is wh and isinstance(wh, LineLoader) and len(batch.lines) >= self.bulk_lines:
            batch.staged = wh.stage(batch.lines)
        return batch

    def _upload(self, batch: Batch) -> int:
        """Loads a batch (staged or not) with its checkpoint, then acknowledges it in the
        queue; returns the lines consumed (0 when the queue was drained)."""
        lines, damaged, checkpoint, staged = batch.lines, batch.damaged, batch.checkpoint, batch.staged
        if not lines and not damaged:
            self._caught_up_at, self._behind = time.time(), False
            return 0
        self._behind = True
        if damaged:  # failed their checksum: never loaded, kept with the reason
            self._quarantine(damaged)
        wh = self.warehouse
        if staged is not None and isinstance(wh, LineLoader):
            indexed = self._parse(lines, staged.slow)
            try:
                inserted = self._retrying(
                    "load", lambda: wh.load_staged(staged, indexed, self.queue_id, checkpoint)
                )
                consumed = staged.clean + len(indexed)
            except DataError:  # find the refused rows the slow way: every line through Python
                slow = set(staged.slow)
                clean = self._parse(lines, [i for i in range(len(lines)) if i not in slow])
                rows = [r for _, r in sorted(indexed + clean, key=lambda t: t[0])]
                inserted, consumed = self._load(rows, checkpoint), len(rows)
        else:
            rows = [r for _, r in self._parse(lines, range(len(lines)))]
            inserted, consumed = self._load(rows, checkpoint), len(rows)
        self.reader.ack(checkpoint)
        self._checkpoint = checkpoint
        self.stats.read += len(lines) + len(damaged)
        self.stats.loaded += inserted
        self.stats.duplicates += consumed - inserted
        self.stats.batches += 1
        self.stats.last_commit = time.time()
        return len(lines) + len(damaged)

    def step(self) -> int:
        """Uploads one batch; returns the lines consumed (0 when the queue is drained)."""
        return self._upload(self._stage(self._read(self._start_checkpoint())))

    def drain(self, on_batch: Callable[[int], None] | None = None) -> UploadStats:
        """Uploads everything in the queue now, then returns. A second thread stages each
        batch (DuckDB parses it, releasing the GIL) while this one loads the batch before
        and reads the batch after; batches still commit and acknowledge one by one, in
        order, and a batch read or staged ahead but not loaded is read again next time."""
        with ThreadPoolExecutor(1, thread_name_prefix="activitybi-stage") as stager:
            last_read = self._read(self._start_checkpoint())
            staging = stager.submit(self._stage, last_read)
            while not self.stop.is_set():
                ahead = self._read(last_read.checkpoint) if last_read.lines or last_read.damaged else None
                batch = staging.result()
                if ahead is not None:
                    last_read, staging = ahead, stager.submit(self._stage, ahead)
                n = self._upload(batch)
                del batch  # its lines are not kept while the next batch is read
                if on_batch:
                    on_batch(n)
                if n == 0:
                    break
        return self.stats

    def close(self) -> None:
        self.reader.close()
        if self.sink is not self.warehouse:
            self.sink.close()


def open_uploader(
    queue_dir: Path, stop: threading.Event, on_wait: Callable[[str], object] | None = None
) -> Uploader | None:
    """The queue's uploader, on the configured warehouse. Raises BlockingIOError when
    another process reads the queue; waits, with backoff, while the warehouse is away or
    busy (`on_wait` hears about it once); returns None if stopped meanwhile."""
    from activitybi.warehouse import open_warehouse

    QueueReader(str(queue_dir)).close()  # BlockingIOError now, before any warehouse work
    backoff = Backoff()
    while not stop.is_set():
        try:
            warehouse = open_warehouse()
        except TransientError as e:
            if on_wait is not None and backoff.attempt == 0:
                on_wait(f"waiting for the warehouse: {e}")
            stop.wait(backoff.next_delay())
            continue
        try:
            warehouse.init()
            return Uploader(queue_dir, warehouse, stop=stop, sink=streaming_sink(warehouse))
        except BaseException:
            warehouse.close()
            raise
    return None


def streaming_sink(warehouse: Warehouse) -> Sink | None:
    """A Snowpipe Streaming channel into the warehouse when `ACTIVITYBI_SNOWFLAKE_LOAD` is
    streaming (Snowflake only), else None: rows load through the warehouse itself."""
    if warehouse.kind != "snowflake" or config.settings().snowflake_load != "streaming":
        return None
    from activitybi.warehouse.snowpipe import SnowpipeStreamer, StreamingLoad

    return StreamingLoad(warehouse, SnowpipeStreamer.from_env())
