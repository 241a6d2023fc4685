"""Helpers the transcript importer and the hook share, kept light: the hook imports this
module on every event, so it may not pull in anything slow to import."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any

import orjson

from activitybi.capture import facts

PROMPT_CAP = 65_536
"""Longest prompt text kept when content capture is on (characters)."""


def prompt_id(session_id: str, text: str, occurrence: int) -> str:
    """The source key shared by a hook's prompt and the transcript's line for it: neither
    has an id the other knows, so the key is the session, the text's digest and how many
    times this text was asked before in the session."""
    digest = hashlib.sha256(text.strip().encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{session_id}:{digest}:{occurrence}"


def prompt_digest(session_id: str, text: str) -> str:
    """The key under which a session's count of one prompt text is kept."""
    raw = f"{session_id}\0{text.strip()}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:24]


def mcp_server(tool: str | None) -> str | None:
    """`mcp__<server>__<tool>` is how Claude Code names an MCP server's tool."""
    if tool and tool.startswith("mcp__"):
        server = tool[5:].split("__", 1)[0]
        return server or None
    return None


def quarantine(file: Path, source: str, reason: str, raw: bytes, **where: Any) -> None:
    """Keeps input we could not use, with why, so nothing is lost silently: the text with
    what the redaction policy removes removed (`activitybi.privacy.redact_text`), or base64
    when it is not UTF-8 and holds nothing to redact (else its text, invalid bytes replaced
    and redacted, as `utf-8-lossy`)."""
    from activitybi.privacy import redact_text

    try:
        text, encoding = redact_text(raw.decode("utf-8")), "utf-8"
    except UnicodeDecodeError:
        import base64

        lossy = raw.decode("utf-8", "replace")
        redacted = redact_text(lossy)
        if redacted != lossy:
            text, encoding = redacted, "utf-8-lossy"
        else:
            text, encoding = base64.b64encode(raw).decode(), "base64"
    now = dt.datetime.now(dt.UTC)
    record = {"ts": facts.iso_ts(now), "source": source, "reason": reason, **where}
    record.update(raw=text, encoding=encoding)
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "ab") as f:
        f.write(orjson.dumps(record) + b"\n")


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
