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


CAPTURE_CONTENT_ENV = "ACTIVITYBI_CAPTURE_CONTENT"


def capture_content() -> bool:
    """Whether captured events may hold what was said (arguments, results, prompts):
    off unless ``ACTIVITYBI_CAPTURE_CONTENT`` is 1, true or yes."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


PROXY_ORIGINAL_ENV = "ACTIVITYBI_PROXY_ORIGINAL"
"""Set by ``install-claude --wrap`` on each wrapped Claude Desktop entry: the entry as it was,
as JSON, so that ``--unwrap`` restores it exactly. The proxy keeps it from its child."""
