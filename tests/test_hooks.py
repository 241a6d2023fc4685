"""`activitybi hook`: every Claude Code hook event and bad input, in real processes.

Whatever arrives, the hook exits 0 and prints nothing (Claude Code reads a hook's stdout
as instructions), and nothing is lost: each input is recorded or quarantined whole.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import httpx2
import orjson
import pytest

from activitybi.capture.facts import CALLED_TOOL, fact_id
from activitybi.config import Home
from tests.mcp_clients import HttpServer
from tests.test_transcripts import SESSION, queued, write_session

CUSTOMER = "ana@example.com"
HOOK = [sys.executable, "-m", "activitybi.capture.hooks"]


def common(event: str, transcript: str = "/nowhere/x.jsonl") -> dict[str, Any]:
    return {
        "session_id": SESSION,
        "transcript_path": transcript,
        "cwd": "/home/ana/shop",
        "hook_event_name": event,
    }


EVENTS: dict[str, dict[str, Any]] = {
    "SessionStart": common("SessionStart") | {"source": "startup"},
    "UserPromptSubmit": common("UserPromptSubmit") | {"prompt": "Why does login fail?"},
    "PreToolUse": common("PreToolUse")
    | {"tool_name": "Read", "tool_input": {"file_path": "a.py"}, "tool_use_id": "toolu_01"},
    "PostToolUse": common("PostToolUse")
    | {
        "tool_name": "Read",
        "tool_input": {},
        "tool_use_id": "toolu_01",
        "tool_response": {"ok": 1},
        "duration_ms": 12,
    },
    "Notification": common("Notification") | {"message": "Claude needs your permission to use Bash"},
    "Stop": common("Stop") | {"stop_hook_active": False},
    "SubagentStop": common("SubagentStop") | {"stop_hook_active": False},
    "PreCompact": common("PreCompact") | {"trigger": "manual", "custom_instructions": ""},
    "SessionEnd": common("SessionEnd") | {"reason": "exit"},
    "PermissionRequest": common("PermissionRequest") | {"tool_name": "Bash", "tool_input": {"command": "ls"}},
}
ACTIVITY = {
    "SessionStart": "started_session",
    "UserPromptSubmit": "asked_question",
    "PostToolUse": "called_tool",
    "Notification": "received_notification",
    "Stop": "finished_response",
    "SubagentStop": "finished_subagent",
    "PreCompact": "compacted_context",
    "SessionEnd": "ended_session",
    "PermissionRequest": "hook_permission_request",
}


def hook(stdin: bytes, cmd: list[str] = HOOK, **env: str) -> subprocess.CompletedProcess[bytes]:
    out = subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, "ACTIVITYBI_CUSTOMER": CUSTOMER, **env},
    )
    assert (out.returncode, out.stdout) == (0, b""), out.stderr
    return out


def quarantined(home: Path) -> list[dict[str, Any]]:
    path = Home(home).capture_quarantine
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_every_event_exits_0_silently_and_is_recorded(name: str, _home: Path) -> None:
    hook(orjson.dumps(EVENTS[name]))
    assert quarantined(_home) == []
    events = queued(_home)
    if name == "PreToolUse":  # its PostToolUse records the call
        assert events == []
        return
    [event] = events
    assert event["activity"] == ACTIVITY[name]
    assert event["customer"] == CUSTOMER and event["_source"] == "hook"
    assert event["feature_json"]["session_id"] == SESSION and event["feature_json"]["source"] == "hook"


def test_the_click_command_is_the_same_hook(_home: Path) -> None:
    hook(orjson.dumps(EVENTS["Stop"]), [sys.executable, "-m", "activitybi", "hook"])
    assert [e["activity"] for e in queued(_home)] == ["finished_response"]


def test_tool_call_has_the_transcripts_id(_home: Path) -> None:
    hook(orjson.dumps(EVENTS["PostToolUse"]))
    [event] = queued(_home)
    assert event["activity_id"] == fact_id(CUSTOMER, CALLED_TOOL, "toolu_01")
    assert event["feature_json"]["latency_ms"] == 12 and event["feature_json"]["outcome"] == "ok"


def test_prompt_and_tool_are_one_fact_with_the_transcript(tmp_path: Path, _home: Path) -> None:
    """The hook's prompts and tool calls get the ids the transcript import gives them."""
    for prompt in ("Why does login fail?", "Thanks, now add a test", "Why does login fail?"):
        hook(orjson.dumps(EVENTS["UserPromptSubmit"] | {"prompt": prompt}))
    hook(orjson.dumps(EVENTS["PostToolUse"]))
    from_hooks = {e["activity_id"] for e in queued(_home)}
    path = write_session(tmp_path / "projects")
    with path.open("ab") as f:  # the same text asked again: its second occurrence
        f.write(
            b"\n"
            + orjson.dumps(
                {
                    "type": "user",
                    "sessionId": SESSION,
                    "message": {"role": "user", "content": "Why does login fail?"},
                }
            )
            + b"\n"
        )
    hook(orjson.dumps(common("SessionEnd", str(path)) | {"reason": "exit"}))  # imports the transcript
    events = queued(_home)
    prompts = {
        e["activity_id"] for e in events if e["activity"] == "asked_question" and e["_source"] == "transcript"
    }
    assert len(prompts) == 3 and prompts < from_hooks
    assert fact_id(CUSTOMER, CALLED_TOOL, "toolu_01") in {
        e["activity_id"] for e in events if e["_source"] == "transcript"
    }


def test_session_end_completes_the_session(tmp_path: Path, _home: Path) -> None:
    """No daemon: SessionEnd imports the transcript's rest, the last response included."""
    path = write_session(tmp_path / "projects")
    hook(orjson.dumps(common("SessionEnd", str(path)) | {"reason": "logout"}))
    events = queued(_home)
    models = {e["feature_json"]["request_id"] for e in events if e["activity"] == "called_model"}
    assert models == {"req_01", "req_02", "req_03", "req_04"}
    assert [e["activity"] for e in events].count("ended_session") == 1


BAD: dict[str, bytes] = {
    "empty": b"",
    "not JSON": b"hello, this is not json",
    "binary": bytes(range(256)) * 64,
    "huge": b'{"hook_event_name": "UserPromptSubmit", "prompt": "' + b"x" * (8 * 1024 * 1024),
    "a list": b"[1, 2]",
    "no event name": b'{"session_id": "s"}',
    "no session": b'{"hook_event_name": "Stop"}',
    "tool call without id": orjson.dumps(common("PostToolUse") | {"tool_name": "Read"}),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_exits_0_silently_and_is_quarantined_whole(name: str, _home: Path) -> None:
    raw = BAD[name]
    hook(raw)
    assert queued(_home) == []
    [record] = quarantined(_home)
    kept = base64.b64decode(record["raw"]) if record["encoding"] == "base64" else record["raw"].encode()
    assert kept == raw and record["reason"] and record["source"] == "hook"


def test_a_broken_queue_still_exits_0_and_keeps_the_input(_home: Path) -> None:
    _home.mkdir(parents=True)
    (_home / "queue").write_text("a file where the queue directory belongs")
    raw = orjson.dumps(EVENTS["Stop"])
    hook(raw)
    [record] = quarantined(_home)
    assert record["raw"].encode() == raw and "Error" in record["reason"]


def test_content_capture_keeps_the_prompt(_home: Path) -> None:
    hook(orjson.dumps(EVENTS["UserPromptSubmit"]), ACTIVITYBI_CAPTURE_CONTENT="1")
    hook(orjson.dumps(EVENTS["UserPromptSubmit"]))
    assert [e["feature_json"].get("prompt") for e in queued(_home)] == ["Why does login fail?", None]


@pytest.mark.slow
def test_http_endpoint(_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import mcp_clients

    base = mcp_clients.server_env  # the server runs this source tree, as the hook does
    monkeypatch.setattr(
        mcp_clients, "server_env", lambda home: base(home, PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    )
    server = HttpServer(_home, {"tok-ana": CUSTOMER, "tok-bo": "bo@example.com"})
    url = f"http://127.0.0.1:{server.port}/hooks/claude-code"
    try:
        r = httpx2.post(
            url, content=orjson.dumps(EVENTS["PostToolUse"]), headers={"Authorization": "Bearer tok-bo"}
        )
        assert (r.status_code, r.content) == (200, b"")
        assert httpx2.post(url, content=b"{}", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx2.post(url, content=b"{}").status_code == 401
        bad = httpx2.post(url, content=b"not json", headers={"Authorization": "Bearer tok-ana"})
        assert bad.status_code == 400
    finally:
        server.stop()
    # the server's owner may have loaded it already: load the rest, then read the warehouse
    subprocess.run([sys.executable, "-m", "activitybi", "upload", "--once", "--quiet"], check=True)
    with duckdb.connect(str(Home(_home).warehouse), read_only=True) as db:
        called = db.execute(
            "SELECT customer, activity_id FROM claude_stream "
            "WHERE activity = 'called_tool' AND _source = 'hook'"
        ).fetchall()
    assert called == [("bo@example.com", fact_id("bo@example.com", CALLED_TOOL, "toolu_01"))]
    [record] = quarantined(_home)
    assert record["raw"] == "not json" and record["customer"] == CUSTOMER
