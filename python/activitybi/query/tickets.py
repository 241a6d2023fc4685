"""Query tickets: `submit_query` returns one at once; the warehouse owner runs it.

Tickets are files under `$ACTIVITYBI_HOME/tickets/`, so any server process can submit
and read them while one process (the warehouse owner) executes them, and they survive a
restart: a ticket found `running` at start-up was interrupted and runs again. Results
never exceed their byte cap: past it, a deterministic sample of whole rows is kept and
the result says `sampled`, with the total row count.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from activitybi import ulid
from activitybi.query import templates

log = logging.getLogger(__name__)

DEFAULT_BYTE_CAP = 64 * 1024
FINAL = ("succeeded", "failed", "cancelled")


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")


@dataclass
class Ticket:
    ticket_id: str
    customer: str
    template: str
    params: dict[str, Any]
    params_hash: str
    byte_cap: int
    query_tag: str
    status: str = "queued"
    progress: float | None = None
    error: str | None = None
    submitted_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None

    def public(self) -> dict[str, Any]:
        """What the customer sees of it."""
        out = asdict(self)
        del out["customer"]
        return out


class TicketStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, ticket_id: str, suffix: str = "json") -> Path:
        if not ticket_id.isalnum():  # ids are ULIDs; anything else could be a path
            raise KeyError(ticket_id)
        return self.root / f"{ticket_id}.{suffix}"

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def submit(self, customer: str, template: str, params: dict[str, Any], byte_cap: int) -> Ticket:
        """Validates (refusing before anything is written) and queues a query."""
        templates.get(template).bind(params, customer)
        ticket = Ticket(
            ticket_id=ulid(),
            customer=customer,
            template=template,
            params=params,
            params_hash=templates.params_hash(template, params),
            byte_cap=byte_cap,
            query_tag=f"cdesk_{uuid.uuid4()}",
            submitted_at=now(),
        )
        self.save(ticket)
        return ticket

    def save(self, ticket: Ticket) -> None:
        self._write(self._path(ticket.ticket_id), orjson.dumps(asdict(ticket)))

    def get(self, ticket_id: str, customer: str | None = None) -> Ticket | None:
        """The ticket, or None when it does not exist or is another customer's."""
        try:
            ticket = Ticket(**orjson.loads(self._path(ticket_id).read_bytes()))
        except (KeyError, FileNotFoundError):
            return None
        if customer is not None and ticket.customer != customer:
            return None
        if ticket.status == "queued" and self.cancel_requested(ticket_id):
            ticket.status = "cancelled"
        return ticket

    def result(self, ticket_id: str) -> dict[str, Any] | None:
        try:
            return dict(orjson.loads(self._path(ticket_id, "result").read_bytes()))
        except FileNotFoundError:
            return None

    def save_result(self, ticket_id: str, result: dict[str, Any]) -> None:
        self._write(self._path(ticket_id, "result"), orjson.dumps(result))

    def cancel(self, ticket_id: str) -> None:
        self._path(ticket_id, "cancel").touch()

    def cancel_requested(self, ticket_id: str) -> bool:
        return self._path(ticket_id, "cancel").exists()

    def unfinished(self) -> list[Ticket]:
        """Queued and interrupted tickets, oldest first."""
        out = []
        for path in sorted(self.root.glob("*.json")):
            ticket = self.get(path.stem)
            if ticket is not None and ticket.status not in FINAL:
                out.append(ticket)
        return out


def jsonable(value: Any) -> Any:
    """A warehouse value as JSON carries it: integers past 64 bits (a HUGEINT sum) and
    decimals as text, dates as ISO text."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, dt.date | dt.time | dt.timedelta) or not isinstance(
        value, str | int | float | bool | list | dict | type(None)
    ):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return value


def cap_rows(columns: list[str], rows: list[tuple[Any, ...]], byte_cap: int) -> dict[str, Any]:
    """Rows as JSON objects within `byte_cap`; past it, a deterministic sample of whole
    rows (the rows whose index hashes lowest), in their original order."""
    records = [dict(zip(columns, map(jsonable, r), strict=True)) for r in rows]
    encoded = [orjson.dumps(r) for r in records]
    total = sum(len(e) + 1 for e in encoded) + 2
    out: dict[str, Any] = {
        "columns": columns,
        "total_rows": len(rows),
        "byte_cap": byte_cap,
        "sampled": False,
    }
    if total <= byte_cap:
        out["rows"] = records
        return out
    overhead = len(orjson.dumps({**out, "rows": [], "sampled": True, "returned_rows": 0})) + 32
    order = sorted(
        range(len(rows)),
        key=lambda i: hashlib.blake2b(i.to_bytes(8, "little"), digest_size=8).digest(),
    )
    keep: list[int] = []
    used = overhead
    for i in order:
        if used + len(encoded[i]) + 1 > byte_cap:
            continue
        keep.append(i)
        used += len(encoded[i]) + 1
    keep.sort()
    out.update(rows=[records[i] for i in keep], sampled=True, returned_rows=len(keep))
    return out
