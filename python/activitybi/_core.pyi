"""Types of the Rust extension ``activitybi._core``."""

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

__version__: str

Checkpoint = dict[str, int]
"""Consumed byte offset per segment, keyed by the segment's stem (its name without suffix)."""

class QueueFull(Exception):
    """``pending`` (unacknowledged events in the whole queue directory) reached ``max_pending``."""

def ulid() -> str:
    """A new ULID, monotonic within this process (26 Crockford base32 characters)."""

class Queue:
    """Append-only NDJSON segments in one directory, shared by any number of processes.

    ``append`` returns once the line is in the operating system's page cache (a killed
    process loses nothing); ``durable=True`` also waits for an fdatasync covering it.
    """

    path: str
    def __init__(
        self,
        path: str,
        *,
        rotate_bytes: int = 16 * 1024 * 1024,
        rotate_secs: float = 60.0,
        max_pending: int = 100_000,
        fsync_interval_ms: int = 50,
        max_event_bytes: int = 1024 * 1024,
    ) -> None: ...
    def append(self, event: Mapping[str, Any] | bytes, *, durable: bool = False) -> str:
        """Write one event; fill ``activity_id`` and ``ts`` when absent; return the id."""
    def append_many(self, events: Iterable[Mapping[str, Any] | bytes], *, durable: bool = False) -> list[str]:
        """Write a batch with one copy; all or nothing."""
    def stats(self) -> dict[str, int]:
        """``appended``, ``bytes``, ``rotations``, ``fsyncs``, ``rejected`` (this instance)
        and ``pending`` (the whole directory, every process)."""
    def flush(self) -> None:
        """fdatasync everything appended so far."""
    def close(self) -> None:
        """Seal the open segment and stop the background thread. Idempotent."""
    def __enter__(self) -> Queue: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

class QueueReader:
    """The single consumer of a queue directory (an exclusive lock; a second one raises
    ``BlockingIOError``). Yields complete lines only, from sealed and open segments."""

    path: str
    def __init__(self, path: str) -> None: ...
    def acked(self) -> Checkpoint:
        """The acknowledged checkpoint stored in the directory."""
    def read(
        self,
        checkpoint: Checkpoint | None = None,
        *,
        max_lines: int = 10_000,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> tuple[list[bytes], Checkpoint]:
        """Complete lines after ``checkpoint`` (default: the acknowledged one), in a stable
        order (segments by name, then offset), without their newline; and the checkpoint
        just after the last line returned."""
    def ack(self, checkpoint: Checkpoint) -> int:
        """Store ``checkpoint`` durably, count its lines off ``pending``, delete sealed
        segments it fully covers. Returns the number of lines newly acknowledged."""
    def pending(self) -> int:
        """Unacknowledged events in the whole directory, from every process."""
    def close(self) -> None: ...
    def __enter__(self) -> QueueReader: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

_V = TypeVar("_V")

class LruCache(Generic[_V]):
    """Thread-safe LRU with an optional time-to-live per entry."""

    def __init__(self, capacity: int, ttl_seconds: float | None = None) -> None: ...
    def get(self, key: str, default: _V | None = None) -> _V | None: ...
    def put(self, key: str, value: _V) -> None: ...
    def delete(self, key: str) -> bool: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: str) -> bool: ...
    def stats(self) -> dict[str, int]:
        """``hits``, ``misses``, ``evictions``, ``expirations``, ``size``, ``capacity``."""
