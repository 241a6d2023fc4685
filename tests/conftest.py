"""Shared fixtures: every test gets its own ACTIVITYBI_HOME."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("ACTIVITYBI_HOME", str(home))
    return home


@pytest.fixture
def qdir(tmp_path: Path) -> Path:
    return tmp_path / "queue"


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter (a separate process, as a second server would be)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
