"""The Claude Desktop entry: platform paths, merging, backups, refusal, print-only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from activitybi.clients import claude_desktop
from activitybi.clients.claude_desktop import ClaudeConfigError, default_config_path, install

OTHERS: dict[str, Any] = {
    "globalShortcut": "Ctrl+Space",
    "mcpServers": {
        "filesystem": {
            "command": "npx",
            "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
            "env": {"TOKEN": "s3cr\u00e9t"},
        },
        "git": {"command": "uvx", "args": ["mcp-server-git"]},
    },
}


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("APPDATA", raising=False)
    return home


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".*.bak"))


def write_json(path: Path, data: Any) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = (json.dumps(data, indent=4) + "\n").encode()
    path.write_bytes(raw)
    return raw


# -- where the file is -------------------------------------------------------------------


def test_macos_path(fake_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert default_config_path() == (
        fake_home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    )


def test_windows_path(fake_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    appdata = tmp_path / "AppData" / "Roaming"
    monkeypatch.setenv("APPDATA", str(appdata))
    assert default_config_path() == appdata / "Claude" / "claude_desktop_config.json"
    monkeypatch.delenv("APPDATA")
    assert default_config_path() == (
        fake_home / "AppData" / "Roaming" / "Claude" / "claude_desktop_config.json"
    )


def test_linux_path(fake_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    assert default_config_path() == fake_home / ".config" / "Claude" / "claude_desktop_config.json"
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert default_config_path() == xdg / "Claude" / "claude_desktop_config.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # invalid per the XDG spec
    assert default_config_path() == fake_home / ".config" / "Claude" / "claude_desktop_config.json"


def test_install_without_path_uses_the_platform_default(
    fake_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    path, entry = install(None, "ada@example.com")
    expected = fake_home / "Library/Application Support/Claude/claude_desktop_config.json"
    assert path == expected
    assert json.loads(expected.read_text()) == {"mcpServers": {"activitybi": entry}}
    assert backups(expected) == []  # nothing to back up: the file did not exist


# -- the entry ---------------------------------------------------------------------------


def test_entry_shape(tmp_path: Path, _home: Path) -> None:
    _, entry = install(tmp_path / "c.json", "  ada@example.com ")
    assert entry["env"] == {
        "ACTIVITYBI_CUSTOMER": "ada@example.com",
        "ACTIVITYBI_HOME": str(_home),
    }
    assert entry["args"][-1] == "serve"
    assert os.path.isabs(entry["command"])
    assert os.access(entry["command"], os.X_OK)
    if entry["args"] != ["serve"]:
        assert entry["args"] == ["-m", "activitybi", "serve"]


def test_entry_without_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACTIVITYBI_HOME")
    _, entry = install(tmp_path / "c.json", "ada@example.com")
    assert entry["env"] == {"ACTIVITYBI_CUSTOMER": "ada@example.com"}


def test_falls_back_to_the_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    command, args = claude_desktop.server_command()
    assert command == str(tmp_path / "venv" / "bin" / "python3")
    assert args == ["-m", "activitybi", "serve"]


def test_empty_customer_refused(tmp_path: Path) -> None:
    with pytest.raises(ClaudeConfigError, match="customer"):
        install(tmp_path / "c.json", "   ")
    assert not (tmp_path / "c.json").exists()


# -- writing -----------------------------------------------------------------------------


def test_keeps_other_entries_and_writes_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "Claude" / "claude_desktop_config.json"
    old_raw = write_json(path, OTHERS)
    _, entry = install(path, "ada@example.com")
    new = json.loads(path.read_text(encoding="utf-8"))
    assert new["globalShortcut"] == "Ctrl+Space"
    assert new["mcpServers"]["filesystem"] == OTHERS["mcpServers"]["filesystem"]
    assert new["mcpServers"]["git"] == OTHERS["mcpServers"]["git"]
    assert new["mcpServers"]["activitybi"] == entry
    assert list(new["mcpServers"]) == ["filesystem", "git", "activitybi"]
    [backup] = backups(path)
    assert backup.read_bytes() == old_raw
    # No temp files left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, backup.name])


def test_updates_the_entry_in_place(tmp_path: Path) -> None:
    path = tmp_path / "claude_desktop_config.json"
    config = json.loads(json.dumps(OTHERS))
    config["mcpServers"] = {
        "filesystem": OTHERS["mcpServers"]["filesystem"],
        "activitybi": {"command": "/old/activitybi", "args": ["serve"], "env": {}},
        "git": OTHERS["mcpServers"]["git"],
    }
    write_json(path, config)
    install(path, "ada@example.com")
    install(path, "grace@example.com")
    new = json.loads(path.read_text())
    assert list(new["mcpServers"]) == ["filesystem", "activitybi", "git"]  # same position
    assert new["mcpServers"]["activitybi"]["env"]["ACTIVITYBI_CUSTOMER"] == "grace@example.com"
    assert new["mcpServers"]["activitybi"]["command"] != "/old/activitybi"
    assert len(backups(path)) == 2  # one per change, distinct names within the same second
    first = json.loads(backups(path)[0].read_text())
    assert first["mcpServers"]["activitybi"]["command"] == "/old/activitybi"


def test_unchanged_entry_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "claude_desktop_config.json"
    install(path, "ada@example.com")
    before = path.read_bytes()
    install(path, "ada@example.com")
    assert path.read_bytes() == before
    assert backups(path) == []


def test_custom_name_adds_a_second_entry(tmp_path: Path) -> None:
    path = tmp_path / "claude_desktop_config.json"
    install(path, "ada@example.com")
    install(path, "grace@example.com", name="activitybi-grace")
    servers = json.loads(path.read_text())["mcpServers"]
    assert servers["activitybi"]["env"]["ACTIVITYBI_CUSTOMER"] == "ada@example.com"
    assert servers["activitybi-grace"]["env"]["ACTIVITYBI_CUSTOMER"] == "grace@example.com"


def test_empty_file_is_treated_as_empty_config(tmp_path: Path) -> None:
    path = tmp_path / "claude_desktop_config.json"
    path.write_bytes(b"\n")
    _, entry = install(path, "ada@example.com")
    assert json.loads(path.read_text()) == {"mcpServers": {"activitybi": entry}}
    [backup] = backups(path)
    assert backup.read_bytes() == b"\n"


@pytest.mark.parametrize(
    "content",
    [
        b'{"mcpServers": {"git": {"command": "uvx",}}}',  # trailing comma
        b'{"mcpServers": ',
        b"\xff\xfe not utf-8",
        b'["a", "list"]',
        b'{"mcpServers": ["not", "an", "object"]}',
    ],
)
def test_invalid_file_refused_and_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "claude_desktop_config.json"
    path.write_bytes(content)
    mtime = path.stat().st_mtime_ns
    with pytest.raises(ClaudeConfigError, match="not changed") as info:
        install(path, "ada@example.com")
    assert str(path) in str(info.value)
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == mtime
    assert list(tmp_path.iterdir()) == [path]  # no backup, no temp file


def test_print_only_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "Claude" / "claude_desktop_config.json"
    got, entry = install(path, "ada@example.com", print_only=True)
    assert got == path
    assert not path.parent.exists()
    assert json.loads(claude_desktop.snippet(entry)) == {"mcpServers": {"activitybi": entry}}

    old_raw = write_json(path, OTHERS)
    install(path, "ada@example.com", print_only=True)
    assert path.read_bytes() == old_raw
    assert list(path.parent.iterdir()) == [path]


def test_file_mode_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "claude_desktop_config.json"
    write_json(path, OTHERS)
    path.chmod(0o600)  # it holds other servers' secrets
    install(path, "ada@example.com")
    assert path.stat().st_mode & 0o777 == 0o600
    assert backups(path)[0].stat().st_mode & 0o777 == 0o600


def test_symlinked_config_is_updated_where_it_points(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "claude.json"
    write_json(real, OTHERS)
    link = tmp_path / "Claude" / "claude_desktop_config.json"
    link.parent.mkdir()
    link.symlink_to(real)
    install(link, "ada@example.com")
    assert link.is_symlink()
    assert "activitybi" in json.loads(real.read_text())["mcpServers"]
