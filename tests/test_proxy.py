"""`activitybi proxy` between real MCP clients and real stdio servers: invisible, and every
call recorded once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

from activitybi import QueueReader

FIXTURES = Path(__file__).parent / "proxy_fixtures"
SDK_SERVER = [sys.executable, str(FIXTURES / "sdk_server.py")]
RAW_SERVER = [sys.executable, str(FIXTURES / "raw_server.py")]
PROXY = [sys.executable, "-m", "activitybi", "proxy", "--name", "t", "--"]


def events(home: Path) -> list[dict[str, Any]]:
    qdir = home / "queue"
    if not qdir.exists():
        return []
    with QueueReader(str(qdir)) as reader:
        lines, _ = reader.read()
    return [json.loads(line) for line in lines]


def calls(home: Path) -> dict[str, list[dict[str, Any]]]:
    """Recorded features by tool (or method)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events(home):
        f = e["feature_json"]
        out.setdefault(f.get("tool") or f["method"], []).append(e)
    return out


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVITYBI_CUSTOMER")}
    base.update(extra)
    return base


async def list_roots(_ctx: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///tmp/a"), types.Root(uri="file:///tmp/b")])


@asynccontextmanager
async def session(command: list[str], **extra: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=command[0], args=command[1:], env=env(**extra))
    async with (
        stdio_client(params) as (r, w),
        ClientSession(r, w, list_roots_callback=list_roots) as s,
    ):
        await s.initialize()
        yield s


async def conversation(command: list[str], **extra: str) -> list[Any]:
    """The same calls, in order; the results as plain data to compare."""
    async with session(command, **extra) as s:
        results: list[Any] = [(await s.list_tools()).model_dump()]
        for name, args in [
            ("echo", {"text": "héllo"}),
            ("fail", {"reason": "no luck"}),
            ("slow", {"ms": 150}),
            ("roots", {}),
            ("echo", {"text": "x" * 100_000}),
        ]:
            results.append((await s.call_tool(name, args)).model_dump())
        return results


# -- the SDK's client through the proxy -------------------------------------------------


def test_sdk_results_identical_and_each_call_recorded_once(_home: Path) -> None:
    direct = anyio.run(conversation, SDK_SERVER)
    proxied = anyio.run(partial(conversation, PROXY + SDK_SERVER, ACTIVITYBI_CUSTOMER="ann@example.com"))
    assert proxied == direct
    assert direct[4]["content"][0]["text"] == "file:///tmp/a file:///tmp/b"  # server-to-client request

    by = calls(_home)
    assert sorted(by) == ["echo", "fail", "initialize", "roots", "slow", "tools/list"]
    assert [len(by[k]) for k in sorted(by)] == [2, 1, 1, 1, 1, 1]
    assert "roots/list" not in by  # the server's request to the client is not a call of ours
    everything = [e for es in by.values() for e in es]
    assert len({e["activity_id"] for e in everything}) == len(everything)
    sessions = {e["feature_json"]["session_id"] for e in everything}
    assert len(sessions) == 1 and {e["_session_id"] for e in everything} == sessions
    for e in everything:
        f = e["feature_json"]
        assert e["customer"] == "ann@example.com" and e["_source"] == "proxy"
        assert f["source"] == "proxy" and f["mcp_server"] == "t"
        assert f["latency_ms"] >= 0 and f["request_bytes"] > 0 and f["response_bytes"] > 0
        assert "arguments" not in f and "result" not in f  # no contents unless asked for
        assert e["activity"] == ("called_tool" if "tool" in f else "called_mcp_method")
    assert by["initialize"][0]["activity"] == "called_mcp_method"
    assert by["echo"][0]["feature_json"]["outcome"] == "ok"
    assert "no luck" in by["fail"][0]["feature_json"]["outcome"]
    assert 150 <= by["slow"][0]["feature_json"]["latency_ms"] < 5000
    big = max(by["echo"], key=lambda e: e["feature_json"]["request_bytes"])["feature_json"]
    assert big["request_bytes"] > 100_000 and big["response_bytes"] > 100_000


def test_content_capture_records_arguments_and_results_truncated(_home: Path) -> None:
    anyio.run(
        partial(conversation, PROXY + SDK_SERVER, ACTIVITYBI_CUSTOMER="ann", ACTIVITYBI_CAPTURE_CONTENT="1")
    )
    by = calls(_home)
    small, big = sorted(by["echo"], key=lambda e: e["feature_json"]["request_bytes"])
    assert small["feature_json"]["arguments"] == {"text": "héllo"}
    assert small["feature_json"]["result"]["content"][0]["text"] == "héllo"
    assert isinstance(big["feature_json"]["arguments"], str)
    assert len(big["feature_json"]["arguments"].encode()) <= 16 * 1024
    assert len(big["feature_json"]["result"].encode()) <= 16 * 1024
    assert by["tools/list"][0]["feature_json"]["method"] == "tools/list"


# -- byte for byte, with a server that misbehaves -----------------------------------------


def rpc(rid: object, method: str, params: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return json.dumps(msg).encode() + b"\n"


def call(rid: object, tool: str, **args: Any) -> bytes:
    return rpc(rid, "tools/call", {"name": tool, "arguments": args})


SCRIPT = b"".join(
    [
        b"not json from the client\n",
        rpc(0, "initialize", {}),
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n',
        call(1, "echo", text="a\u00e9\u4e2d"),
        call("1", "echo", text="string id"),
        call(2, "garbage"),
        call(5, "ask"),
        b'{"jsonrpc":"2.0","id":5,"result":{"roots":[{"uri":"file:///r"}]}}\n',  # answers the server
        call(6, "error"),
        call(7, "tool_error"),
        call(8, "echo", text="last"),
    ]
)


def run_raw(command: list[str], stdin: bytes, **extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, input=stdin, capture_output=True, env=env(**extra), timeout=60)


def test_raw_bytes_forwarded_unchanged_and_ids_kept_apart(_home: Path) -> None:
    direct = run_raw(RAW_SERVER, SCRIPT)
    proxied = run_raw(PROXY + RAW_SERVER, SCRIPT, ACTIVITYBI_CUSTOMER="ann")
    assert b"garbage \xff\xfe not json\n" in direct.stdout and b"{broken json\n" in direct.stdout
    assert proxied.stdout == direct.stdout
    assert proxied.returncode == direct.returncode == 0
    assert proxied.stderr == b""

    by = calls(_home)
    assert [e["feature_json"]["outcome"] for e in by["echo"]] == ["ok", "ok", "ok"]
    assert by["garbage"][0]["feature_json"]["outcome"] == "ok"
    ask = by["ask"][0]["feature_json"]
    assert ask["outcome"] == "ok" and b"file:///r" in direct.stdout
    assert by["error"][0]["feature_json"]["outcome"] == "bad args"
    assert by["tool_error"][0]["feature_json"]["outcome"] == "disk on fire"
    assert len(by["initialize"]) == 1 and "roots/list" not in by
    assert sum(len(v) for v in by.values()) == 8


def test_partial_lines_from_the_client(_home: Path) -> None:
    """Requests split anywhere, even mid-character, arrive whole and are still recorded."""
    proc = subprocess.Popen(
        PROXY + RAW_SERVER,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env(ACTIVITYBI_CUSTOMER="ann"),
    )
    assert proc.stdin is not None and proc.stdout is not None
    payload = call(1, "echo", text="\u4e2d" * 10) + call(2, "echo", text="b")
    for i in range(0, len(payload), 7):
        proc.stdin.write(payload[i : i + 7])
        proc.stdin.flush()
        time.sleep(0.002)
    proc.stdin.close()
    out = proc.stdout.read()
    assert proc.wait(30) == 0
    assert out == run_raw(RAW_SERVER, payload).stdout
    assert len(calls(_home)["echo"]) == 2


def test_cancelled_request_recorded_as_cancelled(_home: Path) -> None:
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
    script = call(1, "hang") + json.dumps(cancel).encode() + b"\n" + call(2, "echo", text="after")
    proxied = run_raw(PROXY + RAW_SERVER, script, ACTIVITYBI_CUSTOMER="ann")
    assert proxied.stdout == run_raw(RAW_SERVER, script).stdout
    by = calls(_home)
    assert [e["feature_json"]["outcome"] for e in by["hang"]] == ["cancelled"]
    assert [e["feature_json"]["outcome"] for e in by["echo"]] == ["ok"]


def test_server_crash_mid_call(_home: Path) -> None:
    script = call(1, "echo", text="before") + call(2, "crash", code=7)
    direct = run_raw(RAW_SERVER, script)
    proxied = run_raw(PROXY + RAW_SERVER, script, ACTIVITYBI_CUSTOMER="ann")
    assert direct.returncode == proxied.returncode == 7
    assert proxied.stdout == direct.stdout
    by = calls(_home)
    assert [e["feature_json"]["outcome"] for e in by["echo"]] == ["ok"]
    crashed = by["crash"][0]["feature_json"]
    assert crashed["outcome"] == "server exited with code 7 before responding"
    assert crashed["response_bytes"] == 0


def test_sdk_client_sees_a_crash_through_the_proxy(_home: Path) -> None:
    async def crash() -> None:
        with pytest.raises(Exception):  # noqa: B017 - the SDK's error for a dead server
            async with session(PROXY + SDK_SERVER, ACTIVITYBI_CUSTOMER="ann") as s:
                with anyio.fail_after(20):
                    await s.call_tool("crash", {"code": 3})

    anyio.run(crash)
    (crashed,) = calls(_home)["crash"]
    assert crashed["feature_json"]["outcome"] == "server exited with code 3 before responding"


def test_no_customer_one_line_and_byte_exact(_home: Path) -> None:
    direct = run_raw(RAW_SERVER, SCRIPT)
    proxied = run_raw(PROXY + RAW_SERVER, SCRIPT)
    assert proxied.stdout == direct.stdout
    lines = proxied.stderr.decode().splitlines()
    assert len(lines) == 1 and "capture is off because no customer is configured" in lines[0]
    assert events(_home) == []


def test_queue_failure_never_breaks_the_session(_home: Path) -> None:
    _home.mkdir(parents=True)
    (_home / "queue").write_text("a file where the queue directory belongs")
    direct = run_raw(RAW_SERVER, SCRIPT)
    proxied = run_raw(PROXY + RAW_SERVER, SCRIPT, ACTIVITYBI_CUSTOMER="ann")
    assert proxied.stdout == direct.stdout and proxied.returncode == 0
    assert len(proxied.stderr.decode().splitlines()) == 1


# -- signals and exit codes ----------------------------------------------------------------

SIGNAL_CHILD = """
import signal, sys, time
signal.signal(signal.SIGHUP, lambda *a: print("child got HUP", file=sys.stderr, flush=True))
signal.signal(signal.SIGINT, lambda *a: sys.exit(42))
print("ready", file=sys.stderr, flush=True)
while True:
    time.sleep(0.05)
"""


def start_signal_child() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*PROXY, sys.executable, "-c", SIGNAL_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(ACTIVITYBI_CUSTOMER="ann"),
    )
    assert proc.stderr is not None
    assert proc.stderr.readline() == b"ready\n"  # the child's stderr comes through
    return proc


def test_signals_reach_the_child_and_its_exit_code_is_ours() -> None:
    proc = start_signal_child()
    assert proc.stderr is not None
    proc.send_signal(signal.SIGHUP)
    assert proc.stderr.readline() == b"child got HUP\n"
    assert proc.poll() is None  # the child handled it; the proxy keeps going
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 42


def test_killed_child_gives_128_plus_signal() -> None:
    proc = start_signal_child()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 128 + signal.SIGTERM


def test_missing_command_fails_clearly() -> None:
    done = run_raw([*PROXY, "/nonexistent/server"], b"")
    assert done.returncode == 127 and b"cannot start" in done.stderr


# -- install-claude --wrap / --unwrap ----------------------------------------------------------

ORIGINAL: dict[str, Any] = {
    "globalShortcut": "Ctrl+Space",
    "mcpServers": {
        "filesystem": {
            "command": "npx",
            "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
            "env": {"TOKEN": "s3cr\u00e9t", "ACTIVITYBI_CUSTOMER": "someone else"},
        },
        "git": {"type": "stdio", "command": "uvx"},
        "raw": {"command": RAW_SERVER[0], "args": RAW_SERVER[1:], "env": {}},
        "remote": {"type": "http", "url": "https://example.com/mcp"},
    },
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "activitybi", *args], capture_output=True, text=True, env=env(), check=True
    )


def test_wrap_is_idempotent_and_unwrap_restores_exactly(tmp_path: Path) -> None:
    path = tmp_path / "claude_desktop_config.json"
    path.write_text(json.dumps(ORIGINAL, indent=4))
    cli("install-claude", "--config", str(path), "--customer", "ann", "--wrap")
    wrapped = json.loads(path.read_text())
    backups = sorted(tmp_path.glob("*.bak"))
    assert len(backups) >= 1 and json.loads(backups[0].read_bytes()) == ORIGINAL
    servers = wrapped["mcpServers"]
    assert set(servers) == {"filesystem", "git", "raw", "remote", "activitybi"}
    assert servers["remote"] == ORIGINAL["mcpServers"]["remote"]
    fs = servers["filesystem"]
    assert os.path.isabs(fs["command"]) and Path(fs["command"]).name.startswith(("activitybi", "python"))
    i = fs["args"].index("proxy")
    inner = ["npx", *ORIGINAL["mcpServers"]["filesystem"]["args"]]
    assert fs["args"][i:] == ["proxy", "--name", "filesystem", "--", *inner]
    assert fs["env"]["TOKEN"] == "s3cr\u00e9t" and fs["env"]["ACTIVITYBI_CUSTOMER"] == "ann"
    assert servers["git"]["type"] == "stdio" and servers["git"]["args"][-2:] == ["--", "uvx"]
    assert servers["activitybi"]["args"][-1] == "serve"  # ours is not wrapped

    before, n_backups = path.read_bytes(), len(list(tmp_path.glob("*.bak")))
    cli("install-claude", "--config", str(path), "--customer", "ann", "--wrap")
    assert path.read_bytes() == before and len(list(tmp_path.glob("*.bak"))) == n_backups

    cli("install-claude", "--config", str(path), "--unwrap")
    restored = json.loads(path.read_text())
    for key, entry in ORIGINAL["mcpServers"].items():
        assert json.dumps(restored["mcpServers"][key]) == json.dumps(entry)  # same bytes, same key order
    assert restored["globalShortcut"] == "Ctrl+Space" and "activitybi" in restored["mcpServers"]
    after = path.read_bytes()
    cli("install-claude", "--config", str(path), "--unwrap")
    assert path.read_bytes() == after


def test_a_wrapped_entry_runs_through_the_proxy(tmp_path: Path, _home: Path) -> None:
    path = tmp_path / "claude_desktop_config.json"
    path.write_text(json.dumps(ORIGINAL))
    cli("install-claude", "--config", str(path), "--customer", "ann", "--wrap")
    entry = json.loads(path.read_text())["mcpServers"]["raw"]
    done = subprocess.run(
        [entry["command"], *entry["args"]],
        input=SCRIPT,
        capture_output=True,
        env={**env(), **entry["env"]},
        timeout=60,
    )
    assert done.stdout == run_raw(RAW_SERVER, SCRIPT).stdout
    recorded = events(_home)
    assert recorded and {(e["customer"], e["feature_json"]["mcp_server"]) for e in recorded} == {
        ("ann", "raw")
    }


def test_the_child_does_not_inherit_the_original_entry() -> None:
    show = "import os, sys; sys.stdout.write(os.environ.get('ACTIVITYBI_PROXY_ORIGINAL', 'absent'))"
    done = run_raw([*PROXY, sys.executable, "-c", show], b"", ACTIVITYBI_PROXY_ORIGINAL="{}")
    assert done.stdout == b"absent"
