"""The one process on a machine that writes the warehouse.

Every server process runs this thread; the first to take the queue's reader lock becomes
the owner: it uploads the queue, refreshes `context_cache` and mirrors it into the context
snapshots. The others keep trying, so when the owner exits another takes over.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import orjson

from activitybi import QueueReader
from activitybi.context import ContextService
from activitybi.uploader import Uploader
from activitybi.warehouse import TransientError, Warehouse, open_warehouse

log = logging.getLogger(__name__)


class WarehouseOwner(threading.Thread):
    def __init__(
        self,
        queue_dir: Path,
        context: ContextService,
        *,
        refresh_every: float = 60.0,
        retry_every: float = 2.0,
    ) -> None:
        super().__init__(name="activitybi-owner", daemon=True)
        self.queue_dir = queue_dir
        self.context = context
        self.refresh_every = refresh_every
        self.retry_every = retry_every
        self.stop = threading.Event()
        self.uploader: Uploader | None = None
        self.owned = threading.Event()

    def _acquire(self) -> tuple[Uploader, Warehouse] | None:
        try:  # the reader lock first: it is local and cheap, the warehouse may be remote
            QueueReader(str(self.queue_dir)).close()
        except BlockingIOError:
            return None
        try:
            warehouse = open_warehouse()
        except TransientError:
            return None
        try:
            uploader = Uploader(self.queue_dir, warehouse, stop=self.stop)
        except BlockingIOError:
            warehouse.close()
            return None
        warehouse.init()
        return uploader, warehouse

    def refresh(self, warehouse: Warehouse) -> int:
        """Rebuilds context_cache and mirrors it into the snapshot files."""
        warehouse.refresh_context()
        rows = warehouse.execute("SELECT customer_id, context FROM context_cache").rows
        for customer, context in rows:
            self.context.write_snapshot(customer, orjson.loads(context))
        return len(rows)

    def run(self) -> None:
        while not self.stop.is_set():
            got = self._acquire()
            if got is None:
                self.stop.wait(self.retry_every)
                continue
            self.uploader, warehouse = got
            self.owned.set()
            try:
                self._own(self.uploader, warehouse)
            except TransientError:
                pass  # stopping while the warehouse was away
            except Exception:
                log.exception("warehouse owner failed; giving the warehouse up")
                self.stop.wait(self.retry_every)
            finally:
                self.owned.clear()
                self.uploader.close()
                warehouse.close()

    def _own(self, uploader: Uploader, warehouse: Warehouse) -> None:
        """Uploads continuously; refreshes the context every `refresh_every` seconds when
        new rows came in, and at least every 5 minutes."""
        last_refresh, fresh_rows = float("-inf"), True
        while not self.stop.is_set():
            n = uploader.step()
            fresh_rows = fresh_rows or n > 0
            age = time.monotonic() - last_refresh
            if (fresh_rows and age >= self.refresh_every) or age >= 300:
                self.refresh(warehouse)
                last_refresh, fresh_rows = time.monotonic(), False
            if n == 0:
                self.stop.wait(0.02)
