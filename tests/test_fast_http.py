"""The fast HTTP front (activitybi.serve.fast_http) against the SDK's own transport.

Each server here is a real uvicorn process serving `server.http_app(...)`: either the
SDK's app alone ("sdk") or the same app behind `FastFront` ("fast"). The SDK's own clients
(ClientSession with the initialize handshake, stateful and stateless, and `mcp.Client` in
its default 2026-07-28 mode) drive the fast one; raw HTTP compares the two answer for
answer, byte for byte where the answer is deterministic.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from pydantic_core import to_json

from tests.mcp_clients import free_port, http_session, text
from tests.test_server import BAD_ARGUMENTS, all_events

SERVE = r"""
import sys
from pathlib import Path

import orjson
import uvicorn

from activitybi.serve import app as server
from activitybi.serve import fast_http, runtime

port, token_file, mode, stateless = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
idle = float(sys.argv[5]) if len(sys.argv) > 5 else None
rt = runtime.Runtime.open(customer=None, source="http")
tokens = server.load_tokens(token_file)
if idle is None:
    built = []
    original = server.build

    def capture(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    server.build = capture
    app = server.http_app(rt, tokens, stateless=stateless).app  # inside the SessionGuard
    server.build = original
    if isinstance(app, fast_http.FastFront):
        front, sdk = app, app.sdk_app
    else:
        sdk, front = app, fast_http.FastFront(app, built[-1], rt, tokens)
else:  # the same server with a short session idle timeout
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings

    class Verifier:
        async def verify_token(self, token):
            c = tokens.get(token)
            return None if c is None else AccessToken(token=token, client_id=c, scopes=[], subject=c)

    mcp = server.build(rt, token_verifier=Verifier(),
                       auth=AuthSettings(issuer_url="https://auth.invalid", resource_server_url=None))
    sdk = mcp.streamable_http_app(stateless_http=stateless, json_response=True, session_idle_timeout=idle)
    front = fast_http.FastFront(sdk, mcp, rt, tokens)
inner = front if mode == "fast" else sdk


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/_front":
        body = orjson.dumps({"fast": front.fast_calls, "delegated": front.delegated,
                             "disabled": front.disabled})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await inner(scope, receive, send)


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""

TOKENS = {"tok-a": "alice@a.io", "tok-b": "bob@b.io"}
VERSIONS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]


class Served:
    def __init__(
        self,
        home: Path,
        mode: str,
        *,
        stateless: bool = False,
        idle: float | None = None,
        tokens: dict[str, str] = TOKENS,
    ) -> None:
        self.home, self.mode, self.port = home, mode, free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        home.mkdir(parents=True, exist_ok=True)
        token_file = home.parent / f"tokens-{self.port}.json"
        token_file.write_bytes(orjson.dumps(tokens))
        args = [sys.executable, "-c", SERVE, str(self.port), str(token_file), mode, "1" if stateless else "0"]
        if idle is not None:
            args.append(str(idle))
        self.proc = subprocess.Popen(
            args, stderr=subprocess.PIPE, env={**os.environ, "ACTIVITYBI_HOME": str(home)}
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx2.get(f"http://127.0.0.1:{self.port}/_front", timeout=1)
                break
            except httpx2.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else "died"
                    raise RuntimeError(err) from None
                time.sleep(0.1)

    def counters(self) -> dict[str, Any]:
        return orjson.loads(httpx2.get(f"http://127.0.0.1:{self.port}/_front").content)  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    """The SDK's app alone and behind the front, each on a home of its own."""
    sdk, fast = Served(tmp_path / "sdk", "sdk"), Served(tmp_path / "fast", "fast")
    try:
        yield sdk, fast
    finally:
        sdk.stop()
        fast.stop()


class Raw:
    """Plain JSON-RPC over HTTP: every byte of every answer is visible."""

    def __init__(self, url: str, token: str | None = "tok-a", version: str = "2025-11-25") -> None:
        self.url, self.version = url, version
        self.headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.http = httpx2.Client(timeout=30)
        self.session: str | None = None

    def post(
        self, payload: Any, *, headers: dict[str, str] | None = None, content: bytes | None = None
    ) -> httpx2.Response:
        h = dict(self.headers)
        if self.session:
            h["mcp-session-id"] = self.session
            h["mcp-protocol-version"] = self.version
        h.update(headers or {})
        h = {k: v for k, v in h.items() if v is not None}
        return self.http.post(
            self.url, content=content if content is not None else to_json(payload), headers=h
        )

    def initialize(self) -> Raw:
        r = self.post(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": self.version,
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            }
        )
        assert r.status_code == 200, r.text
        self.session = r.headers.get("mcp-session-id")
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        return self

    def call(self, name: str, arguments: Any = None, rid: Any = 1, **extra: Any) -> httpx2.Response:
        params: dict[str, Any] = {"name": name}
        if arguments is not None:
            params["arguments"] = arguments
        return self.post({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params, **extra})


def answer(r: httpx2.Response) -> tuple[int, str | None, bool, bytes]:
    """What a client sees: status, content type, whether a session id came back, body
    (with fresh ids and timestamps masked, every other byte as sent)."""
    return r.status_code, r.headers.get("content-type"), "mcp-session-id" in r.headers, masked(r.content)


MASKS = [
    (re.compile(rb"[0-9A-HJKMNP-TV-Z]{26}"), b"<ULID>"),
    (re.compile(rb"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}"), b"<UUID>"),
    (re.compile(rb"\d{4}-\d\d-\d\d[T ][\d:.]+Z?"), b"<TS>"),
]


def masked(body: bytes) -> bytes:
    for pattern, repl in MASKS:
        body = pattern.sub(repl, body)
    return body


# --- the SDK's own clients against the front ---------------------------------------------

TOOL_CALLS: list[tuple[str, dict[str, Any]]] = [
    (
        "log_event",
        {
            "activity": "asked_question",
            "feature_json": {"q": 'why ∑ "quoted"\n'},
            "model": "claude-x",
            "input_tokens": 812,
            "output_tokens": 96,
            "cost_usd": 0.0123,
        },
    ),
    ("log_event", {"activity": "asked_question", "activity_id": "retry-1"}),
    ("log_insight", {"subject": "repo", "metric": "test_minutes", "value": 4}),
    ("log_insight", {"subject": "preferences", "metric": "tone", "value": "terse"}),
    ("get_context", {}),
    ("get_context", {"max_bytes": 256}),
    ("list_query_templates", {}),
]


async def every_tool(session: Any) -> None:
    tools = {t.name for t in (await session.list_tools()).tools}
    assert {
        "log_event",
        "log_insight",
        "get_context",
        "submit_query",
        "get_query_result",
        "cancel_query",
        "list_query_templates",
    } <= tools
    for name, args in TOOL_CALLS:
        res = await session.call_tool(name, args)
        assert not res.is_error, (name, text(res))
    ctx = orjson.loads(text(await session.call_tool("get_context", {})))
    assert ctx["customer"] == "alice@a.io" and ctx["preferences"] == {"tone": "terse"}
    ticket = orjson.loads(text(await session.call_tool("submit_query", {"template": "activity_counts"})))
    assert ticket["status"] == "queued", ticket
    status = orjson.loads(text(await session.call_tool("get_query_result", {"ticket": ticket["ticket"]})))
    assert status["ticket_id"] == ticket["ticket"]
    cancel = orjson.loads(text(await session.call_tool("cancel_query", {"ticket": ticket["ticket"]})))
    assert cancel["ticket"] == ticket["ticket"]
    res = await session.call_tool("log_event", {"activity": "Bad Name"})
    assert res.is_error and "pattern" in text(res)
    resource = await session.read_resource("context://me")
    assert orjson.loads(resource.contents[0].text)["customer"] == "alice@a.io"


@pytest.mark.parametrize("stateless", [False, True], ids=["stateful", "stateless"])
def test_sdk_client_uses_every_tool_through_the_front(tmp_path: Path, stateless: bool) -> None:
    server = Served(tmp_path / "home", "fast", stateless=stateless)
    try:
        assert server.counters()["disabled"] is None

        async def run() -> None:
            async with http_session(server.url, "tok-a") as s:
                await every_tool(s)

        anyio.run(run)
        counters = server.counters()
    finally:
        server.stop()
    calls = len(TOOL_CALLS) + 5  # every tools/call above went the fast way
    assert counters["fast"] == calls, counters
    events = all_events(tmp_path / "home")
    logged = [e for e in events if e["activity"] == "called_tool"]
    assert len(logged) == calls
    assert {e["feature_json"]["tool"] for e in logged} >= {n for n, _ in TOOL_CALLS}
    assert all(e["customer"] == "alice@a.io" for e in events)
    bad = [e["feature_json"] for e in logged if e["feature_json"]["outcome"] == "error"]
    assert len(bad) == 1 and "pattern" in bad[0]["error"] and bad[0]["tool"] == "log_event"
    assert {"asked_question", "learned_insight", "called_tool"} <= {e["activity"] for e in events}


def test_sdk_client_in_2026_mode_works(tmp_path: Path) -> None:
    """`mcp.Client(url)` speaks 2026-07-28 (no session): the SDK answers it, through the front."""
    from mcp import Client

    server = Served(tmp_path / "home", "fast")
    try:

        async def run() -> None:
            async with httpx2.AsyncClient(
                headers={"Authorization": "Bearer tok-a"}, timeout=httpx2.Timeout(30, read=60)
            ) as http:
                from mcp.client.streamable_http import streamable_http_client

                async with Client(streamable_http_client(server.url, http_client=http)) as client:
                    assert client.protocol_version == "2026-07-28"
                    aid = text(await client.call_tool("log_event", {"activity": "opened_app"}))
                    assert len(aid) == 26
                    ctx = orjson.loads(text(await client.call_tool("get_context", {})))
                    assert ctx["customer"] == "alice@a.io"
                    res = await client.call_tool("log_event", {"activity": "x"})
                    assert res.is_error

        anyio.run(run)
    finally:
        server.stop()
    logged = [e for e in all_events(tmp_path / "home") if e["activity"] == "called_tool"]
    assert [e["feature_json"]["tool"] for e in logged] == ["log_event", "get_context", "log_event"]


# --- the same answers as the SDK ---------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_answers_are_the_sdks_byte_for_byte(servers: tuple[Served, Served], version: str) -> None:
    sdk, fast = servers
    a, b = Raw(sdk.url, version=version).initialize(), Raw(fast.url, version=version).initialize()
    calls: list[tuple[str, Any, Any]] = [
        ("log_event", {"activity": "asked_question", "activity_id": "retry-1"}, 1),
        ("log_event", {"activity": "asked_question", "activity_id": "retry-1"}, "str-id"),
        ("log_event", {"activity": "asked_question", "activity_id": "ünïcode"}, 2**70),
        ("log_event", {"activity": "asked_question", "feature_json": {"t": "ü\u0000\u2028"}}, -3),
        ("log_event", {"activity": "asked_question", "activity_id": "x", "revenue_impact": 1e300}, 0),
        ("list_query_templates", {}, 4),
        ("list_query_templates", None, 5),
        ("get_context", {"max_bytes": 300}, 6),
        ("log_insight", {"subject": "s", "metric": "m", "value": "x" * 5000}, 7),
        ("cancel_query", {"ticket": "nope"}, 8),
        ("get_query_result", {"ticket": "ü" * 10}, 9),
        ("submit_query", {"template": "no_such_template"}, 10),
        *[(tool, args, 100 + i) for i, (tool, args, _) in enumerate(BAD_ARGUMENTS)],
    ]
    for tool, args, rid in calls:
        ra, rb = a.call(tool, args, rid), b.call(tool, args, rid)
        assert answer(ra) == answer(rb), (tool, args, ra.content, rb.content)
    for tool, args in TOOL_CALLS:
        ra, rb = a.call(tool, args, "x"), b.call(tool, args, "x")
        assert ra.status_code == rb.status_code == 200
        assert answer(ra) == answer(rb), (tool, ra.content, rb.content)
    ra = a.call("log_event", {"activity": "a_b", "activity_id": "same"}, 9)
    assert ra.content == b.call("log_event", {"activity": "a_b", "activity_id": "same"}, 9).content
    assert fast.counters()["fast"] == len(calls) - 1 + len(TOOL_CALLS) + 1  # the unknown tool: the SDK


def test_stateless_answers_are_the_sdks(tmp_path: Path) -> None:
    sdk = Served(tmp_path / "sdk", "sdk", stateless=True)
    fast = Served(tmp_path / "fast", "fast", stateless=True)
    try:
        for version in [None, *VERSIONS]:
            headers = {"mcp-protocol-version": version}
            a, b = Raw(sdk.url), Raw(fast.url)
            for tool, args, _ in [*BAD_ARGUMENTS, ("log_event", {"activity": "a_b", "activity_id": "i"}, "")]:
                ra = a.post(
                    {
                        "jsonrpc": "2.0",
                        "id": 7,
                        "method": "tools/call",
                        "params": {"name": tool, "arguments": args},
                    },
                    headers=headers,
                )
                rb = b.post(
                    {
                        "jsonrpc": "2.0",
                        "id": 7,
                        "method": "tools/call",
                        "params": {"name": tool, "arguments": args},
                    },
                    headers=headers,
                )
                assert answer(ra) == answer(rb), (version, tool, ra.content, rb.content)
        assert fast.counters()["fast"] == 5 * (len(BAD_ARGUMENTS) - 1 + 1)
    finally:
        sdk.stop()
        fast.stop()


def test_bad_arguments_give_the_sdks_error_text(servers: tuple[Served, Served]) -> None:
    sdk, fast = servers

    async def errors(url: str) -> list[str]:
        async with http_session(url, "tok-a") as s:
            out = []
            for tool, args, needle in BAD_ARGUMENTS:
                res = await s.call_tool(tool, args)
                assert res.is_error and needle in text(res), (tool, args, text(res))
                out.append(text(res))
            return out

    assert anyio.run(errors, fast.url) == anyio.run(errors, sdk.url)
    for home in (sdk.home, fast.home):  # nothing but the calls themselves was written
        assert {e["activity"] for e in all_events(home)} == {"called_tool"}
    logged = {
        s.mode: sorted(
            orjson.dumps(e["feature_json"], option=orjson.OPT_SORT_KEYS) for e in all_events(s.home)
        )
        for s in (sdk, fast)
    }
    # each server's home has its own redaction key, so a redacted e-mail hashes differently
    strip = re.compile(rb'"latency_ms":[0-9.e-]+|hmac:[0-9a-f]+')
    assert [strip.sub(b"", x) for x in logged["fast"]] == [strip.sub(b"", x) for x in logged["sdk"]]


# --- refusals: the SDK's status, headers and body ----------------------------------------


def test_refusals_match_the_sdk(servers: tuple[Served, Served]) -> None:
    sdk, fast = servers
    a, b = Raw(sdk.url).initialize(), Raw(fast.url).initialize()
    a_other, b_other = Raw(sdk.url, "tok-b").initialize(), Raw(fast.url, "tok-b").initialize()
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_context"}}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("unknown token", {"headers": {"Authorization": "Bearer nope"}}),
        ("no token", {"headers": {"Authorization": None}}),
        ("not bearer", {"headers": {"Authorization": "Basic dG9rLWE="}}),
        ("unknown session", {"headers": {"mcp-session-id": "0" * 32}}),
        ("no session", {"headers": {"mcp-session-id": None}}),
        ("bad host", {"headers": {"Host": "evil.example:80"}}),
        ("bad origin", {"headers": {"Origin": "http://evil.example"}}),
        ("no json accept", {"headers": {"Accept": "text/event-stream"}}),
        ("form body", {"headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
        ("json-ish type", {"headers": {"Content-Type": "application/jsonx"}}),
        ("modern version", {"headers": {"mcp-protocol-version": "2026-07-28"}}),
        ("unknown version", {"headers": {"mcp-protocol-version": "1999-01-01"}}),
        ("not json", {"content": b"{nope"}),
        ("a batch", {"content": orjson.dumps([call, call])}),
        ("id null", {"content": orjson.dumps({**call, "id": None})}),
        ("id float", {"content": orjson.dumps({**call, "id": 1.5})}),
        ("no jsonrpc", {"content": orjson.dumps({k: v for k, v in call.items() if k != "jsonrpc"})}),
        (
            "arguments a list",
            {"content": orjson.dumps({**call, "params": {"name": "get_context", "arguments": [1]}})},
        ),
        ("name a number", {"content": orjson.dumps({**call, "params": {"name": 3}})}),
        ("extra member", {"content": orjson.dumps({**call, "extra": 1})}),
        (
            "too big",
            {
                "content": orjson.dumps(
                    {
                        **call,
                        "params": {
                            "name": "log_event",
                            "arguments": {"activity": "a_b", "feature_json": {"x": "y" * (5 << 20)}},
                        },
                    }
                )
            },
        ),
    ]
    for label, kw in cases:
        ra, rb = a.post(call, **kw), b.post(call, **kw)
        assert answer(ra) == answer(rb), (label, ra.status_code, ra.content, rb.status_code, rb.content)
        assert ra.headers.get("www-authenticate") == rb.headers.get("www-authenticate"), label
    assert answer(a.post(call, headers={"Authorization": "Bearer nope"}))[0] == 401
    # a session belongs to the token that opened it
    ra = a.post(call, headers={"mcp-session-id": a_other.session})
    rb = b.post(call, headers={"mcp-session-id": b_other.session})
    assert answer(ra) == answer(rb) and ra.status_code == 404
    # a deleted session is gone for both
    for raw in (a, b):
        assert (
            raw.http.delete(
                raw.url,
                headers={**raw.headers, "mcp-session-id": raw.session, "mcp-protocol-version": raw.version},
            ).status_code
            == 200
        )
    ra, rb = a.post(call), b.post(call)
    assert answer(ra) == answer(rb) and ra.status_code == 404
    assert fast.counters()["fast"] == 0


def test_idle_session_expires_as_with_the_sdk(tmp_path: Path) -> None:
    """Fast calls hold the session open like the SDK's; idle, it expires (404)."""
    server = Served(tmp_path / "home", "fast", idle=1.5)
    try:
        raw = Raw(server.url).initialize()
        for _ in range(12):  # 3.6 s of calls, longer than the idle timeout
            assert raw.call("list_query_templates", {}).status_code == 200
            time.sleep(0.3)
        time.sleep(2.5)
        r = raw.call("list_query_templates", {})
        assert r.status_code == 404 and b"Session not found" in r.content
        assert server.counters()["fast"] == 12
    finally:
        server.stop()


def test_encoder_is_the_sdks() -> None:
    """The front writes with pydantic_core.to_json what the SDK writes with JSONRPCResponse."""
    import pydantic_core
    from mcp_types import JSONRPCResponse

    values: list[Any] = [
        "",
        "ü ∑ 𝄞",
        '\u0000\u001f\u007f\u2028\\"/',
        0.1,
        1e300,
        -0.0,
        2**63,
        -(2**70),
        [1, {"a": None}],
        {"nested": {"x": [True, False]}},
    ]
    for rid in (1, "a", 2**70, -1):
        for v in values:
            result = {"content": [{"text": str(v), "type": "text"}], "isError": False, "v": v}
            sdk = JSONRPCResponse(jsonrpc="2.0", id=rid, result=result).model_dump_json(
                by_alias=True, exclude_unset=True
            )
            assert pydantic_core.to_json({"jsonrpc": "2.0", "id": rid, "result": result}) == sdk.encode()
