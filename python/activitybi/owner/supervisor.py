"""In each server process: keeps one warehouse owner (`activitybi upload --follow`) alive
while nobody holds the queue's reader lock; when an owner exits, another server starts one."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from activitybi import QueueReader

log = logging.getLogger(__name__)


class OwnerSupervisor(threading.Thread):
    """In a server: starts `activitybi upload --follow` whenever nobody holds the queue."""

    def __init__(self, queue_dir: Path, *, retry_every: float = 2.0) -> None:
        super().__init__(name="activitybi-owner", daemon=True)
        self.queue_dir = queue_dir
        self.retry_every = retry_every
        self.stop = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def _free(self) -> bool:
        try:
            QueueReader(str(self.queue_dir)).close()
        except BlockingIOError:
            return False
        return True

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._look()
            except OSError as e:  # EMFILE, ENOMEM: the next look may succeed
                log.warning("could not check or start the warehouse owner: %s; retrying", e)
            self.stop.wait(self.retry_every)

    def _look(self) -> None:
        """Starts an owner when none runs and the queue is free."""
        if (self.child is None or self.child.poll() is not None) and self._free():
            self.child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "activitybi",
                    "upload",
                    "--follow",
                    "--quiet",
                    "--parent",
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )

    def close(self, timeout: float = 10.0) -> None:
        """Stops supervising and lets the owner finish its batch and exit."""
        self.stop.set()
        self.join(timeout)  # first, so that it cannot start a child after this looks
        child = self.child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
