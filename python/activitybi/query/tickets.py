"""Query tickets: `submit_query` returns one at once; the warehouse owner runs it.

Tickets are files under `$ACTIVITYBI_HOME/tickets/`, so any server process can submit
and read them while one process (the warehouse owner) executes them, and they survive a
restart: a ticket found `running` at start-up was interrupted and runs again. Results
never exceed their byte cap: past it, a deterministic sample of whole rows is kept and
the result says `sampled`, with the total row count.

Layout (docs/architecture.md): `<YYYY-MM-DD>/<id>.json|.result|.cancel`, the day being
the submission day that the ULID itself encodes, so a ticket is found from its id alone
and a whole day expires at once; and `pending/<customer key>/<id>`, an empty marker per
unfinished ticket, so the owner lists only what it still has to run, by customer (for
round robin and the per-customer cap), however many tickets were ever asked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from activitybi import ulid
from activitybi.query import templates

log = logging.getLogger(__name__)

DEFAULT_BYTE_CAP = 64 * 1024
DEFAULT_PER_CUSTOMER = 20
FINAL = ("succeeded", "failed", "cancelled")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_SUFFIXES = (".json", ".result", ".cancel")


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")


class TooManyTickets(Exception):
    """A customer already has as many unfinished tickets as the cap allows."""


def submitted_day(ticket_id: str) -> str:
    """The UTC day (YYYY-MM-DD) a ticket id's ULID was minted; KeyError for anything that
    is not a ULID (it could be a path)."""
    if len(ticket_id) != 26 or not all(c in _CROCKFORD for c in ticket_id):
        raise KeyError(ticket_id)
    ms = 0
    for c in ticket_id[:10]:
        ms = ms * 32 + _CROCKFORD.index(c)
    try:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")
    except (ValueError, OverflowError, OSError):  # past year 9999: no ticket we minted
        raise KeyError(ticket_id) from None


def customer_key(customer: str) -> str:
    """The customer's folder name under `pending/` (a customer may be any text)."""
    return hashlib.blake2b(customer.encode(), digest_size=10).hexdigest()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on a folder: submits of one customer count and add in turn."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
    def __init__(self, root: Path, *, per_customer: int = DEFAULT_PER_CUSTOMER) -> None:
        self.root = root
        self.pending_root = root / "pending"
        self.per_customer = per_customer
        self.pending_root.mkdir(parents=True, exist_ok=True)

    def _path(self, ticket_id: str, suffix: str = "json") -> Path:
        return self.root / submitted_day(ticket_id) / f"{ticket_id}.{suffix}"

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def submit(self, customer: str, template: str, params: dict[str, Any], byte_cap: int) -> Ticket:
        """Validates (refusing before anything is written) and queues a query; raises
        TooManyTickets when the customer already has `per_customer` unfinished."""
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
        folder = self.pending_root / customer_key(customer)
        for _ in range(10):  # the owner removes an empty folder: then make it again
            folder.mkdir(exist_ok=True)
            try:
                with _locked(folder):
                    if len(os.listdir(folder)) >= self.per_customer:
                        raise TooManyTickets(
                            f"too many queries waiting: {self.per_customer} queued or running"
                            " for this user; wait for one to finish or cancel one"
                        )
                    # The ticket first, then its marker: a crash between leaves a ticket
                    # nobody was told about, never a marker without a ticket.
                    self.save(ticket)
                    (folder / ticket.ticket_id).touch(exist_ok=False)
                    return ticket
            except FileNotFoundError:
                continue
        raise RuntimeError(f"could not queue a ticket in {folder}")

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
        path = self._path(ticket_id, "cancel")
        path.parent.mkdir(exist_ok=True)
        path.touch()

    def cancel_requested(self, ticket_id: str) -> bool:
        return self._path(ticket_id, "cancel").exists()

    def finished(self, ticket: Ticket) -> None:
        """Drops the pending marker of a ticket saved in a final state."""
        with contextlib.suppress(FileNotFoundError):
            (self.pending_root / customer_key(ticket.customer) / ticket.ticket_id).unlink()

    def pending(self) -> dict[str, list[Ticket]]:
        """Queued and interrupted tickets by customer key, oldest first. Reads only the
        markers; drops those of finished or vanished tickets and empty customer folders."""
        out: dict[str, list[Ticket]] = {}
        with os.scandir(self.pending_root) as folders:
            customers = [f.name for f in folders if f.is_dir()]
        for key in customers:
            folder = self.pending_root / key
            try:
                ids = sorted(os.listdir(folder))
            except FileNotFoundError:
                continue
            for ticket_id in ids:
                ticket = self.get(ticket_id)
                if ticket is None or ticket.status in FINAL:
                    with contextlib.suppress(FileNotFoundError):
                        (folder / ticket_id).unlink()
                    continue
                out.setdefault(key, []).append(ticket)
            if key not in out:
                with contextlib.suppress(OSError):  # not empty any more: a submit won
                    folder.rmdir()
        return out

    def unfinished(self) -> list[Ticket]:
        """Queued and interrupted tickets, oldest first."""
        return sorted((t for ts in self.pending().values() for t in ts), key=lambda t: t.ticket_id)

    def expire(self, retention_days: float, today: dt.date | None = None) -> int:
        """Deletes the days of tickets submitted more than `retention_days` before
        `today` (0 keeps everything); an unfinished ticket stays. Returns files removed."""
        if retention_days <= 0:
            return 0
        today = today or dt.datetime.now(dt.UTC).date()
        cutoff = (today - dt.timedelta(days=retention_days)).isoformat()
        keep = {t.ticket_id for t in self.unfinished()}
        removed = 0
        for day in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name[:1].isdigit()):
            if day.name >= cutoff:
                break
            for path in day.iterdir():
                if path.name.lstrip(".").split(".")[0] not in keep:
                    path.unlink(missing_ok=True)
                    removed += 1
            with contextlib.suppress(OSError):  # an unfinished ticket is still in it
                day.rmdir()
        return removed

    def forget(self, customer: str) -> int:
        """Deletes every ticket of `customer`, with its result, cancel request and pending
        marker (for `activitybi forget`). Returns the tickets removed."""
        removed = 0
        for day in (p for p in self.root.iterdir() if p.is_dir() and p.name[:1].isdigit()):
            for path in day.glob("*.json"):
                with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError, TypeError):
                    if Ticket(**orjson.loads(path.read_bytes())).customer != customer:
                        continue
                    for suffix in _SUFFIXES:
                        path.with_suffix(suffix).unlink(missing_ok=True)
                    removed += 1
        shutil.rmtree(self.pending_root / customer_key(customer), ignore_errors=True)
        return removed

    def migrate(self) -> int:
        """Moves tickets of the flat layout (`tickets/<id>.json`, before day folders) into
        their day, with a marker for each unfinished one. Once, at the owner's start."""
        moved = 0
        for path in list(self.root.iterdir()):
            if not path.is_file() or path.suffix not in _SUFFIXES or path.name.startswith("."):
                continue
            try:
                target = self._path(path.stem, path.suffix[1:])
            except KeyError:
                continue
            target.parent.mkdir(exist_ok=True)
            os.replace(path, target)
            moved += 1
            if path.suffix == ".json":
                ticket = self.get(path.stem)
                if ticket is not None and ticket.status not in FINAL:
                    folder = self.pending_root / customer_key(ticket.customer)
                    folder.mkdir(exist_ok=True)
                    (folder / ticket.ticket_id).touch()
        return moved


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
