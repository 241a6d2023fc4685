"""Where activitybi keeps its files on this machine: one home directory for everything."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "ACTIVITYBI_HOME"


def home() -> Path:
    """``$ACTIVITYBI_HOME``, or the per-user data directory of the platform."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    from platformdirs import user_data_path

    return user_data_path("activitybi", appauthor=False)


def queue_dir() -> Path:
    return home() / "queue"
