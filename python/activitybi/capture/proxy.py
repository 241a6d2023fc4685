"""A recording proxy between an MCP client (Claude Desktop) and one stdio MCP server.

Claude Desktop has no hooks, but it talks to every MCP server over the server's stdin and
stdout, so a process in between sees every JSON-RPC message exactly. The proxy's first
duty is to be invisible: every byte is forwarded unchanged, in order, as soon as it is read
(one thread per direction, whole chunks, no parsing on the way), stderr is the child's own,
signals reach the child, and the proxy exits with the child's code. Only after a chunk is
forwarded are its complete lines parsed to observe requests and responses; what they mean
goes to a writer thread that appends to the durable queue, so a slow or failing queue can
never hold up or break the user's session.

Recorded, once per client request with an ``id`` when its response arrives: ``called_tool``
for ``tools/call`` and ``called_mcp_method`` (with ``method`` instead of ``tool``) for any
other method. Requests the server sends to the client (sampling, roots, elicitation) and
their responses are forwarded and not recorded; the two directions keep separate ids.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import IO, Any

import orjson

from activitybi import config
from activitybi._core import ulid

CHUNK = 1 << 16
MAX_LINE = 64 << 20
"""A line longer than this is still forwarded, but not observed (its bytes are not kept)."""
CONTENT_LIMIT = 16 << 10
ERROR_LIMIT = 300
WRITER_BACKLOG = 10_000
"""Events waiting for the queue; beyond this they are dropped (with one note) rather than
buffered without bound while the queue is stuck."""
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EARLY_LIMIT = 1_000


def _note(message: str) -> None:
    """One line on stderr, where Claude Desktop keeps each server's log."""
    try:
        sys.stderr.write(f"activitybi proxy: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _id_key(value: object) -> tuple[str, object] | None:
    """A request id as a dict key: 1 and "1" are different ids in JSON-RPC."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return (type(value).__name__, value)


def _clip(value: object) -> object:
    """``value`` as it is when its JSON fits in 16 KiB, else the first 16 KiB of its JSON text."""
    text = orjson.dumps(value)
    if len(text) <= CONTENT_LIMIT:
        return value
    return text[:CONTENT_LIMIT].decode("utf-8", "ignore")


def _error_text(message: Mapping[str, Any]) -> str | None:
    """The outcome of a response: None when it succeeded, else its error text."""
    error = message.get("error")
    if error is not None:
        if isinstance(error, dict):
            text = str(error.get("message") or error.get("code") or "error")
        else:
            text = str(error)
        return text[:ERROR_LIMIT]
    result = message.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        parts = [
            str(c.get("text"))
            for c in result.get("content") or ()
            if isinstance(c, dict) and c.get("type") == "text"
        ]
        return (" ".join(parts) or "error")[:ERROR_LIMIT]
    return None


@dataclass(slots=True)
class _Pending:
    method: str
    tool: str | None
    started: float  # perf_counter
    wall: float  # time.time
    request_bytes: int
    arguments: object = None


@dataclass
class Recorder:
    """Pairs client requests with server responses and hands finished calls to the writer."""

    customer: str
    server: str
    capture_content: bool
    emit: Callable[[dict[str, Any]], None]
    session_id: str = field(default_factory=ulid)
    _pending: dict[tuple[str, object], _Pending] = field(default_factory=dict)
    _early: dict[tuple[str, object], tuple[str, int, object, float]] = field(default_factory=dict)
    """Responses observed before their request was: each direction is forwarded first and
    observed after, on its own thread, so a fast server can win that race."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def from_client(self, line: bytes, at: float) -> None:
        """A complete line the client sent: remember requests, forget cancelled ones."""
        for msg, size in _messages(line):
            method = msg.get("method")
            if not isinstance(method, str):
                continue  # a response to a server-to-client request: not ours to pair
            params = msg.get("params")
            params = params if isinstance(params, dict) else {}
            if method == "notifications/cancelled":
                key = _id_key(params.get("requestId"))
                if key is not None:
                    with self._lock:
                        call = self._pending.pop(key, None)
                    if call is not None:
                        self._finish(call, "cancelled", 0, None, at)
                continue
            key = _id_key(msg.get("id"))
            if key is None:
                continue  # a notification
            tool = params.get("name") if method == "tools/call" else None
            arguments = None
            if self.capture_content:
                arguments = params.get("arguments") if method == "tools/call" else msg.get("params")
            call = _Pending(method, str(tool) if tool is not None else None, at, time.time(), size, arguments)
            with self._lock:
                early = self._early.pop(key, None)
                if early is None:
                    self._pending[key] = call
            if early is not None:
                self._finish(call, *early)

    def from_server(self, line: bytes, at: float) -> None:
        """A complete line the server sent: a response ends the matching client request."""
        for msg, size in _messages(line):
            if "method" in msg:
                continue  # a request or notification from the server
            key = _id_key(msg.get("id"))
            if key is None:
                continue
            outcome = _error_text(msg) or "ok"
            result = msg.get("result", msg.get("error")) if self.capture_content else None
            with self._lock:
                call = self._pending.pop(key, None)
                if call is None:
                    if len(self._early) >= EARLY_LIMIT:  # responses to requests never seen
                        del self._early[next(iter(self._early))]
                    self._early[key] = (outcome, size, result, at)
            if call is not None:
                self._finish(call, outcome, size, result, at)

    def abandon(self, reason: str) -> None:
        """Records every request still waiting (the server exited) with ``reason`` as its outcome."""
        with self._lock:
            calls, self._pending = list(self._pending.values()), {}
        now = time.perf_counter()
        for call in calls:
            self._finish(call, reason, 0, None, now)

    def _finish(self, call: _Pending, outcome: str, response_bytes: int, result: object, at: float) -> None:
        features: dict[str, Any] = {}
        if call.tool is not None:
            features["tool"] = call.tool
        else:
            features["method"] = call.method
        features.update(
            latency_ms=round((at - call.started) * 1000, 3),
            outcome=outcome,
            session_id=self.session_id,
            source="proxy",
            mcp_server=self.server,
            request_bytes=call.request_bytes,
            response_bytes=response_bytes,
        )
        if self.capture_content:
            features["arguments"] = _clip(call.arguments)
            features["result"] = _clip(result)
        ts = datetime.fromtimestamp(call.wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
        self.emit(
            {
                "activity": "called_tool" if call.tool is not None else "called_mcp_method",
                "ts": ts,
                "customer": self.customer,
                "feature_json": features,
                "_session_id": self.session_id,
                "_source": "proxy",
            }
        )


def _messages(line: bytes) -> list[tuple[dict[str, Any], int]]:
    """The JSON-RPC messages of one line (a batch holds several), each with its size in bytes."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return []  # garbage is forwarded, not observed
    if isinstance(value, dict):
        return [(value, len(line))]
    if isinstance(value, list):
        return [(m, len(orjson.dumps(m))) for m in value if isinstance(m, dict)]
    return []


class QueueWriter:
    """Appends events on its own thread; the first failure is noted once, then ignored."""

    def __init__(self) -> None:
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue(WRITER_BACKLOG)
        self._noted = False
        self._thread = threading.Thread(target=self._run, name="activitybi-proxy-writer", daemon=True)
        self._thread.start()

    def emit(self, event: dict[str, Any]) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self._fail("the event queue is not keeping up; dropping calls")

    def close(self, timeout: float = 5.0) -> None:
        """Writes what is waiting (for at most ``timeout`` seconds) and seals the segment."""
        try:
            self._events.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _fail(self, message: str) -> None:
        if not self._noted:
            self._noted = True
            _note(f"{message}; forwarding continues without recording")

    def _run(self) -> None:
        from activitybi import Queue, privacy

        q: Queue | None = None
        try:
            q = privacy.open_queue(config.queue_dir())
        except Exception as e:
            self._fail(f"cannot open the event queue ({e})")
        try:
            while (event := self._events.get()) is not None:
                if q is None:
                    continue
                try:
                    q.append(event)
                except Exception as e:
                    self._fail(f"cannot record a call ({e})")
        finally:
            if q is not None:
                try:
                    q.close()
                except Exception as e:
                    self._fail(f"cannot close the event queue ({e})")


def _pump(
    src: int, dst: int, observe: Callable[[bytes, float], None] | None, on_end: Callable[[], None]
) -> None:
    """Copies ``src`` to ``dst`` chunk by chunk; then feeds complete lines to ``observe``."""
    partial: list[bytes] = []  # the pieces of an unfinished line
    partial_size = 0
    try:
        while True:
            try:
                chunk = os.read(src, CHUNK)
            except InterruptedError:
                continue
            if not chunk:
                break
            at = time.perf_counter()
            try:
                _write_all(dst, chunk)
            except OSError:
                break  # the reader went away: nothing more can be delivered
            if observe is None:
                continue
            end = chunk.rfind(b"\n")
            if end < 0:
                if partial_size <= MAX_LINE:
                    partial.append(chunk)
                partial_size += len(chunk)
                continue
            if partial:
                head = chunk.find(b"\n")
                if partial_size <= MAX_LINE:
                    _observe(observe, b"".join(partial) + chunk[:head], at)
                partial.clear()
                start = head + 1
            else:
                start = 0
            if start <= end:
                for line in chunk[start:end].split(b"\n"):
                    _observe(observe, line, at)
            rest = chunk[end + 1 :]
            partial_size = len(rest)
            if rest:
                partial.append(rest)
    finally:
        on_end()


def _observe(observe: Callable[[bytes, float], None], line: bytes, at: float) -> None:
    if not line.strip():
        return
    try:
        observe(line, at)
    except Exception as e:  # observing must never stop forwarding
        _note(f"could not read a message ({e!r})")


def _close(pipe: IO[bytes]) -> None:
    """Closes our end of a pipe to the child through its file object, which owns the fd."""
    with contextlib.suppress(OSError):
        pipe.close()


def run(
    command: Sequence[str],
    name: str,
    customer: str | None,
    capture_content: bool | None = None,
) -> int:
    """Runs ``command`` as the MCP server between our stdin/stdout and its own; returns
    the exit status to leave with (the child's, or 128 + the signal that killed it)."""
    if capture_content is None:
        capture_content = config.settings().capture_content
    recorder: Recorder | None = None
    writer: QueueWriter | None = None
    if customer:
        writer = QueueWriter()
        recorder = Recorder(customer, name, capture_content, writer.emit)
    else:
        _note("capture is off because no customer is configured (--customer or ACTIVITYBI_CUSTOMER)")
    env = dict(os.environ)
    env.pop(config.PROXY_ORIGINAL_ENV, None)
    try:
        child = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0
        )
    except OSError as e:
        _note(f"cannot start {command[0]!r}: {e}")
        if writer is not None:
            writer.close()
        return 127 if isinstance(e, FileNotFoundError) else 126
    to_child, from_child = child.stdin, child.stdout
    assert to_child is not None and from_child is not None

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in SIGNALS:
        signal.signal(sig, forward)
    upstream = threading.Thread(
        target=_pump,
        args=(0, to_child.fileno(), recorder.from_client if recorder else None, lambda: _close(to_child)),
        name="activitybi-proxy-in",
        daemon=True,  # may stay blocked reading our stdin after the child is gone
    )
    downstream = threading.Thread(
        target=_pump,
        args=(from_child.fileno(), 1, recorder.from_server if recorder else None, lambda: _close(from_child)),
        name="activitybi-proxy-out",
        daemon=True,
    )
    upstream.start()
    downstream.start()
    code = child.wait()
    downstream.join(2.0)  # the last responses it wrote before exiting
    status = 128 - code if code < 0 else code
    if recorder is not None and writer is not None:
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        recorder.abandon(f"server {how} before responding")
        writer.close()
    return status
