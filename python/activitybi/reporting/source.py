"""Where the report's figures are read: the DuckDB file itself when it is free, else the
warehouse owner's query tickets.

DuckDB lets no other process open a file that one process writes (docs: "Concurrency"),
and a running server's owner process always holds it. So the report reads the file
read-only when it is free, and otherwise asks that owner for one customer's figures with
ordinary SafeSQL tickets: no copy of the file, nothing stopped. Both ways run the same
templates, so they give the same figures.
"""

from __future__ import annotations

import contextlib
import getpass
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from activitybi import config
from activitybi.query import templates
from activitybi.query.tickets import FINAL, TicketStore, TooManyTickets, jsonable

if TYPE_CHECKING:
    import duckdb

    from activitybi.warehouse import Warehouse

Rows = list[dict[str, Any]]
Request = tuple[str, dict[str, Any]]
"""A template's name and its parameters."""

RESULT_CAP = 8 * 1024 * 1024
"""Byte cap of a report ticket: far above what its limited queries return."""


class WarehouseBusy(RuntimeError):
    """The DuckDB file is open for writing by another process (its owner)."""

    def __init__(self, path: Path, pid: int | None, command: str | None) -> None:
        who = f"PID {pid}" if pid else "another process"
        if command:
            who += f" ({command})"
        super().__init__(
            f"the warehouse {path} is in use by {who}. DuckDB lets one process open a file "
            "while it writes; stop the activitybi servers (Claude Desktop) or the uploader, "
            "or run `activitybi report` again once they have exited."
        )
        self.path, self.pid, self.command = path, pid, command


def _process_command(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
    # `python -m activitybi upload --follow ...` reads better without the interpreter; only
    # an argument that is the command itself counts (a path may contain the word too)
    start = next((i for i, p in enumerate(parts) if p.rsplit("/", 1)[-1] == "activitybi"), None)
    if start is not None:
        parts = ["activitybi", *parts[start + 1 :]]
    return " ".join(parts)[:120] or None


def is_owner(command: str | None) -> bool:
    """Whether a process's command (as `_process_command` gives it) is a warehouse owner."""
    return command is not None and command.startswith("activitybi upload")


def connect_read_only(path: Path | str) -> duckdb.DuckDBPyConnection:
    """Opens the warehouse file read-only, or raises `WarehouseBusy` naming the owner."""
    import duckdb

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no warehouse at {path}: run `activitybi upload --once` (or `activitybi demo`) first"
        )
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as e:
        if "lock" not in str(e).lower():
            raise
        m = re.search(r"\(PID (\d+)\)", str(e))
        pid = int(m.group(1)) if m else None
        raise WarehouseBusy(path, pid, _process_command(pid) if pid else None) from None


def lock_holder(path: Path) -> dict[str, Any] | None:
    """The process holding the warehouse file for writing, if one does (without disturbing it)."""
    if not path.exists():
        return None
    try:
        connect_read_only(path).close()
    except WarehouseBusy as e:
        return {"pid": e.pid, "command": e.command}
    except Exception:
        return None
    return None


class Runner(Protocol):
    """Runs SafeSQL templates for one scope and returns their rows as JSON-friendly dicts."""

    @property
    def scope(self) -> templates.Scope:
        """Whose rows: one customer, or `EVERYONE` for a reader holding the file."""

    @property
    def described(self) -> str:
        """Where the rows come from, for the report's header."""

    @property
    def note(self) -> str | None:
        """What a person should know about this source, if anything."""

    def run(self, requests: Mapping[str, Request]) -> dict[str, Rows]: ...


class Direct:
    """Templates bound and run on a connection this process holds (a read-only DuckDB
    connection or a `Warehouse`), with values converted as tickets convert them."""

    note = None

    def __init__(
        self, con: Warehouse | duckdb.DuckDBPyConnection, scope: templates.Scope, described: str
    ) -> None:
        self.con, self.scope, self.described = con, scope, described

    def run(self, requests: Mapping[str, Request]) -> dict[str, Rows]:
        kind = getattr(self.con, "kind", "duckdb")
        out = {}
        for key, (name, params) in requests.items():
            sql, values = templates.for_warehouse(*templates.get(name).bind(params, self.scope), kind)
            result: Any = self.con.execute(sql, values)
            if hasattr(result, "rows"):  # a Warehouse's QueryResult
                columns, raw = result.columns, result.rows
            else:  # a DuckDB connection returns itself, ready to fetch
                columns, raw = [d[0] for d in result.description or ()], result.fetchall()
            out[key] = [dict(zip(columns, map(jsonable, r), strict=True)) for r in raw]
        return out


class Tickets:
    """Templates run as query tickets by the warehouse owner, for one customer (audited
    like any query); all of a batch are submitted at once, then awaited."""

    def __init__(self, home: Path, customer: str, busy: WarehouseBusy, wait: float) -> None:
        self.store = TicketStore(config.Home(home).tickets)
        self.customer = self.scope = customer
        self.busy, self.wait = busy, wait
        self.described = f"query tickets run by the warehouse owner (PID {busy.pid})"
        self.note: str | None = (
            f"the warehouse is held by its owner (PID {busy.pid}), so this report "
            f"for {customer} came through query tickets it ran"
        )

    def run(self, requests: Mapping[str, Request]) -> dict[str, Rows]:
        deadline = time.monotonic() + self.wait
        ids: dict[str, str] = {}
        for key, (name, params) in requests.items():
            while key not in ids:
                try:
                    ids[key] = self.store.submit(self.customer, name, params, RESULT_CAP).ticket_id
                except TooManyTickets:  # another report or the customer's own queries: they end soon
                    if time.monotonic() > deadline:
                        for tid in ids.values():
                            self.store.cancel(tid)
                        raise self.busy from None
                    time.sleep(0.05)
        out: dict[str, Rows] = {}
        while len(out) < len(ids):
            for key, tid in ids.items():
                ticket = self.store.get(tid)
                if key in out or ticket is None or ticket.status not in FINAL:
                    continue
                result = self.store.result(tid) or {}
                if ticket.status != "succeeded" or result.get("sampled"):
                    raise RuntimeError(
                        f"the report's {requests[key][0]} query {ticket.status}: "
                        f"{ticket.error or 'its result was sampled'}"
                    )
                out[key] = list(result.get("rows") or [])
            if len(out) < len(ids):
                if time.monotonic() > deadline:
                    for tid in ids.values():
                        self.store.cancel(tid)
                    raise self.busy
                time.sleep(0.05)
        return out


@contextlib.contextmanager
def direct(
    source: Warehouse | duckdb.DuckDBPyConnection | Path | str, scope: templates.Scope
) -> Iterator[Runner]:
    """A runner on `source`: a connection or `Warehouse` as it is, or the path of a
    DuckDB file opened read-only (`WarehouseBusy` when its owner holds it)."""
    if not isinstance(source, str | Path):
        yield Direct(source, scope, getattr(source, "kind", "duckdb"))
        return
    con = connect_read_only(source)
    try:
        yield Direct(con, scope, str(source))
    finally:
        con.close()


@contextlib.contextmanager
def local(home: Path, customer: str | None, wait: float) -> Iterator[Runner]:
    """A runner on this machine's warehouse: the file when it is free (every customer, or
    the one asked for); while an activitybi owner holds it, that owner's tickets, for one
    customer: the one asked for, else this machine's (`ACTIVITYBI_CUSTOMER` or the user name)."""
    path = config.Home(home).warehouse
    try:
        con = connect_read_only(path)
    except WarehouseBusy as busy:
        if not busy.command or "upload" not in busy.command:
            raise  # not an activitybi owner: nobody will run tickets
        yield Tickets(home, customer or config.settings().customer or getpass.getuser(), busy, wait)
        return
    try:
        yield Direct(con, customer or templates.EVERYONE, str(path))
    finally:
        con.close()
