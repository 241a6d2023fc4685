"""The ticket executor: runs queued SafeSQL tickets against the warehouse, in the owner
process (the one process that may use the warehouse)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

import orjson

from activitybi.query import templates
from activitybi.query.tickets import Ticket, TicketStore, cap_rows, now
from activitybi.warehouse import QueryResult, QueryStopped, Warehouse

log = logging.getLogger(__name__)


SWEEP_EVERY_S = 3600.0


class TicketExecutor(threading.Thread):
    """Runs queued tickets against the warehouse, one at a time, in the owner process.

    Customers take turns (round robin over those with pending tickets, each customer's
    own in submission order), so one customer's heavy queries delay another's by at most
    the one already running. Finished tickets older than `retention_days` are deleted
    at start and hourly."""

    def __init__(
        self,
        store: TicketStore,
        warehouse: Warehouse,
        *,
        timeout_s: float = 60.0,
        poll: float = 0.05,
        retention_days: float = 7.0,
    ) -> None:
        super().__init__(name="activitybi-tickets", daemon=True)
        self.store = store
        self.warehouse = warehouse
        self.timeout_s = timeout_s
        self.poll = poll
        self.retention_days = retention_days
        self.stop = threading.Event()
        self._last_customer = ""

    def run(self) -> None:
        self.store.migrate()
        next_sweep = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_sweep:
                self.store.expire(self.retention_days)
                next_sweep = time.monotonic() + SWEEP_EVERY_S
            ticket = self.next_ticket()
            if ticket is None:
                self.stop.wait(self.poll)
            else:
                self.execute(ticket)

    def next_ticket(self) -> Ticket | None:
        """The oldest pending ticket of the customer after the last one served."""
        pending = self.store.pending()
        if not pending:
            return None
        keys = sorted(pending)
        key = next((k for k in keys if k > self._last_customer), keys[0])
        self._last_customer = key
        return pending[key][0]

    def execute(self, ticket: Ticket) -> None:
        if self.store.cancel_requested(ticket.ticket_id):
            self._finish(ticket, "cancelled", "cancelled before it ran", 0, 0, 0.0)
            return
        ticket.status, ticket.started_at, ticket.progress = "running", now(), 0.0
        self.store.save(ticket)
        start = time.perf_counter()

        def progress(p: float) -> None:
            if p >= 0 and p != ticket.progress:
                ticket.progress = round(p, 1)
                self.store.save(ticket)

        try:
            sql, values = templates.get(ticket.template).bind(ticket.params, ticket.customer)
            sql, values = templates.for_warehouse(sql, values, self.warehouse.kind)
            result: QueryResult = self.warehouse.run_query(
                sql,
                values,
                timeout_s=self.timeout_s,
                query_tag=ticket.query_tag,
                cancelled=lambda: self.store.cancel_requested(ticket.ticket_id),
                progress=progress,
            )
            capped = cap_rows(result.columns, result.rows, ticket.byte_cap)
            size = len(orjson.dumps(capped))
            self.store.save_result(ticket.ticket_id, capped)
        except QueryStopped as e:
            reason = (
                f"stopped: over the {self.timeout_s:g} s statement timeout"
                if e.reason == "timeout"
                else "cancelled while running"
            )
            status = "failed" if e.reason == "timeout" else "cancelled"
            self._finish(ticket, status, reason, 0, 0, time.perf_counter() - start)
            return
        except Exception as e:  # any failure ends this ticket, never the executor
            log.warning("ticket %s failed: %s", ticket.ticket_id, e)
            self._finish(ticket, "failed", str(e)[:500], 0, 0, time.perf_counter() - start)
            return
        ticket.progress = 100.0
        self._finish(ticket, "succeeded", None, len(result.rows), size, time.perf_counter() - start)

    def _finish(
        self, ticket: Ticket, status: str, error: str | None, rows: int, size: int, seconds: float
    ) -> None:
        ticket.status, ticket.error, ticket.finished_at = status, error, now()
        self.store.save(ticket)
        self.store.finished(ticket)
        try:
            self.warehouse.execute(
                "INSERT INTO query_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    ticket.ticket_id,
                    ticket.customer,
                    ticket.template,
                    ticket.params_hash,
                    ticket.query_tag,
                    rows,
                    size,
                    round(seconds * 1000, 3),
                    status,
                    dt.datetime.now(dt.UTC).replace(tzinfo=None),
                ],
            )
        except Exception:
            log.exception("could not write the audit row of ticket %s", ticket.ticket_id)
