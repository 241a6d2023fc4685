"""What the tools act on for the life of a server process, one piece per job: the event
writer (the queue, with its errors as tool errors), the connection's customer, the rate
limits, the tool-call recorder, and the memory and ticket stores they read."""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mcp.server.mcpserver.exceptions import ToolError

from activitybi import Queue, QueueFull, config, privacy, ulid
from activitybi.memory.context import ContextService
from activitybi.memory.journal import MemoryJournal
from activitybi.query.tickets import TicketStore
from activitybi.reporting.metrics import ServerMetrics
from activitybi.serve.ratelimit import RateLimited, RateLimits

log = logging.getLogger(__name__)

T = TypeVar("T")
QUEUE_STATS = ("appended", "bytes", "rotations", "fsyncs", "rejected", "pending")
"""The counters that read as 0 while the queue cannot open (`redactions` reads as {})."""


class EventWriter:
    """The queue as the tools write it: opened on first use and again after a failure (a
    queue that cannot open, on a full disk at start, gives the tools a clear error, not a
    dead server), and every write failure turned into one clear `ToolError`."""

    def __init__(self, queue_dir: Path) -> None:
        self.queue_dir = queue_dir
        self._queue: Queue | None = None

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            self._queue = privacy.open_queue(self.queue_dir, rotate_secs=config.settings().queue_rotate_secs)
        return self._queue

    def stats(self) -> dict[str, Any]:
        try:
            return dict(self.queue.stats())
        except OSError:
            return dict.fromkeys(QUEUE_STATS, 0)

    def append(self, event: dict[str, Any]) -> str:
        return self._write(lambda q: q.append(event))

    def append_many(self, events: Sequence[dict[str, Any]]) -> list[str]:
        return self._write(lambda q: q.append_many(events))

    def _write(self, write: Callable[[Queue], T]) -> T:
        try:
            return write(self.queue)
        except QueueFull as e:
            raise ToolError(f"the event queue is full; retry shortly ({e})") from None
        except (ValueError, TypeError) as e:
            raise ToolError(str(e)) from None
        except OSError as e:
            raise ToolError(f"the event could not be written: {e.strerror or e}") from None

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()


class ToolCallRecorder:
    """Every tool call as a `called_tool` event and in the metrics; never fails the call."""

    def __init__(self, writer: EventWriter, metrics: ServerMetrics, session_id: str, source: str) -> None:
        self.writer = writer
        self.metrics = metrics
        self.session_id = session_id
        self.source = source
        self.known: frozenset[str] = frozenset()
        """The server's own tool names (set by `app.build`); any other is `unknown`."""

    def record(
        self,
        customer: str,
        tool: str,
        latency_ms: float,
        outcome: str,
        error: str | None,
        session: str | None,
    ) -> None:
        label = tool if tool in self.known else "unknown"  # customer text never becomes a label
        self.metrics.observe(label, latency_ms, None if outcome == "ok" else (error or outcome))
        features: dict[str, Any] = {"tool": label, "latency_ms": round(latency_ms, 3), "outcome": outcome}
        if label != tool:
            features["requested_tool"] = tool[:100]
        if error:
            features["error"] = error
        event = {
            "activity": "called_tool",
            "customer": customer,
            "feature_json": features,
            "_session_id": session or self.session_id,
            "_source": self.source,
        }
        try:
            self.writer.queue.append(event)
        except Exception as e:
            log.warning("could not log a %s call: %s", tool, e)


def stdio_customer() -> str:
    """`ACTIVITYBI_CUSTOMER`, else this machine's user name."""
    return config.settings().customer or getpass.getuser()


def connection_customer(stdio: str | None) -> str:
    """The connection's customer: the configured one on stdio, the bearer token's over HTTP."""
    if stdio is not None:
        return stdio
    from mcp.server.auth.middleware.auth_context import get_access_token

    token = get_access_token()
    if token is None:
        raise ToolError("not authenticated")
    return token.client_id


@dataclass
class Runtime:
    """The pieces above, for one server process."""

    writer: EventWriter
    context: ContextService
    journal: MemoryJournal
    tickets: TicketStore
    limits: RateLimits
    calls: ToolCallRecorder
    stdio_customer: str | None
    session_id: str
    source: str
    artifact_route: str | None = None
    """Where `serve --http` serves a customer's artifacts (render_card's `url`), else None."""

    @property
    def metrics(self) -> ServerMetrics:
        return self.calls.metrics

    @classmethod
    def open(cls, *, customer: str | None, source: str) -> Runtime:
        from activitybi.memory.redis_tier import RedisTier

        home = config.home()
        journal = MemoryJournal(config.Home(home).memory)
        redis = RedisTier.from_env()
        if redis is not None:
            redis.warm()
        context = ContextService(journal, config.Home(home).context, redis)
        writer = EventWriter(config.queue_dir())
        session_id = ulid()
        limits = RateLimits.from_env()
        metrics = ServerMetrics(writer.stats, context.tier_stats, limits.stats)
        rt = cls(
            writer=writer,
            context=context,
            journal=journal,
            tickets=TicketStore(
                config.Home(home).tickets, per_customer=config.settings().tickets_per_customer
            ),
            limits=limits,
            calls=ToolCallRecorder(writer, metrics, session_id, source),
            stdio_customer=customer,
            session_id=session_id,
            source=source,
        )
        try:
            _ = writer.queue  # now, when it can
        except OSError as e:
            log.warning("the queue cannot be opened yet (%s); tools will say so and retry", e)
        return rt

    def customer(self) -> str:
        return connection_customer(self.stdio_customer)

    def limit(self, action: str, customer: str, n: int = 1) -> None:
        try:
            self.limits.check(action, customer, n)
        except RateLimited as e:
            raise ToolError(str(e)) from None

    def warm(self, since_seconds: float = 86_400) -> int:
        """Builds the contexts of the customers seen lately, so their first call hits."""
        customers = self.journal.recent_customers(since_seconds)
        if self.stdio_customer is not None:
            customers = [c for c in customers if c == self.stdio_customer]
        return self.context.warm(customers)

    def close(self) -> None:
        self.writer.close()
