"""What Claude learned about a customer, on this machine, readable by every process at once.

Each customer has an append-only journal of insight atoms under
`$ACTIVITYBI_HOME/memory/`. `log_insight` writes the atom to the queue (for the
warehouse) and here; any server process sees it on its next `get_context`, because the
journal's size is the version its cache is checked against (one `stat`).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

PREFERENCES_SUBJECT = "preferences"
"""Insights with this subject are preferences: the latest value per metric is kept."""


def customer_key(customer: str) -> str:
    """A file- and key-safe name for a customer (an email is never used as a path)."""
    return hashlib.sha256(customer.encode()).hexdigest()[:32]


class MemoryJournal:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, customer: str) -> Path:
        return self.root / f"{customer_key(customer)}.ndjson"

    def version(self, customer: str) -> int:
        """The journal's size: it grows with every atom, in any process."""
        try:
            return os.stat(self.path(customer)).st_size
        except FileNotFoundError:
            return 0

    def append(self, customer: str, atom: dict[str, Any]) -> None:
        line = orjson.dumps(atom) + b"\n"
        fd = os.open(self.path(customer), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)  # one O_APPEND write: concurrent writers never interleave
        finally:
            os.close(fd)

    def read(self, customer: str, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Atoms after `offset`, and the offset after the last whole line."""
        try:
            with open(self.path(customer), "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1
        atoms = [orjson.loads(line) for line in data[:end].splitlines() if line]
        return atoms, offset + end

    def recent_customers(self, since_seconds: float) -> list[str]:
        """Customers whose journal was written lately (to warm caches on start)."""
        cutoff = time.time() - since_seconds
        out = []
        for path in self.root.glob("*.ndjson"):
            if path.stat().st_mtime >= cutoff:
                with path.open("rb") as f:
                    out.append(str(orjson.loads(f.readline())["customer_id"]))
        return out
