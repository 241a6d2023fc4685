"""`activitybi install-claude-code`: merged into Claude Code's settings.json, exactly undone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from activitybi.clients import claude_code
from activitybi.clients.claude_desktop import ClaudeConfigError
from tests.test_transcripts import queued

USERS: dict[str, Any] = {
    "model": "opus",
    "permissions": {"allow": ["Bash(ls:*)"]},
    "env": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "MY_VAR": "1"},
    "hooks": {
        "PostToolUse": [{"matcher": "Edit", "hooks": [{"type": "command", "command": "prettier --write"}]}]
    },
}


@pytest.fixture
def claude_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "claude"
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(path))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "activitybi", "install-claude-code", *args],
        capture_output=True,
        text=True,
        check=True,
    )


def backups(claude_dir: Path) -> list[Path]:
    return sorted(claude_dir.glob("settings.json.*.bak"))


def test_fresh_install_has_every_hook_and_telemetry(claude_dir: Path) -> None:
    out = cli()
    assert "installed" in out.stdout
    settings = json.loads((claude_dir / "settings.json").read_text())
    assert set(settings["hooks"]) == set(claude_code.HOOK_EVENTS)
    assert settings["env"] == claude_code.TELEMETRY
    [group] = settings["hooks"]["PostToolUse"]
    assert group["matcher"] == "*" and group["hooks"][0]["command"].endswith("-m activitybi.capture.hooks")
    assert backups(claude_dir) == []  # there was nothing to back up


def test_merge_keeps_everything_else_and_twice_changes_nothing(claude_dir: Path) -> None:
    path = claude_dir / "settings.json"
    claude_dir.mkdir()
    original = json.dumps(USERS, indent=4)
    path.write_text(original)
    claude_code.install(customer="ana@example.com")
    merged = json.loads(path.read_text())
    assert merged["model"] == "opus" and merged["permissions"] == USERS["permissions"]
    assert merged["env"] == {"MY_VAR": "1", **claude_code.TELEMETRY}
    post = merged["hooks"]["PostToolUse"]
    assert post[0] == USERS["hooks"]["PostToolUse"][0]
    assert "ACTIVITYBI_CUSTOMER=ana@example.com" in post[1]["hooks"][0]["command"]
    [backup] = backups(claude_dir)
    assert backup.read_text() == original
    after = path.read_bytes()
    assert claude_code.install(customer="ana@example.com")[1] is False
    assert path.read_bytes() == after and len(backups(claude_dir)) == 1

    assert claude_code.uninstall()[1] is True
    assert json.loads(path.read_text()) == USERS  # the user's endpoint is back, nothing of ours left
    assert claude_code.uninstall()[1] is False


def test_uninstall_leaves_a_value_the_user_changed_since(claude_dir: Path) -> None:
    claude_code.install()
    path = claude_dir / "settings.json"
    settings = json.loads(path.read_text())
    settings["env"]["OTEL_METRICS_EXPORTER"] = "prometheus"
    settings["hooks"]["Stop"][0]["hooks"].append({"type": "command", "command": "say done"})
    path.write_text(json.dumps(settings))
    claude_code.uninstall()
    assert json.loads(path.read_text()) == {
        "env": {"OTEL_METRICS_EXPORTER": "prometheus"},
        "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "say done"}]}]},
    }


def test_print_changes_nothing(claude_dir: Path) -> None:
    out = cli("--print")
    assert set(orjson.loads(out.stdout)) == {"env", "hooks"}
    assert not claude_dir.exists()


def test_unparseable_settings_are_left_alone(claude_dir: Path) -> None:
    claude_dir.mkdir()
    (claude_dir / "settings.json").write_text("{ not json")
    with pytest.raises(ClaudeConfigError):
        claude_code.install()
    (claude_dir / "settings.json").write_text('{"hooks": []}')
    with pytest.raises(ClaudeConfigError):
        claude_code.install()
    assert (claude_dir / "settings.json").read_text() == '{"hooks": []}' and backups(claude_dir) == []


def test_the_installed_command_records(claude_dir: Path, _home: Path) -> None:
    claude_code.install(customer="ana@example.com")
    command = json.loads((claude_dir / "settings.json").read_text())["hooks"]["Stop"][0]["hooks"][0][
        "command"
    ]
    event = {"session_id": "s1", "hook_event_name": "Stop", "transcript_path": "/x.jsonl", "cwd": "/"}
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }  # as Claude Code runs it
    out = subprocess.run(
        command, shell=True, input=orjson.dumps(event), capture_output=True, env=env, check=True
    )
    assert out.stdout == b""
    [recorded] = queued(_home)
    assert (recorded["activity"], recorded["customer"]) == ("finished_response", "ana@example.com")
