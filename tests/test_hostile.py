"""Issue 16: each attack of the adversarial review, replayed against a real server process
(two HTTP customers with real tokens where it applies), and what now holds."""

from __future__ import annotations

import os
import pwd
import random
import resource
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest

from activitybi.memory.context import trim
from activitybi.reporting.metrics import every
from tests.mcp_clients import EXE, HttpServer, free_port, http_session, server_env, text

TOKENS = {"tok-alice": "alice@a.io", "tok-bob": "bob@b.io"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _post_initialize(url: str, token: str) -> httpx2.Response:
    return httpx2.post(
        url, content=orjson.dumps(INIT), headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    )


# --- 1: one customer freezes the server for everyone ---------------------------------------


def _naive_trim(context: dict[str, Any], max_bytes: int) -> bytes:
    """The quadratic trim the review found (one serialisation per dropped item): the reference."""
    payload = orjson.dumps(context)
    if len(payload) <= max_bytes:
        return payload
    ctx = {**context, "truncated": True, "insights": list(context.get("insights", []))}
    activity = dict(ctx.get("activity") or {})
    ctx["activity"] = activity
    lists = [ctx["insights"], activity.setdefault("top_activities", []), activity.setdefault("tools", [])]
    prefs = dict(ctx.get("preferences") or {})
    ctx["preferences"] = prefs
    while len(payload := orjson.dumps(ctx)) > max_bytes:
        longest = max(lists, key=len)
        if longest:
            longest.pop()
        elif prefs:
            prefs.pop(next(reversed(prefs)))
        else:
            return orjson.dumps({"customer": ctx["customer"], "truncated": True})
    return payload


def test_trim_is_linear_and_drops_what_it_dropped_before() -> None:
    rng = random.Random(16)
    for _ in range(200):
        context = {
            "customer": "ana@x.io",
            "activity": {
                "top_activities": [{"a": "x" * rng.randrange(40)} for _ in range(rng.randrange(6))],
                "tools": [{"t": rng.randrange(10**6)} for _ in range(rng.randrange(4))],
            }
            if rng.random() < 0.8
            else None,
            "insights": [{"s": "y" * rng.randrange(60), "v": rng.random()} for _ in range(rng.randrange(12))],
            "preferences": {f"p{i}": "z" * rng.randrange(30) for i in range(rng.randrange(5))},
            "truncated": False,
        }
        limit = rng.randrange(20, 1200)
        assert trim(context, limit) == _naive_trim(context, limit)
    big = {
        "customer": "ana@x.io",
        "activity": None,
        "insights": [{"v": "x" * 100_000, "i": i} for i in range(600)],
        "preferences": {},
    }
    start = time.perf_counter()
    small = trim(big, 256)
    assert time.perf_counter() - start < 1.0 and len(small) <= 256  # was about 4 s at 400 items


def test_one_customer_cannot_freeze_the_others(_home: Path) -> None:
    server = HttpServer(_home, TOKENS, env={"ACTIVITYBI_INSIGHTS_PER_MINUTE": "100000"})
    try:

        async def run() -> None:
            async with http_session(server.url, "tok-alice") as a, http_session(server.url, "tok-bob") as b:
                huge = await a.call_tool(
                    "log_insight", {"subject": "s", "metric": "m", "value": "x" * 100_000}
                )
                assert huge.is_error and "over 4096 bytes" in text(huge)
                nested = await a.call_tool(
                    "log_insight", {"subject": "s", "metric": "m", "value": {"k": "x" * 5000}}
                )
                assert nested.is_error and "over 4096 bytes" in text(nested)
                for i in range(400):
                    res = await a.call_tool(
                        "log_insight", {"subject": "s", "metric": f"m{i}", "value": "v" * 4000}
                    )
                    assert not res.is_error, text(res)
                full = orjson.loads(text(await a.call_tool("get_context", {})))
                assert len(full["insights"]) == 200  # ACTIVITYBI_CONTEXT_MAX_INSIGHTS
                assert full["insights"][0]["metric"] == "m399"
                bob_waits: list[float] = []

                async def bob() -> None:
                    for _ in range(20):
                        t0 = time.perf_counter()
                        await b.call_tool("get_context", {})
                        bob_waits.append(time.perf_counter() - t0)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(bob)
                    for _ in range(5):
                        t0 = time.perf_counter()
                        small = text(await a.call_tool("get_context", {"max_bytes": 256}))
                        assert len(small) <= 256 and time.perf_counter() - t0 < 1.0
                assert max(bob_waits) < 1.0, bob_waits

        anyio.run(run)
    finally:
        server.stop()


def test_every_writing_tool_is_rate_limited(_home: Path) -> None:
    server = HttpServer(_home, TOKENS)
    try:

        async def run() -> None:
            async with http_session(server.url, "tok-alice") as a, http_session(server.url, "tok-bob") as b:
                for tool, args in (
                    ("log_insight", {"subject": "s", "metric": "m", "value": 1}),
                    ("render_card", {"ticket": "01M84TGYW3EJMVCCRGRQ60K43N"}),
                    ("no_such_tool", {}),
                ):
                    answers = [text(await a.call_tool(tool, args)) for _ in range(12)]
                    assert not any("rate limit" in t for t in answers[:10]), (tool, answers)
                    assert "rate limit" in answers[-1], (tool, answers)
                    other = text(await b.call_tool(tool, args))  # another customer's budget is whole
                    assert "rate limit" not in other

        anyio.run(run)
    finally:
        server.stop()


# --- 2: customer text on /metrics, which needed no token ------------------------------------


def test_metrics_need_the_operator_token_and_labels_are_bounded(_home: Path) -> None:
    server = HttpServer(_home, TOKENS, env={"ACTIVITYBI_OPERATOR_TOKEN": "op-secret"})
    metrics = server.url.removesuffix("/mcp") + "/metrics"
    try:

        async def run() -> None:
            async with http_session(server.url, "tok-alice") as a:
                for i in range(10):
                    res = await a.call_tool(f"tool_{i}_" + "x" * 200_000, {})
                    assert res.is_error

        anyio.run(run)
        assert httpx2.get(metrics).status_code == 401
        assert httpx2.get(metrics, headers={"Authorization": "Bearer tok-alice"}).status_code == 401
        got = httpx2.get(metrics, headers={"Authorization": "Bearer op-secret"})
        assert got.status_code == 200
        assert len(got.content) < 50_000 and "xxxx" not in got.text
        assert 'activitybi_tool_errors_total{tool="unknown"} 10.0' in got.text
    finally:
        server.stop()
    bare = HttpServer(_home, TOKENS)  # no operator token configured: no metrics at all
    try:
        assert httpx2.get(bare.url.removesuffix("/mcp") + "/metrics").status_code == 403
    finally:
        bare.stop()


# --- 5: one customer fills the shared session table ----------------------------------------


def test_sessions_are_capped_per_customer(_home: Path) -> None:
    server = HttpServer(
        _home,
        TOKENS,
        env={"ACTIVITYBI_SESSIONS_PER_CUSTOMER": "3", "ACTIVITYBI_INITIALIZE_PER_MINUTE": "6"},
    )
    try:
        opened = [_post_initialize(server.url, "tok-alice") for _ in range(3)]
        assert [r.status_code for r in opened] == [200, 200, 200]
        refused = _post_initialize(server.url, "tok-alice")
        assert refused.status_code == 429 and "session limit" in refused.text
        assert refused.headers["retry-after"]

        async def bob() -> None:
            async with http_session(server.url, "tok-bob") as b:
                assert len(text(await b.call_tool("log_event", {"activity": "opened_app"}))) == 26

        anyio.run(bob)
        sid = opened[0].headers["mcp-session-id"]
        ended = httpx2.delete(
            server.url, headers={**MCP_HEADERS, "Authorization": "Bearer tok-alice", "mcp-session-id": sid}
        )
        assert ended.status_code == 200
        assert _post_initialize(server.url, "tok-alice").status_code == 200  # a slot was freed
        statuses = [_post_initialize(server.url, "tok-alice") for _ in range(2)]
        assert "rate limit" in statuses[-1].text and statuses[-1].status_code == 429
    finally:
        server.stop()


# --- 6: world-readable files ----------------------------------------------------------------


def _modes(home: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(home.stat().st_mode)}
    for path in home.rglob("*"):
        out[str(path.relative_to(home))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def _card(url: str, token: str) -> dict[str, Any]:
    """Logs usage, waits for a ticket with rows, draws it; render_card's info."""

    async def run() -> dict[str, Any]:
        async with http_session(url, token) as s:
            for i in range(3):
                await s.call_tool(
                    "log_event", {"activity": "asked_question", "model": "m", "cost_usd": 0.1 * i}
                )
            await s.call_tool("log_insight", {"subject": "s", "metric": "m", "value": 1})
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                answer = orjson.loads(text(await s.call_tool("submit_query", {"template": "cost_by_model"})))
                while True:
                    status = orjson.loads(
                        text(await s.call_tool("get_query_result", {"ticket": answer["ticket"]}))
                    )
                    if status["status"] in ("succeeded", "failed"):
                        break
                    await anyio.sleep(0.1)
                if status.get("result", {}).get("rows"):
                    res = await s.call_tool("render_card", {"ticket": answer["ticket"]})
                    assert not res.is_error, text(res)
                    assert "file:" not in text(res)
                    return dict(orjson.loads(text(res)))
                await anyio.sleep(0.3)
            raise AssertionError("no ticket with rows")

    return anyio.run(run)


def test_render_card_gives_an_artifact_url_and_every_file_is_private(_home: Path) -> None:
    """Items 6 and 11: the server runs under umask 000, and still every file it and its
    owner write (segments, DuckDB, tickets, results, snapshots, status, cards) is 0600 in
    0700 directories; a card is an id and a URL that only its customer can read."""
    old = os.umask(0)
    try:
        server = HttpServer(_home, TOKENS)
    finally:
        os.umask(old)
    try:
        info = _card(server.url, "tok-alice")
        assert info["url"] == f"/artifacts/{info['artifact_id']}"
        base = server.url.removesuffix("/mcp")
        png = httpx2.get(base + info["url"], headers={"Authorization": "Bearer tok-alice"})
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert png.headers["content-type"] == "image/png"
        assert httpx2.get(base + info["url"], headers={"Authorization": "Bearer tok-bob"}).status_code == 404
        assert httpx2.get(base + info["url"]).status_code == 401
        deadline = time.monotonic() + 10
        while not list((_home / "status").glob("server-*.json")) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.stop()
    modes = _modes(_home)
    for name in ("queue", "warehouse.duckdb", "tickets", "memory", "status", "artifacts"):
        assert any(k == name or k.startswith(name + "/") for k in modes), (name, sorted(modes))
    wrong = {
        k: oct(m)
        for k, m in modes.items()
        if m != (0o700 if (_home / k).is_dir() and not (_home / k).is_symlink() else 0o600)
    }
    assert not wrong, wrong


@pytest.mark.needs_root
def test_another_user_cannot_read_a_segment() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    user = "activitybi-other"
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    parent = Path(tempfile.mkdtemp(prefix="abi-modes-"))
    parent.chmod(0o755)  # the home's parent is open to everyone: only the home's own modes protect it
    home = parent / "home"
    old = os.umask(0)
    try:
        server = HttpServer(home, TOKENS)
    finally:
        os.umask(old)
    try:

        async def run() -> None:
            async with http_session(server.url, "tok-alice") as a:
                await a.call_tool("log_event", {"activity": "shared_secret", "feature_json": {"pin": 1234}})

        anyio.run(run)
        # While the server runs, its segment is open: once it stops, the owner may have
        # loaded and removed the sealed segment.
        segments = [p for p in (home / "queue").iterdir() if p.suffix in (".ndjson", ".open")]
        assert segments
        as_other = subprocess.run(
            ["runuser", "-u", user, "--", "cat", str(segments[0])], capture_output=True, text=True
        )
        assert as_other.returncode != 0 and "Permission denied" in as_other.stderr
        assert b"1234" in segments[0].read_bytes()  # the owner reads it
    finally:
        server.stop()


# --- 7: deep nesting silenced the stdio server ---------------------------------------------


def test_deeply_nested_requests_are_all_answered_over_stdio(_home: Path) -> None:
    proc = subprocess.Popen(
        [EXE, "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=server_env(_home, ACTIVITYBI_CUSTOMER="ana@x.io"),
    )
    assert proc.stdin is not None and proc.stdout is not None
    answers: dict[Any, dict[str, Any]] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            message = orjson.loads(line)
            answers[message.get("id")] = message

    threading.Thread(target=read, daemon=True).start()

    def call(rid: int, arguments: bytes) -> bytes:
        head = (
            b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"log_event","arguments":' % rid
        )
        return head + arguments + b"}}\n"

    try:
        proc.stdin.write(orjson.dumps(INIT) + b"\n")
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        for rid, depth in ((2, 600), (3, 100_000)):
            deep = b'{"activity":"ran_query","feature_json":{"x":' + b"[" * depth + b"]" * depth + b"}}"
            proc.stdin.write(call(rid, deep))
        proc.stdin.write(call(4, b'{"activity":"ran_query"}'))
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while len(answers) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(answers) == {1, 2, 3, 4}, sorted(answers)
        for rid in (2, 3):
            result = answers[rid]["result"]
            assert result["isError"] and "nested deeper" in result["content"][0]["text"]
        assert not answers[4]["result"].get("isError")
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=15)


# --- 9: slow clients were never timed out ---------------------------------------------------


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (reading whatever it answers)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def test_slow_and_piled_up_connections_are_cut(_home: Path) -> None:
    server = HttpServer(
        _home,
        TOKENS,
        env={"ACTIVITYBI_HTTP_REQUEST_TIMEOUT": "1", "ACTIVITYBI_HTTP_CONNECTIONS_PER_CLIENT": "6"},
    )
    address = ("127.0.0.1", server.port)
    try:
        half = socket.create_connection(address)
        half.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tok-alice\r\n")
        silent = socket.create_connection(address)
        trickle = socket.create_connection(address)
        trickle.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        assert _closed_within(half, 4) and _closed_within(silent, 1) and _closed_within(trickle, 1)
        piled = [socket.create_connection(address) for _ in range(6)]
        extra = socket.create_connection(address)
        assert _closed_within(extra, 0.5)  # the 7th from one address: closed at once
        for s in (half, silent, trickle, extra, *piled):
            s.close()
        time.sleep(0.2)

        async def alice() -> None:
            async with http_session(server.url, "tok-alice") as a:
                assert len(text(await a.call_tool("log_event", {"activity": "opened_app"}))) == 26

        anyio.run(alice)
    finally:
        server.stop()


def test_the_status_writer_survives_descriptor_exhaustion(_home: Path, tmp_path: Path) -> None:
    """300 idle sockets against a 128-descriptor server: the status writer meets EMFILE,
    logs it, and writes again once the idle connections are cut."""
    port = free_port()
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps(TOKENS))
    errors = (tmp_path / "stderr").open("w+b")
    proc = subprocess.Popen(
        [EXE, "serve", "--http", "--port", str(port), "--tokens", str(tokens)],
        env=server_env(
            _home, ACTIVITYBI_HTTP_REQUEST_TIMEOUT="3", ACTIVITYBI_HTTP_CONNECTIONS_PER_CLIENT="1000"
        ),
        stderr=errors,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)),
    )
    sockets: list[socket.socket] = []
    try:
        status = _home / "status" / f"server-{proc.pid}.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        for _ in range(300):
            sockets.append(socket.create_connection(("127.0.0.1", port)))
        deadline = time.monotonic() + 15
        while b"write_server_status failed" not in errors.read() and time.monotonic() < deadline:
            errors.seek(0)
            time.sleep(0.2)
        errors.seek(0)
        assert b"write_server_status failed" in errors.read()  # it met EMFILE
        for s in sockets:
            s.close()
        time.sleep(8)  # the server cuts what is left of them (3 s) and accepts again
        before = orjson.loads(status.read_bytes())["updated_at"]
        time.sleep(3)
        assert orjson.loads(status.read_bytes())["updated_at"] > before  # still writing

        async def alice() -> None:
            async with http_session(f"http://127.0.0.1:{port}/mcp", "tok-alice") as a:
                assert len(text(await a.call_tool("log_event", {"activity": "opened_app"}))) == 26

        anyio.run(alice)
    finally:
        for s in sockets:
            s.close()
        proc.terminate()
        proc.wait(timeout=15)


def test_background_threads_survive_errors() -> None:
    calls: list[float] = []

    def write_status() -> None:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise OSError(24, "Too many open files")

    stop = threading.Event()
    thread = every(0.05, write_status, stop)
    deadline = time.monotonic() + 5
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(2)
    assert len(calls) >= 4  # EMFILE twice, and the writer went on


# --- 10 and 12: lax types, unrefunded tokens, hand-made telemetry ---------------------------


def test_strict_types_refunds_and_reserved_activities(_home: Path) -> None:
    server = HttpServer(_home, TOKENS, env={"ACTIVITYBI_EVENTS_PER_SECOND": "1"})  # bursts of 10
    try:

        async def run() -> None:
            async with http_session(server.url, "tok-alice") as a:
                lax = await a.call_tool("log_event", {"activity": "ran_query", "input_tokens": "12"})
                assert lax.is_error and "input_tokens" in text(lax) and "valid integer" in text(lax)
                lax = await a.call_tool("get_context", {"max_bytes": "300"})
                assert lax.is_error and "max_bytes" in text(lax)
                lax = await a.call_tool(
                    "log_events", {"events": [{"activity": "ran_query", "cost_usd": "1"}]}
                )
                assert lax.is_error and "cost_usd" in text(lax)
                for reserved in ("called_tool", "learned_insight"):
                    res = await a.call_tool("log_event", {"activity": reserved})
                    assert res.is_error and "reserved" in text(res)
                    res = await a.call_tool("log_events", {"events": [{"activity": reserved}]})
                    assert res.is_error and "reserved" in text(res)
                batch = [{"activity": "ran_query"} for _ in range(9)]
                too_big = {"activity": "ran_query", "feature_json": {"p": "x" * (1 << 20)}}
                refused = await a.call_tool("log_events", {"events": [*batch, too_big]})
                assert refused.is_error and "rate limit" not in text(refused)
                accepted = await a.call_tool("log_events", {"events": [*batch, {"activity": "ran_query"}]})
                assert not accepted.is_error, text(accepted)  # the refused batch's 10 tokens came back
                assert len(orjson.loads(text(accepted))) == 10

        anyio.run(run)
    finally:
        server.stop()
    from tests.test_server import all_events

    events = all_events(_home)
    assert not [e for e in events if e["activity"] == "learned_insight"]
    assert all("tool" in e["feature_json"] for e in events if e["activity"] == "called_tool")
    assert sum(e["activity"] == "ran_query" for e in events) == 10
