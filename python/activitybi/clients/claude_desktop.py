"""Adds this server to Claude Desktop's config file without disturbing anything else in it,
and routes the user's other servers through ``activitybi proxy`` (``--wrap``) and back.

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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from activitybi.config import HOME_ENV, PROXY_ORIGINAL_ENV

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


def activitybi_command() -> tuple[str, list[str]]:
    """The absolute command that runs ``activitybi`` (and the arguments before a subcommand).

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
            return str(candidate), []
    found = shutil.which("activitybi")
    if found:
        return os.path.abspath(found), []
    return os.path.abspath(sys.executable), ["-m", "activitybi"]


def server_command() -> tuple[str, list[str]]:
    """The absolute command that starts ``activitybi serve``."""
    command, args = activitybi_command()
    return command, [*args, "serve"]


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


def is_wrapped(entry: object) -> bool:
    """Whether ``wrap`` wrote this entry (it carries the original, to be restored)."""
    return (
        isinstance(entry, dict) and isinstance(entry.get("env"), dict) and PROXY_ORIGINAL_ENV in entry["env"]
    )


def _wrappable(entry: object) -> bool:
    """A stdio server entry we can put the proxy in front of (not a remote one, not ours)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str) or is_wrapped(entry):
        return False
    args = entry.get("args", [])
    env = entry.get("env", {})
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args) and isinstance(env, dict)):
        return False
    return (entry["command"], args) != server_command()


def wrapped_entry(key: str, entry: dict[str, Any], customer: str | None) -> dict[str, Any]:
    """``entry`` run through ``activitybi proxy --name KEY``; its other keys and env kept."""
    command, prefix = activitybi_command()
    new = dict(entry)  # same keys in the same order: only command, args and env change
    new["command"] = command
    new["args"] = [*prefix, "proxy", "--name", key, "--", entry["command"], *entry.get("args", [])]
    env = dict(entry.get("env") or {})
    if customer:
        env[CUSTOMER_ENV] = customer
    env[PROXY_ORIGINAL_ENV] = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    new["env"] = env
    return new


def original_entry(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The entry ``wrap`` replaced, exactly as it was."""
    try:
        original = json.loads(entry["env"][PROXY_ORIGINAL_ENV])
    except (TypeError, json.JSONDecodeError) as e:
        raise ClaudeConfigError(f"mcpServers.{key}: the original entry cannot be read ({e})") from e
    if not isinstance(original, dict):
        raise ClaudeConfigError(f"mcpServers.{key}: the original entry is not a JSON object")
    return original


def _rewrite(
    config_path: Path | None,
    change: Callable[[str, Any], Any | None],
    print_only: bool,
) -> tuple[Path, dict[str, Any], list[str]]:
    """Applies ``change`` to every server (None keeps it); backs up and writes once if
    anything changed. Returns the path, the new ``mcpServers`` and the keys changed."""
    path = Path(config_path).expanduser() if config_path else default_config_path()
    target = path.resolve() if path.is_symlink() else path
    raw, old = _load(target)
    servers = dict(old.get("mcpServers") or {})
    changed = []
    for key, entry in servers.items():
        new_entry = change(key, entry)
        if new_entry is not None and new_entry != entry:
            servers[key] = new_entry
            changed.append(key)
    if changed and not print_only:
        if raw is not None:
            _backup(target, raw)
        _atomic_write(target, dumps({**old, "mcpServers": servers}).encode())
    return path, servers, changed


def wrap(
    config_path: Path | None,
    customer: str | None,
    skip: str = "activitybi",
    print_only: bool = False,
) -> tuple[Path, dict[str, Any], list[str]]:
    """Routes every stdio server but ``skip`` (ours) through the proxy; idempotent, since a
    wrapped entry is recognised. Returns the path, the new ``mcpServers`` and the keys wrapped."""

    def change(key: str, entry: Any) -> Any | None:
        return wrapped_entry(key, entry, customer) if key != skip and _wrappable(entry) else None

    return _rewrite(config_path, change, print_only)


def unwrap(config_path: Path | None, print_only: bool = False) -> tuple[Path, dict[str, Any], list[str]]:
    """Puts every wrapped entry back exactly as it was before ``wrap``."""
    return _rewrite(
        config_path, lambda key, entry: original_entry(key, entry) if is_wrapped(entry) else None, print_only
    )
