"""Adds this server to Claude Desktop's config file without disturbing anything else in it.

The config file is the user's, shared with every other MCP server they run: we change one
entry under ``mcpServers``, back the old file up first, replace it atomically (a crash
leaves the old file or the new one, never half of each), and refuse to touch a file we
cannot parse rather than risk losing what is in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from activitybi.config import HOME_ENV

CONFIG_NAME = "claude_desktop_config.json"
CUSTOMER_ENV = "ACTIVITYBI_CUSTOMER"


class ClaudeConfigError(Exception):
    """The Claude Desktop config cannot be updated safely; nothing was written."""


def default_config_path(platform: str | None = None) -> Path:
    """Where Claude Desktop reads its config on this platform (``sys.platform`` by default)."""
    plat = sys.platform if platform is None else platform
    if plat == "darwin":
        return Path.home() / "Library" / "Application Support" / "Claude" / CONFIG_NAME
    if plat in ("win32", "cygwin"):
        appdata = os.environ.get("APPDATA")
        base = Path(appdata) if appdata else Path.home() / "AppData" / "Roaming"
        return base / "Claude" / CONFIG_NAME
    xdg = os.environ.get("XDG_CONFIG_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "Claude" / CONFIG_NAME


def server_command() -> tuple[str, list[str]]:
    """The absolute command that starts ``activitybi serve``.

    Claude Desktop spawns servers with a bare PATH, so the path must be absolute. The
    script beside this interpreter wins (the same environment we are installed in); the
    interpreter path is kept as given, not resolved, so that a virtualenv stays a
    virtualenv.
    """
    exe_dir = Path(os.path.abspath(sys.executable)).parent
    for candidate in (
        exe_dir / "activitybi",
        exe_dir / "activitybi.exe",
        exe_dir / "Scripts" / "activitybi.exe",
    ):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate), ["serve"]
    found = shutil.which("activitybi")
    if found:
        return os.path.abspath(found), ["serve"]
    return os.path.abspath(sys.executable), ["-m", "activitybi", "serve"]


def server_entry(customer: str) -> dict[str, Any]:
    """This server's entry for ``mcpServers``: the customer is fixed here, not by the model."""
    customer = customer.strip()
    if not customer:
        raise ClaudeConfigError("the customer must not be empty (e.g. your email address)")
    command, args = server_command()
    env = {CUSTOMER_ENV: customer}
    home = os.environ.get(HOME_ENV)
    if home:
        env[HOME_ENV] = os.path.abspath(os.path.expanduser(home))
    return {"command": command, "args": args, "env": env}


def _load(path: Path) -> tuple[bytes | None, dict[str, Any]]:
    """The file's exact bytes (None when absent) and its parsed content."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, {}
    if not raw.strip():
        return raw, {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClaudeConfigError(
            f"{path} is not valid JSON ({e}); it was not changed. Fix or move it away, then run this again."
        ) from e
    if not isinstance(data, dict):
        raise ClaudeConfigError(f"{path} is not a JSON object; it was not changed.")
    servers = data.get("mcpServers")
    if servers is not None and not isinstance(servers, dict):
        raise ClaudeConfigError(f'"mcpServers" in {path} is not a JSON object; it was not changed.')
    return raw, data


def _backup(path: Path, raw: bytes) -> Path:
    """Writes the old bytes next to the file under a new, timestamped name (never overwrites)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")  # sorts by time
    for n in range(1000):
        suffix = f".{stamp}.bak" if n == 0 else f".{stamp}-{n}.bak"
        backup = path.with_name(path.name + suffix)
        try:
            with open(backup, "xb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
        except FileExistsError:
            continue
        with contextlib.suppress(OSError):  # best effort: the bytes are what matter
            shutil.copymode(path, backup)
        return backup
    raise ClaudeConfigError(f"could not find a free backup name next to {path}")


def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename over the target, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if os.name == "posix":
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def dumps(config: dict[str, Any]) -> str:
    """The JSON text we write: indented like Claude Desktop's own, non-ASCII kept readable."""
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def install(
    config_path: Path | None,
    customer: str,
    name: str = "activitybi",
    print_only: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Adds or updates ``mcpServers[name]``; returns the config path and the server entry.

    Every other key and server is kept as it was. The old file is backed up next to it
    (``claude_desktop_config.json.<UTC timestamp>.bak``) before it is replaced; nothing
    is written when the entry is already up to date, or when ``print_only`` is set. Raises
    ``ClaudeConfigError`` (and writes nothing) if the existing file is not a JSON object.
    """
    if not name.strip():
        raise ClaudeConfigError("the server name must not be empty")
    path = Path(config_path).expanduser() if config_path else default_config_path()
    entry = server_entry(customer)
    if print_only:
        return path, entry
    # A symlinked config (dotfile managers) is updated where it points, not replaced.
    target = path.resolve() if path.is_symlink() else path
    raw, old = _load(target)
    new = dict(old)
    servers = dict(old.get("mcpServers") or {})
    servers[name] = entry
    new["mcpServers"] = servers
    if raw is not None and new == old:
        return path, entry
    if raw is not None:
        _backup(target, raw)
    _atomic_write(target, dumps(new).encode())
    return path, entry


def snippet(entry: dict[str, Any], name: str = "activitybi") -> str:
    """The entry as it appears in the file, for ``--print`` and the README."""
    return dumps({"mcpServers": {name: entry}})
