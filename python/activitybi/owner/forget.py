"""Forgetting a person: `activitybi forget --customer EMAIL`.

Runs in the owner's place (`handover.take_over`), so it is the queue's only reader and
the warehouse's only writer while servers keep appending. The order makes every step
idempotent and a rerun after a kill complete:

1. the queue is drained, and every segment that was open when forget began (a running
   server's) is waited for: its writer seals it within `ACTIVITYBI_QUEUE_ROTATE_SECS`,
   forget loads and acknowledges it, and the acknowledgement deletes the file. After this,
   none of the customer's events queued before forget began is in a segment;
2. their rows leave every warehouse table in one transaction, and their audit rows keep
   the fact that queries happened under the keyed hash of the customer;
3. their files go: insight journal, context snapshot, tickets and results, artifacts
   (local or S3), quarantined lines, log lines; their Redis key; archives are rewritten;
4. one audit row records the erasure (its id is chosen once and kept in a state file, so
   a rerun does not write a second);
5. DuckDB keeps deleted rows in free blocks: the database is copied into a new file
   and swapped in atomically.

Events the customer sends while forget runs are not covered: revoke their access first.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from activitybi import config, secret, ulid
from activitybi.memory.context import snapshot_path
from activitybi.memory.journal import MemoryJournal, customer_key
from activitybi.memory.redis_tier import redis_key
from activitybi.owner import retention
from activitybi.owner.uploader import Uploader
from activitybi.query.artifacts import Artifact, ArtifactStore
from activitybi.query.tickets import TicketStore
from activitybi.warehouse import Warehouse

QUEUE_DRAINED = "queue events loaded first (every customer's)"


class Incomplete(Exception):
    """A step could not finish now (a segment still open, say); run forget again."""


@dataclass
class Receipt:
    """What forget removed, where; `erasure_id` is the audit row's ticket_id."""

    erasure_id: str
    customer_hash: str
    removed: dict[str, int] = field(default_factory=dict)
    rewritten: str | None = None

    def add(self, where: str, n: int) -> None:
        self.removed[where] = self.removed.get(where, 0) + n

    def found(self) -> int:
        """How many things of this customer were removed (not counting the queue drain)."""
        return sum(n for where, n in self.removed.items() if where != QUEUE_DRAINED)


def _state(home: Path, customer_hash: str) -> tuple[Path, str]:
    """The state file of this customer's erasure and its id (made once, kept until done)."""
    path = config.Home(home).lifecycle / f"forget-{customer_hash.removeprefix('hmac:')[:32]}.json"
    try:
        return path, str(orjson.loads(path.read_bytes())["erasure_id"])
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError):
        erasure_id = ulid()
        retention.write_atomic(path, orjson.dumps({"erasure_id": erasure_id, "started": time.time()}))
        return path, erasure_id


# --- 1. the queue -----------------------------------------------------------------------


def flush_queue(uploader: Uploader, timeout: float) -> int:
    """Drains the queue until no segment that was open at the start is left; returns the
    lines loaded. A server seals its open segment within its rotation interval."""
    queue_dir = uploader.queue_dir
    waiting = {p.stem for p in queue_dir.glob("*.open")}
    before = uploader.stats.read
    deadline = time.monotonic() + timeout
    while True:
        uploader.drain()
        # a segment sealed after its last line was read is deleted by the next ack
        uploader.reader.ack(uploader.reader.acked())
        left = {p.stem for p in queue_dir.glob("*")} & waiting
        if not left:
            return uploader.stats.read - before
        if time.monotonic() > deadline:
            raise Incomplete(f"segments still open after {timeout:g} s: {', '.join(sorted(left))}")
        uploader.stop.wait(0.2)


# --- 2. the warehouse -------------------------------------------------------------------

_TABLES = {
    "duckdb": [
        ("claude_stream", "customer"),
        ("insight_atoms", "customer_id"),
        ("context_cache", "customer_id"),
        ("artifacts", "customer_id"),
    ],
    "snowflake": [
        ("claude_stream", "customer"),
        ("insight_atoms", "customer_id"),
        ("context_cache", "customer_id"),
        ("artifacts", "customer_id"),
        ("activitybi_customer_access", "customer"),
        ("_activitybi_landing", "v:customer::string"),
    ],
}


def erase_rows(warehouse: Warehouse, customer: str, customer_hash: str, receipt: Receipt) -> None:
    """Deletes the customer's rows (one transaction on DuckDB) and re-keys their audit rows."""
    con = getattr(warehouse, "con", None)
    if con is not None:
        con.begin()
    try:
        for table, column in _TABLES[warehouse.kind]:
            n = warehouse.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?", [customer]).rows[0][0]
            if n:
                warehouse.execute(f"DELETE FROM {table} WHERE {column} = ?", [customer])
            receipt.add(f"warehouse {table}", int(n))
        n = warehouse.execute("SELECT count(*) FROM query_audit WHERE customer_id = ?", [customer]).rows[0][0]
        if n:
            warehouse.execute(
                "UPDATE query_audit SET customer_id = ? WHERE customer_id = ?", [customer_hash, customer]
            )
        receipt.add("warehouse query_audit (customer replaced by its keyed hash)", int(n))
        if con is not None:
            con.commit()
    except BaseException:
        if con is not None:
            con.rollback()
        raise


def audit_erasure(warehouse: Warehouse, receipt: Receipt) -> None:
    """The one audit row of this erasure: not written twice by a rerun of a killed forget
    (same id), nor by forgetting again someone already forgotten (nothing found)."""
    mine = "SELECT count(*) FROM query_audit WHERE ticket_id = ?"
    if warehouse.execute(mine, [receipt.erasure_id]).rows[0][0]:
        return
    before = "SELECT count(*) FROM query_audit WHERE template = 'forget' AND customer_id = ?"
    if not receipt.found() and warehouse.execute(before, [receipt.customer_hash]).rows[0][0]:
        return
    warehouse.execute(
        "INSERT INTO query_audit (ticket_id, customer_id, template, params_hash, query_tag, row_count, "
        "bytes, duration_ms, outcome, executed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            receipt.erasure_id,
            receipt.customer_hash,
            "forget",
            receipt.customer_hash,
            f"forget_{receipt.erasure_id}",
            receipt.found(),
            0,
            0.0,
            "erased",
            retention.utcnow(),
        ],
    )


# --- 3. files, Redis, archives ----------------------------------------------------------


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


def _filter_lines(path: Path, needle: bytes) -> int:
    """Rewrites a line file without the lines that mention `needle`; returns how many."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    lines = data.splitlines(keepends=True)
    keep = [line for line in lines if needle not in line]
    if len(keep) != len(lines):
        retention.write_atomic(path, b"".join(keep))
    return len(lines) - len(keep)


def _needles(customer: str) -> tuple[bytes, bytes]:
    """The customer as raw bytes and as JSON writes it (escapes included)."""
    return customer.encode(), orjson.dumps(customer)[1:-1]


def erase_files(home: Path, customer: str, receipt: Receipt) -> None:
    paths = config.Home(home)
    receipt.add("insight journal", _unlink(MemoryJournal(paths.memory).path(customer)))
    receipt.add("context snapshot", _unlink(snapshot_path(paths.context, customer)))
    tickets = TicketStore(paths.tickets).forget(customer) if paths.tickets.is_dir() else 0
    receipt.add("tickets and results", tickets)
    raw, escaped = _needles(customer)
    quarantined = _filter_lines(paths.quarantine, escaped)
    for path in (
        sorted((paths.queue / "quarantine").glob("*")) if (paths.queue / "quarantine").is_dir() else []
    ):
        if raw in path.read_bytes() or escaped in path.read_bytes():
            quarantined += _unlink(path)
    receipt.add("quarantine", quarantined)
    logged = 0
    for path in sorted(paths.logs.rglob("*")) if paths.logs.is_dir() else []:
        if path.is_file():
            logged += _filter_lines(path, raw) + (_filter_lines(path, escaped) if escaped != raw else 0)
    receipt.add("log lines", logged)


def erase_artifacts(home: Path, customer: str, receipt: Receipt) -> None:
    """The customer's artifacts (bytes first, then index lines), and any object left under
    their folder (local or S3) by a crash between the two."""
    store = ArtifactStore.from_env(home)
    removed = 0
    with store._locked():
        everything = store.list()
        mine: list[Artifact] = [a for a in everything if a.customer_id == customer]
        for a in mine:
            store._delete(a)
            removed += 1
        if mine:
            rest = b"".join(
                orjson.dumps(a.to_json()) + b"\n" for a in everything if a.customer_id != customer
            )
            retention.write_atomic(store.index_path, rest)
    folder = store.root / customer_key(customer)
    if folder.is_dir():
        for path in folder.iterdir():
            removed += _unlink(path)
        folder.rmdir()
    if store.s3_url:
        prefix = f"{store.prefix}/{customer_key(customer)}/" if store.prefix else f"{customer_key(customer)}/"
        listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=prefix)
        for obj in listed.get("Contents", []):
            store.client.delete_object(Bucket=store.bucket, Key=obj["Key"])
            removed += 1
    receipt.add("artifacts" + (" (S3)" if store.s3_url else ""), removed)


def erase_redis(customer: str, receipt: Receipt) -> None:
    url = config.settings().redis_url
    if not url:
        return
    import redis

    client: Any = redis.Redis.from_url(url)
    try:
        receipt.add("redis keys", int(client.delete(redis_key(customer))))
    finally:
        client.close()


def erase_archives(warehouse: Warehouse, archive_dir: Path, customer: str, receipt: Receipt) -> None:
    """Each monthly file that holds the customer is rewritten without them (removed when
    nothing is left), durably and atomically."""
    con = getattr(warehouse, "con", None)
    files = retention.archive_files(archive_dir)
    if con is None or not files:
        return
    removed = 0
    for path in files:
        source = f"read_parquet({retention.sql_text(str(path))})"
        n = int(con.execute(f"SELECT count(*) FROM {source} WHERE customer = ?", [customer]).fetchone()[0])
        if not n:
            continue
        left = int(
            con.execute(
                f"SELECT count(*) FROM {source} WHERE customer IS DISTINCT FROM ?", [customer]
            ).fetchone()[0]
        )
        if left:
            keep = f"SELECT * FROM {source} WHERE customer IS DISTINCT FROM {retention.sql_text(customer)}"
            retention.write_parquet(con, keep, path)
        else:
            path.unlink()
            retention.fsync_path(archive_dir)
        removed += n
    receipt.add("archive rows", removed)
    retention.write_manifest(con, archive_dir)
    retention.create_archive_view(con, archive_dir)


# --- the whole ----------------------------------------------------------------------------


def forget(uploader: Uploader, home: Path, customer: str, *, open_timeout: float | None = None) -> Receipt:
    """Removes `customer` everywhere (see the module's docstring); returns the receipt."""
    customer_hash = secret.keyed_hash(customer, home)
    state, erasure_id = _state(home, customer_hash)
    receipt = Receipt(erasure_id, customer_hash)
    wait = open_timeout if open_timeout is not None else 2 * config.settings().queue_rotate_secs + 10
    receipt.add(QUEUE_DRAINED, flush_queue(uploader, wait))
    warehouse = uploader.warehouse
    erase_rows(warehouse, customer, customer_hash, receipt)
    erase_files(home, customer, receipt)
    erase_artifacts(home, customer, receipt)
    erase_redis(customer, receipt)
    erase_archives(warehouse, config.Home(home).archive, customer, receipt)
    audit_erasure(warehouse, receipt)
    compact = getattr(warehouse, "compact", None)
    if compact is not None:
        compact()
        receipt.rewritten = "DuckDB file rewritten without free blocks"
    state.unlink(missing_ok=True)
    return receipt


def receipt_lines(receipt: Receipt) -> list[str]:
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    lines = [f"erasure {receipt.erasure_id} at {when}, customer now known as {receipt.customer_hash}"]
    lines += [f"  {where}: {n}" for where, n in receipt.removed.items()]
    if receipt.rewritten:
        lines.append(f"  {receipt.rewritten}")
    return lines


def run(home: Path, customer: str, stop: threading.Event | None = None) -> Receipt:
    """Forget in the owner's place (the owner steps aside and comes back after)."""
    from activitybi.owner.handover import take_over

    with take_over(home, stop or threading.Event()) as uploader:
        return forget(uploader, home, customer)
