"""Sets Claude Code up to report to activitybi: hooks and telemetry in its settings.json.

`~/.claude/settings.json` (or `$CLAUDE_CONFIG_DIR/settings.json`) is the user's, holding
their permissions, other hooks and environment: as for Claude Desktop's config
(`claude_desktop.py`), we change only our entries, back the old file up first, replace it
atomically, and refuse a file we cannot parse. What we add is found again by the hook
command's module name (`activitybi.capture.hooks`), and each environment variable we set is
remembered with the value it replaced (`Home.capture / claude-code-install.json`), so
`--uninstall` removes exactly what was added and puts back what was there.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import orjson

from activitybi import config
from activitybi.capture.common import atomic_write
from activitybi.clients.claude_desktop import ClaudeConfigError, _atomic_write, _backup, _load, dumps

HOOK_MODULE = "activitybi.capture.hooks"
HOOK_EVENTS = (
    "SessionStart",
    "UserPromptSubmit",
    "PostToolUse",
    "Stop",
    "SubagentStop",
    "Notification",
    "PreCompact",
    "SessionEnd",
)
"""Every event the hook records. `PreToolUse` is left out: it would record nothing (its
`PostToolUse` does) yet add a process start before every tool call."""
TOOL_EVENTS = frozenset({"PostToolUse"})
"""Events whose hooks take a tool-name matcher (we match every tool)."""
TELEMETRY = {
    "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
    "OTEL_LOGS_EXPORTER": "otlp",
    "OTEL_METRICS_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
}
"""Claude Code's OpenTelemetry export, pointed at the local receiver (`activitybi collect`)."""


def settings_path() -> Path:
    return config.claude_dir() / "settings.json"


def record_path() -> Path:
    return config.Home.current().capture / "claude-code-install.json"


def hook_command(customer: str | None = None) -> str:
    """The hook's shell command: this interpreter running the hook module directly (the
    `activitybi` command would pay for click's import on every event), with the customer
    and home fixed when given, as Claude Code may run it in another environment."""
    env = []
    if customer:
        env.append(f"{config.CUSTOMER_ENV}={shlex.quote(customer)}")
    home = os.environ.get(config.HOME_ENV)
    if home:
        env.append(f"{config.HOME_ENV}={shlex.quote(os.path.abspath(os.path.expanduser(home)))}")
    return " ".join([*env, shlex.quote(os.path.abspath(sys.executable)), "-m", HOOK_MODULE])


def _ours(hook: object) -> bool:
    return isinstance(hook, dict) and HOOK_MODULE in str(hook.get("command", ""))


def _with_hooks(hooks: dict[str, Any], command: str) -> dict[str, Any]:
    out = dict(hooks)
    for event in HOOK_EVENTS:
        existing = out.get(event) or []
        if not isinstance(existing, list):
            raise ClaudeConfigError(f'"hooks.{event}" is not a list; the settings were not changed.')
        groups = [dict(g) if isinstance(g, dict) else g for g in existing]
        found = False
        for group in groups:
            if (
                isinstance(group, dict)
                and isinstance(group.get("hooks"), list)
                and any(_ours(h) for h in group["hooks"])
            ):
                found = True  # already installed: bring its command up to date
                group["hooks"] = [dict(h, command=command) if _ours(h) else h for h in group["hooks"]]
        if not found:
            group = {"hooks": [{"type": "command", "command": command}]}
            if event in TOOL_EVENTS:
                group = {"matcher": "*", **group}
            groups.append(group)
        out[event] = groups
    return out


def _without_hooks(hooks: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for event, groups in hooks.items():
        if not isinstance(groups, list):
            out[event] = groups
            continue
        kept = []
        for group in groups:
            if isinstance(group, dict) and isinstance(group.get("hooks"), list):
                inner = [h for h in group["hooks"] if not _ours(h)]
                if not inner and group["hooks"]:
                    continue  # the group held only our hook
                group = {**group, "hooks": inner}
            kept.append(group)
        if kept or not groups:
            out[event] = kept
    return out


def _read_record() -> dict[str, Any]:
    try:
        data = orjson.loads(record_path().read_bytes())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, raw: bytes | None, old: dict[str, Any], new: dict[str, Any]) -> bool:
    if raw is not None and new == old:
        return False
    if raw is not None:
        _backup(path, raw)
    _atomic_write(path, dumps(new).encode())
    return True


def _target(path: Path | None) -> tuple[Path, Path]:
    shown = Path(path).expanduser() if path else settings_path()
    return shown, shown.resolve() if shown.is_symlink() else shown


def planned(customer: str | None) -> dict[str, Any]:
    """What install merges in, as a settings.json fragment (for `--print`)."""
    return {"env": dict(TELEMETRY), "hooks": _with_hooks({}, hook_command(customer))}


def install(path: Path | None = None, customer: str | None = None) -> tuple[Path, bool]:
    """Merges the hooks and telemetry into settings.json; returns it and whether it changed."""
    shown, target = _target(path)
    raw, old = _load_settings(target)
    new = dict(old)
    new["hooks"] = _with_hooks(old.get("hooks") or {}, hook_command(customer))
    env = dict(old.get("env") or {})
    record = _read_record()
    mine = record.setdefault(str(target), {"env": {}, "added_keys": []})
    for key, value in TELEMETRY.items():
        if env.get(key) != value:
            if key not in mine["env"]:
                mine["env"][key] = env.get(key)  # what it was before us (None: absent)
            env[key] = value
    new["env"] = env
    mine["added_keys"] = sorted({*mine["added_keys"], *(k for k in ("hooks", "env") if k not in old)})
    changed = _write(target, raw, old, new)
    atomic_write(record_path(), orjson.dumps(record))
    return shown, changed


def uninstall(path: Path | None = None) -> tuple[Path, bool]:
    """Removes our hooks and puts back the environment values we replaced."""
    shown, target = _target(path)
    raw, old = _load_settings(target)
    if raw is None:
        return shown, False
    record = _read_record()
    mine = record.pop(str(target), {"env": {}, "added_keys": []})
    new = dict(old)
    if isinstance(old.get("hooks"), dict):
        new["hooks"] = _without_hooks(old["hooks"])
    if isinstance(old.get("env"), dict):
        env = dict(old["env"])
        for key, before in mine["env"].items():
            if env.get(key) == TELEMETRY.get(key):  # still ours: the user did not change it since
                if before is None:
                    env.pop(key, None)
                else:
                    env[key] = before
        new["env"] = env
    for key in mine["added_keys"]:
        if new.get(key) == {}:
            del new[key]
    changed = _write(target, raw, old, new)
    atomic_write(record_path(), orjson.dumps(record))
    return shown, changed


def _load_settings(path: Path) -> tuple[bytes | None, dict[str, Any]]:
    raw, data = _load(path)
    for key in ("hooks", "env"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ClaudeConfigError(f'"{key}" in {path} is not a JSON object; it was not changed.')
    return raw, data
