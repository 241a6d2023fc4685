"""`activitybi doctor`: each broken condition is found, said, and given the command that fixes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from activitybi import Queue, config
from activitybi.clients import claude_code, claude_desktop
from activitybi.reporting import doctor
from activitybi.reporting.doctor import Finding
from tests.mcp_clients import EXE, server_env
from tests.redis_server import RedisServer, redis_server  # noqa: F401  (the fixture)


@pytest.fixture(autouse=True)
def _clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Claude Desktop and Claude Code settings under the test's own directory."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("ACTIVITYBI_WAREHOUSE", raising=False)


def _init(home: Path) -> None:
    subprocess.run([EXE, "init"], env=server_env(home), check=True, capture_output=True)


def problems(home: Path, check: str) -> list[Finding]:
    return [f for f in doctor.run(home) if f.check == check and not f.ok]


def only(home: Path, check: str) -> Finding:
    found = problems(home, check)
    assert len(found) == 1, found
    return found[0]


def test_a_healthy_home_is_all_good_and_exits_0(_home: Path) -> None:
    _init(_home)
    out = subprocess.run(
        [EXE, "doctor"], env={**server_env(_home), **_client_env()}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout
    assert "Rust core loaded" in out.stdout and out.stdout.rstrip().endswith("all good")


def _client_env() -> dict[str, str]:
    return {k: os.environ[k] for k in ("XDG_CONFIG_HOME", "CLAUDE_CONFIG_DIR")}


def test_problems_exit_1_with_each_fix(_home: Path) -> None:
    out = subprocess.run(
        [EXE, "doctor"], env={**server_env(_home), **_client_env()}, capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "BAD home" in out.stdout and "fix: activitybi init" in out.stdout
    assert out.stdout.rstrip().endswith("2 problems")  # no home, so no warehouse either


def test_home_missing(_home: Path) -> None:
    f = only(_home, "home")
    assert "does not exist" in f.detail and f.fix is not None and f.fix.startswith("activitybi init")


def test_home_and_files_open_to_others(_home: Path) -> None:
    _init(_home)
    _home.chmod(0o755)
    f = only(_home, "home")
    assert "mode 0755" in f.detail and f.fix == f"chmod 700 {_home}"
    _home.chmod(0o700)
    (_home / "warehouse.duckdb").chmod(0o644)
    f = only(_home, "home")
    assert "1 entries" in f.detail and "warehouse.duckdb" in f.detail
    assert f.fix == f"chmod -R go-rwx {_home}"
    subprocess.run(f.fix, shell=True, check=True)  # the fix fixes it
    assert not problems(_home, "home")


def test_queue_near_max_pending(_home: Path) -> None:
    qdir = config.Home(_home).queue
    with Queue(str(qdir)) as q:
        q.append_many([b'{"activity":"asked_question"}'] * 80_000)
    f = only(_home, "queue")
    assert "80,000 of 100,000 events pending (80%)" in f.detail
    assert f.fix is not None and f.fix.startswith("activitybi upload --once")


def test_queue_that_does_not_open(_home: Path) -> None:
    qdir = config.Home(_home).queue
    with Queue(str(qdir)) as q:
        q.append({"activity": "asked_question"})
    (qdir / "queue.state").write_bytes(b"not a queue state file, wrong magic" * 4)
    f = only(_home, "queue")
    assert "does not open" in f.detail and f.fix is not None and f.fix.startswith(f"mv {qdir} {qdir}.broken")


def test_a_server_whose_queue_had_an_io_error(_home: Path) -> None:
    status = config.Home(_home).status
    status.mkdir(parents=True)
    queue = {"pending": 0, "max_pending": 100_000, "io_error": "fdatasync failed: No space left on device"}
    (status / "server-1.json").write_bytes(orjson.dumps({"pid": os.getpid(), "queue": queue}))
    (status / "server-2.json").write_bytes(orjson.dumps({"pid": 2**22 + 1, "queue": queue}))  # gone
    f = only(_home, "queue")
    assert f"server PID {os.getpid()}" in f.detail and "No space left on device" in f.detail
    assert f.fix is not None and f.fix.endswith(f"kill {os.getpid()}")


def test_quarantine_not_empty(_home: Path) -> None:
    qfile = config.Home(_home).quarantine
    qfile.parent.mkdir(parents=True)
    qfile.write_bytes(orjson.dumps({"at": "x", "reason": "not JSON", "line": "{"}) + b"\n")
    f = only(_home, "queue")
    assert "1 lines in quarantine" in f.detail and "(last: not JSON)" in f.detail
    assert f.fix is not None and f.fix.startswith(f"tail {qfile}")


def test_warehouse_missing_corrupt_and_locked(_home: Path) -> None:
    _home.mkdir(mode=0o700)
    f = only(_home, "warehouse")
    assert "no DuckDB warehouse" in f.detail and f.fix == "activitybi init"
    wh = config.Home(_home).warehouse
    wh.write_bytes(b"garbage" * 1000)
    wh.chmod(0o600)
    f = only(_home, "warehouse")
    assert "does not open" in f.detail and f.fix is not None and f.fix.startswith(f"mv {wh} {wh}.broken")
    wh.unlink()
    _init(_home)
    holder = subprocess.Popen(  # a foreign writer holds the file: nothing can load
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print(1, flush=True); time.sleep(60)",
            str(wh),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline()
        f = only(_home, "warehouse")
        assert f"locked by PID {holder.pid}" in f.detail and f.fix == f"kill {holder.pid}"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_warehouse_held_by_a_live_owner_is_fine(_home: Path) -> None:
    _init(_home)
    owner = subprocess.Popen([EXE, "upload", "--follow", "--quiet"], env=server_env(_home))
    try:
        deadline = time.monotonic() + 30
        while not any("held by the owner" in f.detail for f in doctor.run(_home)):
            assert time.monotonic() < deadline, doctor.run(_home)
            time.sleep(0.2)
        assert not problems(_home, "warehouse")
    finally:
        owner.terminate()
        owner.wait(timeout=15)


def test_snowflake_chosen_without_its_settings(_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SNOWFLAKE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ACTIVITYBI_WAREHOUSE", "snowflake")
    f = only(_home, "warehouse")
    assert "SNOWFLAKE_ACCOUNT must be set" in f.detail and f.fix is not None and "SNOWFLAKE_" in f.fix


def test_redis_down(_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.mcp_clients import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}")
    f = only(_home, "redis")
    assert (
        "does not answer" in f.detail
        and f.fix is not None
        and f.fix.startswith('redis-cli -u "$REDIS_URL" ping')
    )


@pytest.mark.redis
def test_redis_up(_home: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> None:  # noqa: F811
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    assert [f.detail for f in doctor.run(_home) if f.check == "redis"] == ["REDIS_URL answers PING"]


def test_claude_desktop(_home: Path, tmp_path: Path) -> None:
    path = claude_desktop.default_config_path()
    path.parent.mkdir(parents=True)
    other = {"command": sys.executable, "args": ["-m", "some_server"]}
    path.write_text(json.dumps({"mcpServers": {"files": other}}))
    f = only(_home, "claude desktop")
    assert "has no activitybi server" in f.detail and f.fix == "activitybi install-claude"

    claude_desktop.install(path, "me@x.io")
    assert not problems(_home, "claude desktop")

    data = json.loads(path.read_text())
    data["mcpServers"]["activitybi"]["env"][config.HOME_ENV] = str(tmp_path / "elsewhere")
    path.write_text(json.dumps(data))
    f = only(_home, "claude desktop")
    assert (
        f"writes to {tmp_path / 'elsewhere'}, not {_home}" in f.detail
        and f.fix == "activitybi install-claude"
    )

    data["mcpServers"]["activitybi"]["command"] = str(tmp_path / "gone" / "activitybi")
    data["mcpServers"]["activitybi"]["env"][config.HOME_ENV] = str(_home)
    data["mcpServers"]["files"] = claude_desktop.wrapped_entry("files", other, "me@x.io")
    data["mcpServers"]["files"]["command"] = str(tmp_path / "gone" / "activitybi")
    path.write_text(json.dumps(data))
    found = problems(_home, "claude desktop")
    assert [f.fix for f in found] == ["activitybi install-claude", "activitybi install-claude --wrap"]
    assert "no longer exists" in found[0].detail and "files" in found[1].detail

    path.write_text("{not json")
    f = only(_home, "claude desktop")
    assert (
        "not valid JSON" in f.detail and f.fix is not None and f.fix.startswith("activitybi install-claude")
    )


def test_claude_code(_home: Path, tmp_path: Path) -> None:
    path = claude_code.settings_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"permissions": {}}))
    found = problems(_home, "claude code")
    assert [f.fix for f in found] == ["activitybi install-claude-code"] * 2
    assert "no activitybi hook for SessionStart" in found[0].detail
    assert "telemetry not sent" in found[1].detail

    claude_code.install(path)
    assert not problems(_home, "claude code")

    data = json.loads(path.read_text())
    del data["env"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    path.write_text(json.dumps(data))
    f = only(_home, "claude code")
    assert "telemetry not sent to activitybi (OTEL_EXPORTER_OTLP_ENDPOINT)" in f.detail

    claude_code.install(path)
    text = path.read_text().replace(
        json.dumps(os.path.abspath(sys.executable))[1:-1], str(tmp_path / "gone/python")
    )
    path.write_text(text)
    f = only(_home, "claude code")
    assert "interpreter no longer exists" in f.detail and f.fix == "activitybi install-claude-code"
