"""Taking the owner's place for a while: `retention run` and `forget` need the queue's
reader lock (to drain it) and the DuckDB file (one writer).

The command writes `lifecycle/pause` with its pid; the owner checks it between batches and
exits; a server's supervisor may start a new owner meanwhile, which sees the file and exits
too. The command then takes the reader lock and the warehouse as an ordinary uploader, and
removes the file when done. Servers keep appending to the queue all the while (nothing they
do needs the owner at once): their events are loaded when the owner is back. A pause file
whose process died (a killed command) is ignored.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from activitybi import config
from activitybi.owner.uploader import Uploader, open_uploader


def pause_file(home: Path) -> Path:
    return config.Home(home).lifecycle / "pause"


def paused(home: Path) -> bool:
    """Whether another live process asked the owner to step aside."""
    try:
        pid = int(pause_file(home).read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def take_over(home: Path, stop: threading.Event, *, timeout: float = 120.0) -> Iterator[Uploader]:
    """The queue's uploader (and through it the warehouse), once the owner has yielded."""
    path = pause_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".pause.{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                uploader = open_uploader(config.Home(home).queue, stop)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the warehouse owner did not yield the queue") from None
                stop.wait(0.1)
        if uploader is None:
            raise TimeoutError("stopped while waiting for the warehouse")
        try:
            yield uploader
        finally:
            uploader.close()
            uploader.warehouse.close()
    finally:
        with contextlib.suppress(FileNotFoundError):
            if path.read_text().strip() == str(os.getpid()):  # not a later command's
                path.unlink()
