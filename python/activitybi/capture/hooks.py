"""Claude Code's hooks to facts: `python -m activitybi.capture.hooks` (or `activitybi hook`).

A hook runs inside the user's session, so it must never slow or break it: it imports only
the queue and this module (no click, no mcp, no duckdb, no rich), prints nothing (Claude
Code reads a hook's stdout as instructions for some events), and exits 0 whatever happens;
input it cannot use is quarantined with the reason.

What each event means:
- `UserPromptSubmit` → `asked_question`, keyed like the transcript's line for the same
  prompt (`transcripts.prompt_id`), so both sources make one row;
- `PostToolUse` / `PostToolUseFailure` → `called_tool`, keyed by `tool_use_id` (the
  transcript's and OpenTelemetry's key for the same call);
- `SessionStart` / `SessionEnd` → `started_session` / `ended_session`; at `SessionEnd` the
  rest of the session's transcript is imported, so a session is complete when it ends;
- `PreToolUse` → nothing (its `PostToolUse` records the call);
- `Stop`, `SubagentStop`, `Notification`, `PreCompact` → `finished_response`,
  `finished_subagent`, `received_notification`, `compacted_context`; any other event →
  `hook_<event in snake case>`, with its scalar fields.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import orjson

from activitybi import config
from activitybi.capture import facts

NAMED = {
    "Stop": "finished_response",
    "SubagentStop": "finished_subagent",
    "Notification": "received_notification",
    "PreCompact": "compacted_context",
}
COMMON = frozenset({"session_id", "transcript_path", "hook_event_name", "cwd"})
SCALAR_CAP = 200
"""Longest string field kept from an event we record generically."""


class BadHook(ValueError):
    """Hook input that means nothing; it is quarantined with this reason."""


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _str(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) and value else None


def _prompt_occurrence(home: config.Home, customer: str, session: str, text: str) -> int:
    """How many times this text was asked before in the session (then counts this one)."""
    from activitybi.capture.common import atomic_write, prompt_digest

    name = hashlib.sha256(f"{customer}\0{session}".encode()).hexdigest()[:32]
    path = home.hook_sessions / f"{name}.json"
    try:
        counts: dict[str, int] = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        counts = {}
    digest = prompt_digest(session, text)
    occurrence = counts.get(digest, 0)
    counts[digest] = occurrence + 1
    atomic_write(path, orjson.dumps(counts))
    return occurrence


def events(
    payload: object, *, customer: str, home: config.Home, content: bool, ts: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """The facts one hook event means; raises `BadHook` for input that means nothing."""
    if not isinstance(payload, dict):
        raise BadHook(f"not a JSON object but {type(payload).__name__}")
    name = _str(payload, "hook_event_name")
    session = _str(payload, "session_id")
    if name is None:
        raise BadHook("no hook_event_name")
    if session is None:
        raise BadHook(f"{name} without a session_id")
    ts = ts or dt.datetime.now(dt.UTC)
    project = _str(payload, "cwd")
    if name == "PreToolUse":
        return []
    if name == "UserPromptSubmit":
        prompt = payload.get("prompt")
        if not isinstance(prompt, str):
            raise BadHook("UserPromptSubmit without a prompt")
        from activitybi.capture.common import PROMPT_CAP, prompt_id

        occurrence = _prompt_occurrence(home, customer, session, prompt)
        return [
            facts.asked_question(
                customer=customer,
                source="hook",
                ts=ts,
                prompt_id=prompt_id(session, prompt, occurrence),
                session_id=session,
                prompt_length=len(prompt),
                prompt=prompt[:PROMPT_CAP] if content else None,
                project=project,
            )
        ]
    if name in ("PostToolUse", "PostToolUseFailure"):
        tool_use_id = _str(payload, "tool_use_id")
        if tool_use_id is None:
            raise BadHook(f"{name} without a tool_use_id")
        tool = _str(payload, "tool_name")
        error = _tool_error(payload) if name == "PostToolUse" else str(payload.get("error") or "error")[:300]
        duration = payload.get("duration_ms")
        latency = float(duration) if isinstance(duration, int | float) and duration >= 0 else None
        if latency is not None:  # the call started that long ago, as the transcript says
            ts -= dt.timedelta(milliseconds=latency)
        from activitybi.capture.common import mcp_server

        return [
            facts.called_tool(
                customer=customer,
                source="hook",
                ts=ts,
                tool_use_id=tool_use_id,
                session_id=session,
                tool=tool,
                outcome="error" if error else "ok",
                latency_ms=latency,
                mcp_server=mcp_server(tool),
                error=error,
                project=project,
            )
        ]
    stamp = facts.iso_ts(ts)
    detail: dict[str, object]
    if name == "SessionStart":
        kind, detail = "started_session", {"start": _str(payload, "source")}
    elif name == "SessionEnd":
        kind, detail = "ended_session", {"reason": _str(payload, "reason")}
    else:
        kind = NAMED.get(name) or f"hook_{_snake(name)}"
        detail = {
            k: v[:SCALAR_CAP] if isinstance(v, str) else v
            for k, v in payload.items()
            if k not in COMMON and isinstance(v, str | int | float | bool)
        }
        detail["hook_event_name"] = name
    return [
        facts.event(
            kind,
            activity_id=facts.fact_id(customer, kind, session, stamp, name),
            customer=customer,
            source="hook",
            ts=ts,
            session_id=session,
            features={**detail, "project": project},
        )
    ]


def _tool_error(payload: dict[str, Any]) -> str | None:
    """A PostToolUse whose response says it failed (`is_error`, `error`, `interrupted`)."""
    response = payload.get("tool_response")
    if not isinstance(response, dict):
        return None
    if response.get("is_error") or response.get("error"):
        return str(response.get("error") or "error")[:300]
    if response.get("interrupted"):
        return "interrupted"
    return None


def finish_session(queue: Any, payload: dict[str, Any], customer: str, home: config.Home) -> None:
    """At SessionEnd, imports what is left of the session's transcript (and its subagents')."""
    transcript = _str(payload, "transcript_path")
    if transcript is None or not transcript.endswith(".jsonl"):
        return
    from activitybi.capture import prices, transcripts

    path = Path(transcript).expanduser()
    importer = transcripts.Importer(
        queue, customer=customer, prices=prices.load(), home=home, content=config.settings().capture_content
    )
    importer.run(transcripts.session_files(path), final=True)


def run(raw: bytes) -> None:
    """Handles one command hook's stdin; raises on anything it cannot record."""
    from activitybi import privacy

    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadHook(f"not JSON: {e}") from None
    settings = config.settings()
    customer = settings.customer or _user()
    home = config.Home.current()
    found = events(payload, customer=customer, home=home, content=settings.capture_content)
    queue = privacy.open_queue(home.queue, home=home.root)
    try:
        if found:
            queue.append_many(found)
        if isinstance(payload, dict) and payload.get("hook_event_name") == "SessionEnd":
            finish_session(queue, payload, customer, home)
    finally:
        queue.close()


def _user() -> str:
    import getpass

    return getpass.getuser()


def main() -> None:
    """The command hook: read stdin, record, print nothing, exit 0."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (nothing may reach Claude Code's reader)
    raw = b""
    try:
        raw = sys.stdin.buffer.read()
        run(raw)
    except BaseException as e:  # a hook must never fail the session, whatever happened
        try:
            from activitybi.capture.common import quarantine

            reason = str(e) if isinstance(e, BadHook) else f"{type(e).__name__}: {e}"
            quarantine(config.Home.current().capture_quarantine, "hook", reason, raw)
        except BaseException:  # the disk is gone too: still exit 0
            pass
    os._exit(0)


if __name__ == "__main__":
    main()
