"""`activitybi doctor`: checks what a working install needs, and for each problem prints
what is wrong and the command that fixes it.

`activitybi status` shows what the processes are doing; the doctor checks what they stand
on (the package, the home and its permissions, the queue, the warehouse, Redis, the Claude
settings) so that a user can repair a machine without reading the architecture first. It
only reads: it never takes a lock another process needs, nor changes a file.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from activitybi import config

NEAR_FULL = 0.8
"""Pending events past this share of `max_pending` are a problem (the alert's threshold)."""


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's answer: `fix` is None when all is well."""

    check: str
    detail: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.fix is None


def check_install() -> Iterator[Finding]:
    """The package and its Rust core import, and were built together."""
    try:
        from activitybi import _core
    except ImportError as e:
        yield Finding(
            "install",
            f"the Rust core activitybi._core does not load: {e}",
            "pip install --force-reinstall activitybi",
        )
        return
    from importlib import metadata

    try:
        dist = metadata.version("activitybi")
    except metadata.PackageNotFoundError:
        dist = None
    py = f"Python {sys.version.split()[0]}"
    if dist is not None and dist != _core.__version__:
        yield Finding(
            "install",
            f"the package is {dist} but its Rust core is {_core.__version__} ({py})",
            "pip install --force-reinstall activitybi",
        )
    else:
        yield Finding("install", f"activitybi {_core.__version__}, Rust core loaded ({py})")


def check_home(home: Path) -> Iterator[Finding]:
    """The home is 0700 and ours, and nothing in it is readable by others (it holds events,
    tokens' customers and the key of every keyed hash)."""
    if not home.exists():
        yield Finding("home", f"{home} does not exist", "activitybi init  # creates it, 0700")
        return
    st = home.stat()
    if st.st_uid != os.getuid():
        yield Finding(
            "home",
            f"{home} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})",
            f"sudo chown -R {os.getuid()} {shlex.quote(str(home))}",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        yield Finding(
            "home",
            f"{home} is mode {mode:04o}: other users can open it (want 0700)",
            f"chmod 700 {shlex.quote(str(home))}",
        )
    exposed = []
    for root, dirs, files in os.walk(home):
        for name in (*dirs, *files):
            path = Path(root, name)
            try:
                if stat.S_IMODE(path.lstat().st_mode) & 0o077 and not path.is_symlink():
                    exposed.append(path)
            except FileNotFoundError:  # removed meanwhile (a sealed segment, a ticket)
                continue
    if exposed:
        first = ", ".join(str(p.relative_to(home)) for p in sorted(exposed)[:3])
        yield Finding(
            "home",
            f"{len(exposed)} entries under {home} are open to group or others ({first})",
            f"chmod -R go-rwx {shlex.quote(str(home))}",
        )
    if not exposed and not mode & 0o077 and st.st_uid == os.getuid():
        yield Finding("home", f"{home}: 0700, every entry private")


def check_queue(home: Path) -> Iterator[Finding]:
    """The queue opens and has room, no server's handle has a sticky I/O error, and the
    uploader's quarantine is empty."""
    paths = config.Home(home)
    qdir = paths.queue
    if not qdir.is_dir():
        yield Finding("queue", f"{qdir}: nothing written yet")
    else:
        from activitybi import ActivitybiError, Queue

        try:
            q = Queue(str(qdir))  # lazy: no segment is created until an append
            try:
                s = q.stats()
            finally:
                q.close()
        except (ActivitybiError, OSError) as e:
            yield Finding(
                "queue",
                f"{qdir} does not open: {e}",
                f"mv {shlex.quote(str(qdir))} {shlex.quote(str(qdir))}.broken  "
                "# then restart the servers; the old segments stay for inspection",
            )
        else:
            pending, most = s["pending"], s["max_pending"]
            if pending >= NEAR_FULL * most:
                yield Finding(
                    "queue",
                    f"{pending:,} of {most:,} events pending ({pending / most:.0%}); "
                    "at 100% tools refuse events",
                    "activitybi upload --once  # or see why the owner is not loading: activitybi status",
                )
            else:
                yield Finding("queue", f"{pending:,} of {most:,} events pending")
    for server in _servers(paths):
        io_error = (server.get("queue") or {}).get("io_error")
        if io_error:
            yield Finding(
                "queue",
                f"server PID {server['pid']}: its queue handle refuses durable writes after an "
                f"I/O error: {io_error}",
                f"df -h {shlex.quote(str(qdir))}  # free the disk, then restart it: kill {server['pid']}",
            )
    lines = _lines(paths.quarantine)
    if lines:
        reason = _last_reason(paths.quarantine)
        qf = shlex.quote(str(paths.quarantine))
        yield Finding(
            "queue",
            f"{lines:,} lines in quarantine {paths.quarantine} (last: {reason}); "
            "they never load by themselves",
            f"tail {qf}  # read the reasons and fix the sender, then: mv {qf} {qf}.reviewed",
        )


def _servers(paths: config.Home) -> list[dict[str, Any]]:
    """The running servers' status files: each holds its own queue handle's stats, where a
    sticky I/O error shows (a handle the doctor opens has none)."""
    from activitybi.reporting.health import live_status

    return [s for p in sorted(paths.status.glob("server-*.json")) if (s := live_status(p))]


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def _last_reason(path: Path) -> str:
    last = path.read_bytes().rstrip().rsplit(b"\n", 1)[-1]
    try:
        data = orjson.loads(last)
    except orjson.JSONDecodeError:
        return "unreadable"
    return str(data.get("reason", "?")) if isinstance(data, dict) else "?"


def check_warehouse(home: Path, settings: config.Settings) -> Iterator[Finding]:
    """DuckDB: the file opens read-only, or a live activitybi owner holds it. Snowflake: the
    settings it needs are there and its extra is installed."""
    if settings.warehouse == "snowflake":
        from activitybi.extras import MissingExtra, require
        from activitybi.warehouse.snowflake import SnowflakeWarehouse

        try:
            require("snowflake.connector", "snowflake", "the Snowflake warehouse")
            SnowflakeWarehouse.from_env()
        except MissingExtra as e:
            yield Finding("warehouse", str(e), "pip install 'activitybi[snowflake]'")
        except ValueError as e:
            fix = "export the SNOWFLAKE_* settings, then: activitybi init"
            yield Finding("warehouse", f"Snowflake: {e}", fix)
        else:
            yield Finding("warehouse", "Snowflake settings present")
        return
    from activitybi.reporting.source import WarehouseBusy, connect_read_only, is_owner

    path = config.Home(home).warehouse
    if not path.exists():
        yield Finding("warehouse", f"no DuckDB warehouse at {path} yet", "activitybi init")
        return
    try:
        connect_read_only(path).close()
    except WarehouseBusy as e:
        if is_owner(e.command):
            yield Finding("warehouse", f"{path} held by the owner, PID {e.pid} ({e.command})")
        else:
            who = f"PID {e.pid}" + (f" ({e.command})" if e.command else "") if e.pid else "another process"
            yield Finding(
                "warehouse",
                f"{path} is locked by {who}, not by an activitybi owner: nothing can load",
                f"kill {e.pid}" if e.pid else f"fuser -v {shlex.quote(str(path))}",
            )
    except Exception as e:  # a corrupt or foreign file: DuckDB says why
        p = shlex.quote(str(path))
        yield Finding(
            "warehouse",
            f"{path} does not open: {e}",
            f"mv {p} {p}.broken && activitybi init  # the uploader reloads from its checkpoint",
        )
    else:
        yield Finding("warehouse", f"{path} opens (no owner running)")


def check_redis(settings: config.Settings) -> Iterator[Finding]:
    """With REDIS_URL set, Redis answers a PING within a second."""
    if not settings.redis_url:
        yield Finding("redis", "REDIS_URL not set (optional: context is shared through Redis)")
        return
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError) as e:
        yield Finding(
            "redis",
            f"REDIS_URL does not answer: {e}",
            'redis-cli -u "$REDIS_URL" ping  # start Redis or correct REDIS_URL, or unset it',
        )
    else:
        yield Finding("redis", "REDIS_URL answers PING")


def _runs(command: str) -> bool:
    """Whether a configured command can still start (a venv may be gone)."""
    return Path(command).is_file() and os.access(command, os.X_OK)


def check_claude_desktop(home: Path, path: Path | None = None) -> Iterator[Finding]:
    """Our server entry is in Claude Desktop's config, runs, and writes to this home; and
    which other servers are wrapped by the proxy (recorded)."""
    from activitybi.clients import claude_desktop as cd

    path = path or cd.default_config_path()
    if not path.exists():
        yield Finding("claude desktop", f"no config at {path} (Claude Desktop not set up here)")
        return
    try:
        _, data = cd._load(path)
    except cd.ClaudeConfigError as e:
        yield Finding("claude desktop", str(e), "activitybi install-claude  # after fixing the file")
        return
    servers: dict[str, Any] = data.get("mcpServers") or {}
    ours = {k: e for k, e in servers.items() if _is_our_server(e)}
    if not ours:
        yield Finding("claude desktop", f"{path} has no activitybi server", "activitybi install-claude")
    for key, entry in ours.items():
        env = entry.get("env") or {}
        if not _runs(entry["command"]):
            yield Finding(
                "claude desktop",
                f"mcpServers.{key} runs {entry['command']}, which no longer exists",
                "activitybi install-claude",
            )
        elif (where := _entry_home(env)) != home:
            yield Finding(
                "claude desktop",
                f"mcpServers.{key} writes to {where}, not {home}",
                "activitybi install-claude",
            )
        else:
            yield Finding("claude desktop", f"mcpServers.{key} runs activitybi as {env.get(cd.CUSTOMER_ENV)}")
    wrapped = sorted(k for k, e in servers.items() if cd.is_wrapped(e))
    broken = [k for k in wrapped if not _runs(servers[k]["command"])]
    if broken:
        yield Finding(
            "claude desktop",
            f"wrapped servers whose proxy command no longer exists: {', '.join(broken)}",
            "activitybi install-claude --wrap",
        )
    elif wrapped:
        yield Finding("claude desktop", f"recording {len(wrapped)} wrapped servers: {', '.join(wrapped)}")


def _entry_home(env: dict[str, Any]) -> Path:
    """The home a server entry writes to: its own ACTIVITYBI_HOME, else the platform's."""
    if env.get(config.HOME_ENV):
        return Path(env[config.HOME_ENV]).expanduser()
    from platformdirs import user_data_path

    return user_data_path("activitybi", appauthor=False)


def _is_our_server(entry: object) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
        return False
    args = entry.get("args") or []
    from activitybi.clients.claude_desktop import is_wrapped

    words = [entry["command"], *(a for a in args if isinstance(a, str))]
    return not is_wrapped(entry) and "serve" in words and any("activitybi" in w for w in words)


def check_claude_code(path: Path | None = None) -> Iterator[Finding]:
    """Claude Code's settings hold our hook for every event (with an interpreter that
    exists) and the telemetry export to the local receiver."""
    from activitybi.clients import claude_code as cc
    from activitybi.clients.claude_desktop import ClaudeConfigError

    path = path or cc.settings_path()
    if not path.exists():
        yield Finding("claude code", f"no settings at {path} (Claude Code not set up here)")
        return
    try:
        _, data = cc._load_settings(path)
    except ClaudeConfigError as e:
        yield Finding("claude code", str(e), "activitybi install-claude-code  # after fixing the file")
        return
    hooks: dict[str, Any] = data.get("hooks") or {}
    commands = {
        event: [
            h["command"]
            for group in hooks.get(event) or []
            if isinstance(group, dict)
            for h in group.get("hooks") or []
            if cc._ours(h)
        ]
        for event in cc.HOOK_EVENTS
    }
    missing = [event for event, found in commands.items() if not found]
    stale = sorted({c for found in commands.values() for c in found if not _hook_runs(c)})
    env: dict[str, Any] = data.get("env") or {}
    telemetry = [k for k, v in cc.TELEMETRY.items() if env.get(k) != v]
    if missing:
        yield Finding(
            "claude code",
            f"{path}: no activitybi hook for {', '.join(missing)}",
            "activitybi install-claude-code",
        )
    if stale:
        yield Finding(
            "claude code",
            f"{path}: the hook's interpreter no longer exists ({stale[0]})",
            "activitybi install-claude-code",
        )
    if telemetry:
        yield Finding(
            "claude code",
            f"{path}: telemetry not sent to activitybi ({', '.join(telemetry)})",
            "activitybi install-claude-code",
        )
    if not (missing or stale or telemetry):
        yield Finding("claude code", f"{path}: hooks for every event and telemetry installed")


def _hook_runs(command: str) -> bool:
    words = shlex.split(command)
    exe = next((w for w in words if "=" not in w), "")
    return _runs(exe)


def run(home: Path | None = None, settings: config.Settings | None = None) -> list[Finding]:
    """Every check, in the order a user would repair them."""
    home = home or config.home()
    settings = settings or config.settings()
    checks: list[Callable[[], Iterator[Finding]]] = [
        check_install,
        lambda: check_home(home),
        lambda: check_queue(home),
        lambda: check_warehouse(home, settings),
        lambda: check_redis(settings),
        lambda: check_claude_desktop(home),
        check_claude_code,
    ]
    return [finding for check in checks for finding in check()]


def render(findings: list[Finding]) -> str:
    """One line per finding; a problem is followed by the command that fixes it."""
    width = max((len(f.check) for f in findings), default=0)
    out = []
    for f in findings:
        out.append(f"{'ok ' if f.ok else 'BAD'} {f.check:<{width}}  {f.detail}")
        if f.fix is not None:
            out.append(f"    {'':<{width}}  fix: {f.fix}")
    bad = sum(not f.ok for f in findings)
    out.append("all good" if not bad else f"{bad} problem{'s' if bad > 1 else ''}")
    return "\n".join(out)
