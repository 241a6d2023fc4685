"""The one process on a machine that writes the warehouse.

DuckDB lets one process write a file, and uploading costs CPU that a server answering
tools should not share its interpreter with. So the uploader runs in a process of its own
(`activitybi upload --follow`), which also refreshes `context_cache` and mirrors it into
the context snapshots every server reads. Each server keeps one such process alive while
it can take the queue's reader lock; when an owner exits, another server starts one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import orjson

from activitybi import config
from activitybi.memory.context import write_snapshot
from activitybi.owner import retention
from activitybi.owner.executor import TicketExecutor
from activitybi.owner.handover import paused
from activitybi.owner.uploader import Uploader
from activitybi.query.artifacts import ArtifactStore, sync_to_warehouse
from activitybi.query.tickets import TicketStore
from activitybi.reporting.metrics import status_dir, write_status
from activitybi.warehouse import Warehouse

log = logging.getLogger(__name__)


def refresh_context(warehouse: Warehouse, snapshot_dir: Path) -> int:
    """Rebuilds context_cache and mirrors it into the snapshot files."""
    warehouse.refresh_context()
    rows = warehouse.execute("SELECT customer_id, context FROM context_cache").rows
    for customer, context in rows:
        write_snapshot(snapshot_dir, customer, orjson.loads(context))
    return len(rows)


def own(uploader: Uploader, home: Path, *, refresh_every: float = 60.0, parent: int | None = None) -> None:
    """Uploads until stopped (or until `parent` exits, or a command asks for the owner's
    place: see `handover`); refreshes the context every `refresh_every` seconds when new
    rows came in, and at least every 5 minutes; runs the query tickets meanwhile, and
    retention once a day."""
    settings = config.settings()
    executor = TicketExecutor(
        TicketStore(config.Home(home).tickets),
        uploader.warehouse,
        timeout_s=settings.query_timeout_s,
        retention_days=settings.ticket_retention_days,
    )
    executor.start()
    try:
        _upload_and_refresh(uploader, home, refresh_every, parent)
    finally:
        executor.stop.set()
        executor.join()


def _upload_and_refresh(uploader: Uploader, home: Path, refresh_every: float, parent: int | None) -> None:
    snapshot_dir, status_file = config.Home(home).context, status_dir(home) / "owner.json"
    last_refresh, fresh_rows, last_status = float("-inf"), True, 0.0
    rows: dict[str, int] = {}
    while not uploader.stop.is_set():
        if (parent is not None and os.getppid() != parent) or paused(home):
            break
        n = uploader.step()
        fresh_rows = fresh_rows or n > 0
        age = time.monotonic() - last_refresh
        if (fresh_rows and age >= refresh_every) or age >= 300:
            refresh_context(uploader.warehouse, snapshot_dir)
            ArtifactStore.from_env(home).expire()
            sync_to_warehouse(uploader.warehouse, home)
            last_refresh, fresh_rows = time.monotonic(), False
            if retention.due(home):
                try:
                    retention.run(uploader.warehouse, home, config.settings())
                except Exception:  # retried at the next refresh; uploading goes on
                    log.exception("retention run failed")
            rows = table_rows(uploader.warehouse)
        if time.monotonic() - last_status >= 1.0:
            write_status(
                status_file,
                {**uploader.health(), "rows": rows, "warehouse": uploader.warehouse.kind},
            )
            last_status = time.monotonic()
        if n == 0:
            uploader.stop.wait(0.02)


def table_rows(warehouse: Warehouse) -> dict[str, int]:
    counts = {}
    for table in ("claude_stream", "insight_atoms", "query_audit"):
        counts[table] = int(warehouse.execute(f"SELECT count(*) FROM {table}").rows[0][0])
    return counts
