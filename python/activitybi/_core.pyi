"""Types of the Rust extension ``activitybi._core``: the contract its bindings keep.

Checked against the built module by ``python -m mypy.stubtest activitybi._core``.
"""

import os
from array import array
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Generic, Literal, TypedDict, TypeVar, final, type_check_only

__all__ = [
    "REDACTION_KINDS",
    "ActivitybiError",
    "Checkpoint",
    "LruCache",
    "MalformedBody",
    "Queue",
    "QueueFull",
    "QueueIOError",
    "QueueReader",
    "Redactor",
    "TranscriptImporter",
    "__version__",
    "fact_id",
    "ulid",
]

__version__: str

Checkpoint = dict[str, int]
"""Consumed byte offset per segment, keyed by the segment's stem (its name without suffix)."""

class ActivitybiError(Exception):
    """Base class of the errors activitybi raises (besides ``ValueError``/``TypeError`` for
    arguments the caller got wrong). Raised as itself for a queue directory whose
    ``queue.state`` is not this version's (its magic word does not match)."""

class QueueFull(ActivitybiError):
    """``pending`` (unacknowledged events in the whole queue directory) reached
    ``max_pending``; nothing was written."""

class MalformedBody(ActivitybiError):
    """An OTLP export request body that is not the message it should be (``Queue.append_otlp``);
    nothing was written."""

class QueueIOError(ActivitybiError, OSError):
    """A queue write, fdatasync or seal failed (``errno`` as the system gave it). After a
    failed fdatasync or seal the handle refuses durable appends, ``flush`` and sealing
    with this error until the queue is reopened, after a failed write every append;
    ``Queue.stats()["io_error"]`` says why."""

@type_check_only
class QueueStats(TypedDict):
    appended: int
    """Events this handle appended."""
    bytes: int
    """Bytes this handle wrote to segments (checksums included)."""
    rotations: int
    fsyncs: int
    rejected: int
    """Events this handle refused (invalid, or the queue full)."""
    pending: int
    """Unacknowledged events in the whole directory, every process."""
    max_pending: int
    io_error: str | None
    """Why this handle refuses durable work (a failed fdatasync, seal or write), or None."""
    redactions: dict[str, int]
    """Values its redactor changed, by kind (every kind of ``REDACTION_KINDS``, zeros
    included; all zero without a redactor)."""

@type_check_only
class LruStats(TypedDict):
    hits: int
    misses: int
    evictions: int
    expirations: int
    size: int
    capacity: int

REDACTION_KINDS: tuple[str, ...]
"""What redaction counts: one kind per detector, and ``rule`` for values a ``[[rule]]``
changed (``aws_key``, ``anthropic_key``, …, ``card``, ``email``, ``ipv4``, ``ipv6``, ``rule``)."""

@final
class Redactor:
    """A redaction policy (the text of a policy TOML file, ``""`` for the default) with the
    key of its keyed hashes. Raises ``ValueError`` naming ``source``, the line and the key
    for a policy it cannot use. Give it to ``Queue(..., redactor=...)``: every event is
    then redacted before its line is written."""

    def __new__(cls, policy: str, key: bytes, *, source: str = "policy.toml") -> Redactor: ...
    def redact(self, event: str) -> str:
        """One event (the JSON text of an object) as the policy leaves it, as JSON text."""
    def token(self, value: str) -> str:
        """The token ``hash`` writes for ``value``: ``hmac:`` and 32 hex digits."""
    def counts(self) -> dict[str, int]:
        """Redactions made so far (by every queue using this redactor), by kind."""

def fact_id(customer: str, kind: str, key: str) -> str:
    """The activity_id of a fact keyed by one source key: ``<kind>:<32 hex>``, the blake2b-128
    of the JSON array ``[customer, kind, key]`` (``activitybi.capture.facts.fact_id`` of one
    key part). Raises ``ValueError`` for an empty key."""

def ulid() -> str:
    """A new ULID, monotonic within this process (26 Crockford base32 characters)."""

@final
class Queue:
    """Append-only NDJSON segments in one directory, shared by any number of processes.

    ``append`` returns once the line is in the operating system's page cache (a killed
    process loses nothing); ``durable=True`` also waits for an fdatasync covering it.
    Every line carries a CRC32C checksum that ``QueueReader`` verifies.
    """

    @property
    def path(self) -> str: ...
    def __new__(
        cls,
        path: str | os.PathLike[str],
        *,
        rotate_bytes: int = 16 * 1024 * 1024,
        rotate_secs: float = 60.0,
        max_pending: int = 100_000,
        fsync_interval_ms: int = 50,
        max_event_bytes: int = 1024 * 1024,
        redactor: Redactor | None = None,
    ) -> Queue: ...
    @property
    def redactor(self) -> Redactor | None:
        """The redactor every event passes before its line is written, or None (events
        are written as given: use ``activitybi.privacy.open_queue`` for customer events)."""
    def append(self, event: dict[str, Any] | bytes, *, durable: bool = False) -> str:
        """Write one event; fill ``activity_id`` and ``ts`` when absent; return the id.
        Raises ``QueueFull``, ``QueueIOError``, ``ValueError`` (not an event, or closed),
        ``TypeError`` (a value JSON cannot hold). A durable append whose fdatasync fails
        raises although its line was written (it may still be uploaded); once that happened,
        durable appends raise before writing anything."""
    def append_many(self, events: Iterable[dict[str, Any] | bytes], *, durable: bool = False) -> list[str]:
        """Write a batch with one copy; all or nothing."""
    def append_otlp(
        self, signal: Literal["logs", "traces"], body: bytes, customer: str, *, capture_content: bool = False
    ) -> tuple[int, int, str]:
        """Write the facts of one OTLP export request (its protobuf body), mapped to the
        vocabulary of ``activitybi.capture.facts`` in Rust, as one write. Returns the events
        appended, the records rejected (over ``max_event_bytes``) and why (at most five
        reasons). Raises ``MalformedBody`` (nothing written), ``QueueFull``, ``QueueIOError``."""
    def stats(self) -> QueueStats:
        """This handle's counters, the directory's ``pending``, and ``io_error``."""
    def flush(self) -> None:
        """fdatasync everything appended so far (``QueueIOError`` if that fails, or failed before)."""
    def close(self) -> None:
        """Seal the open segment and stop the background thread. Idempotent. After an I/O
        failure it raises ``QueueIOError`` and leaves the segment for the next open to recover."""
    def __enter__(self) -> Queue: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class QueueReader:
    """The single consumer of a queue directory (an exclusive lock; a second one raises
    ``BlockingIOError``). Yields complete lines only, from sealed and open segments.

    Lines of checksummed segments are verified: ``read_block`` returns those that fail
    apart, with the reason ``"checksum mismatch"``; segments written before checksums
    (stems of 26 characters, without ``-v2``) are read unverified."""

    @property
    def path(self) -> str: ...
    def __new__(cls, path: str | os.PathLike[str]) -> QueueReader: ...
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
        order (segments by name, then offset), without their newline or checksum; and the
        checkpoint just after the last line returned. Raises ``ActivitybiError`` when a line
        fails its check (nothing is skipped silently): ``read_block`` returns such lines apart."""
    def read_block(
        self,
        checkpoint: Checkpoint | None = None,
        *,
        max_lines: int = 10_000,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> tuple[bytes, array[int], list[int], list[tuple[str, bytes]], Checkpoint]:
        """As ``read``, as one buffer: ``(block, ends, irregular, rejected, checkpoint)``.
        ``block`` is the lines joined by ``\\n`` (``b"\\n".join`` of them); ``ends`` where each
        ends in it (``array("q")``: line ``i`` is ``block[ends[i-1] + 1 : ends[i]]``, from 0
        for the first); ``irregular`` the indices of the lines that are empty or hold a
        carriage return or an escaped NUL (``\\u0000``), which a JSON-lines reader may not
        read as one line with the same text; ``rejected`` the lines that fail their check, as
        ``(reason, line as on disk)``; the checkpoint is past both kinds."""
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

@type_check_only
class TranscriptRead(TypedDict):
    offset: int
    """Where the next read starts: after the last whole line, or at the first line of a
    model response held back (not settled, its last line may still be written)."""
    lines: int
    """Whole lines read."""
    bytes: int
    """Bytes of those lines."""
    events: int
    """Facts appended."""
    rejected: list[tuple[int, str, bytes]]
    """Lines that are not a JSON object: ``(file offset, reason, the line)``, to quarantine."""
    tools: dict[str, dict[str, str | None]]
    """The file's open tool calls after the read (tool_use id → ``tool``, ``ts``,
    ``session``, ``agent``, ``project``)."""
    prompts: dict[str, int]
    """Times each prompt was asked in the file so far (by ``prompt_digest``)."""

@final
class TranscriptImporter:
    """The per-line work of ``activitybi import claude-code``: parses Claude Code transcript
    lines, makes their ``asked_question``, ``called_model`` and ``called_tool`` facts (the
    bytes ``activitybi.capture.facts`` would give) and appends them to ``queue`` as
    ``append`` does (size cap, redaction). ``prices`` is ``(model prefix, (input, output,
    cache_write_5m, cache_write_1h, cache_read))`` in US dollars per million tokens. One
    thread at a time: a ``read`` while another runs raises ``ValueError``."""

    def __new__(
        cls,
        queue: Queue,
        *,
        customer: str,
        content: bool,
        prices: list[tuple[str, tuple[float, float, float, float, float]]],
        cost_source: str,
    ) -> TranscriptImporter: ...
    def read(
        self,
        path: str | os.PathLike[str],
        *,
        offset: int,
        session: str,
        project: str,
        tools: dict[str, dict[str, str | None]],
        prompts: dict[str, int],
        settled: bool,
        ended: bool,
    ) -> TranscriptRead:
        """Reads the whole lines of the file from ``offset`` on (a last line without its
        newline is left for later), given the file's state (``tools``, ``prompts``: left
        unchanged, the new ones are returned). ``OSError`` when the file cannot be read.
        ``session`` and ``project`` are for lines without ``sessionId`` or ``cwd``;
        ``settled``: the file is complete, a response at its end is written out; ``ended``:
        the session ended, open tool calls are written out as ``no_result``. Raises as
        ``Queue.append_many`` does; facts appended before the error stay (their ids make a
        second read harmless)."""

_V = TypeVar("_V")

@final
class LruCache(Generic[_V]):
    """Thread-safe LRU with an optional time-to-live per entry."""

    def __new__(cls, capacity: int, ttl_seconds: float | None = None) -> LruCache[_V]: ...
    def get(self, key: str, default: _V | None = None) -> _V | None: ...
    def put(self, key: str, value: _V) -> None: ...
    def delete(self, key: str) -> bool: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: str, /) -> bool: ...
    def stats(self) -> LruStats:
        """``hits``, ``misses``, ``evictions``, ``expirations``, ``size``, ``capacity``."""
