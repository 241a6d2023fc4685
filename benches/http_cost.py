"""Server CPU per MCP tools/call over streamable HTTP, three servers in one run.

1. stock: the mcp SDK's own streamable-HTTP app with one do-nothing tool
   (benches/stock_http_server.py), bearer auth, json_response=True;
2. sdk:   our server (`server.http_app`) answered by the SDK's transport alone;
3. fast:  our server behind `activitybi.serve.fast_http.FastFront`.

Each server runs in a process of its own under uvicorn. The same lean driver (raw HTTP/1.1
over asyncio, keep-alive, one connection per MCP session: `initialize`,
`notifications/initialized`, then `tools/call` with the session id) makes the calls with a
few sessions in a closed loop. The server's CPU is utime+stime from /proc/<pid>/stat (all
its threads) before and after the measured calls, divided by their number; the driver's
own CPU per call is printed too. Rounds alternate the servers and the median is kept, so
that other load on the machine falls on all three alike.

Run: python benches/http_cost.py [--calls 4000] [--rounds 3] [--stateless]
        [--tool log_event] [--http auto|h11|httptools] [--loop auto|asyncio|uvloop]
`serve` is the server side (as `activitybi serve --http`, optionally behind the front):
     python benches/http_cost.py serve --front fast|sdk --port P --tokens FILE [--stateless] [--owner]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROTOCOL = "2025-11-25"
MODERN = "2026-07-28"


# --- measuring ---------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


# --- the lean driver ----------------------------------------------------------------------


class HttpError(Exception):
    pass


class ConnectionClosed(HttpError):
    """The server closed the keep-alive connection before answering anything (uvicorn closes
    one idle for 5 s): the request never reached it, and is sent again on a new one."""


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request, then its whole response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            error = ConnectionClosed if not self.buf else HttpError
            self.waiter.set_exception(error(f"connection lost: {exc}"))
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        start = end + 4
        if "content-length" in headers:
            stop = start + int(headers["content-length"])
            if len(self.buf) < stop:
                return
            body = bytes(self.buf[start:stop])
        elif headers.get("transfer-encoding") == "chunked":
            body, stop = b"", start
            while True:
                eol = self.buf.find(b"\r\n", stop)
                if eol < 0:
                    return
                size = int(self.buf[stop:eol].split(b";")[0], 16)
                if len(self.buf) < eol + 2 + size + 2:
                    return
                body += self.buf[eol + 2 : eol + 2 + size]
                stop = eol + 2 + size + 2
                if size == 0:
                    break
        else:
            body, stop = b"", start
        del self.buf[:stop]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((int(head[0].split(" ", 2)[1]), headers, body))

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.transport is None:
            raise ConnectionClosed("not connected")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


class LeanSession:
    """An MCP client session over streamable HTTP with nothing but the wire format:
    `initialize` and `notifications/initialized` (unless stateless), then JSON-RPC
    requests carrying the session id and protocol version headers."""

    def __init__(
        self, port: int, token: str, *, stateless: bool = False, path: str = "/mcp", protocol: str = PROTOCOL
    ) -> None:
        self.port, self.token, self.stateless, self.path = port, token, stateless, path
        self.protocol = protocol
        self.modern = protocol >= MODERN  # no handshake, no session: an envelope in each request
        self.session_id: str | None = None
        self.ids = itertools.count(1)
        self.conn: _Conn | None = None
        self.connects = 0

    def _raw(self, payload: dict[str, Any], with_session: bool = True) -> bytes:
        extra = []
        if self.modern:  # as mcp.Client sends it in its default (2026-07-28) mode
            params = payload.setdefault("params", {})
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": self.protocol,
                "io.modelcontextprotocol/clientInfo": {"name": "lean-driver", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {},
            }
            extra.append(f"mcp-method: {payload['method']}")
            if "name" in params:
                extra.append(f"mcp-name: {params['name']}")
        body = orjson.dumps(payload)
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            f"Authorization: Bearer {self.token}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
            f"Content-Length: {len(body)}",
            *extra,
        ]
        if with_session:
            head.append(f"mcp-protocol-version: {self.protocol}")
            if self.session_id:
                head.append(f"mcp-session-id: {self.session_id}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.conn = await loop.create_connection(_Conn, "127.0.0.1", self.port)
        self.connects += 1

    async def send(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request on the keep-alive connection, on a new one when the server closed it
        (the MCP session lives on: its id is in the request)."""
        if self.conn is None or self.conn.transport is None:
            await self.connect()
        assert self.conn is not None
        try:
            return await self.conn.request(raw)
        except ConnectionClosed:
            await self.connect()
            return await self.conn.request(raw)

    async def open(self) -> LeanSession:
        await self.connect()
        if self.stateless or self.modern:
            return self
        assert self.conn is not None
        status, headers, body = await self.send(
            self._raw(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": PROTOCOL,
                        "capabilities": {},
                        "clientInfo": {"name": "lean-driver", "version": "1"},
                    },
                },
                with_session=False,
            )
        )
        if status != 200:
            raise HttpError(f"initialize: HTTP {status} {body[:200]!r}")
        self.session_id = headers.get("mcp-session-id")
        status, _, body = await self.send(
            self._raw({"jsonrpc": "2.0", "method": "notifications/initialized"})
        )
        if status != 202:
            raise HttpError(f"notifications/initialized: HTTP {status} {body[:200]!r}")
        return self

    async def rpc(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.conn is not None
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self.ids), "method": method}
        if params is not None:
            msg["params"] = params
        status, headers, body = await self.send(self._raw(msg))
        if status != 200:
            raise HttpError(f"{method}: HTTP {status} {body[:200]!r}")
        if headers.get("content-type", "").startswith("text/event-stream"):
            return sse_reply(body)
        return orjson.loads(body)  # type: ignore[no-any-return]

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        reply = await self.rpc("tools/call", {"name": tool, "arguments": arguments})
        if "result" not in reply:
            raise HttpError(f"{tool}: {reply}")
        return reply["result"]  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()


def sse_reply(body: bytes) -> dict[str, Any]:
    """The JSON-RPC response in an SSE answer (the SDK's default, json_response=False)."""
    for line in body.split(b"\n"):
        if line.startswith(b"data: ") and len(line) > 7:
            msg = orjson.loads(line[6:])
            if "id" in msg and ("result" in msg or "error" in msg):
                return msg  # type: ignore[no-any-return]
    raise HttpError(f"no response in the SSE answer {body[:200]!r}")


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --- the servers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(proc: subprocess.Popen[bytes], port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}") from None
            time.sleep(0.05)
    raise RuntimeError("server did not start")


class Server:
    """A server process: `stock`/`stock-sse` (the SDK alone), `sdk` or `fast` (ours), or
    `cli` (`activitybi serve --http` as installed)."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        tokens: dict[str, str],
        *,
        stateless: bool,
        http: str,
        loop: str,
        owner: bool = False,
        env: dict[str, str] | None = None,
        nice: int = 0,
        rt: bool = False,
    ) -> None:
        self.kind, self.port = kind, free_port()
        self.home = workdir / f"home-{kind}-{self.port}"
        self.home.mkdir(parents=True)
        token_file = workdir / f"tokens-{self.port}.json"
        token_file.write_bytes(orjson.dumps(tokens))
        if kind.startswith("stock"):
            (token,) = tokens
            cmd = [
                sys.executable,
                str(HERE / "stock_http_server.py"),
                "--port",
                str(self.port),
                "--auth",
                token,
            ] + (["--sse"] if kind == "stock-sse" else [])
        elif kind == "cli":  # `activitybi serve --http` itself (owner included), as installed
            cmd = [
                shutil.which("activitybi") or "activitybi",
                "serve",
                "--http",
                "--port",
                str(self.port),
                "--tokens",
                str(token_file),
            ]
        else:
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "serve",
                "--front",
                kind,
                "--port",
                str(self.port),
                "--tokens",
                str(token_file),
            ]
            if owner:
                cmd.append("--owner")
            if os.environ.get("HTTP_BENCH_DIAG"):
                cmd.append("--diag")
        if kind != "cli":
            cmd += ["--http", http, "--loop", loop]
        cmd += ["--stateless"] if stateless else []
        if nice:
            cmd = ["nice", "-n", str(nice), *cmd]
        if rt:  # SCHED_FIFO; what it starts (the warehouse owner) is a normal process again
            cmd = ["chrt", "--fifo", "--reset-on-fork", "10", *cmd]
        full_env = {**os.environ, "ACTIVITYBI_HOME": str(self.home), **(env or {})}
        self.log = open(workdir / f"server-{kind}-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=full_env, stderr=self.log, stdout=self.log)
        wait_port(self.proc, self.port)

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def rss_mb(self) -> float:
        return proc_rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def import_fast_http() -> Any:
    """activitybi.serve.fast_http as installed, else from this checkout (while an install of the
    package without it is in the way)."""
    try:
        from activitybi.serve import fast_http
    except ImportError:
        import importlib.util

        path = HERE.parent / "python" / "activitybi" / "fast_http.py"
        spec = importlib.util.spec_from_file_location("activitybi.serve.fast_http", path)
        assert spec is not None and spec.loader is not None
        fast_http = importlib.util.module_from_spec(spec)
        sys.modules["activitybi.serve.fast_http"] = fast_http
        spec.loader.exec_module(fast_http)
    return fast_http


def build_app(rt: Any, tokens: dict[str, str], *, stateless: bool, front: bool) -> Any:
    """`server.http_app(...)`, with the fast front (`front`) or the SDK's app alone,
    whichever of the two `http_app` returns by itself; inside its SessionGuard, if any."""
    from activitybi.serve import app as server

    fast_http = import_fast_http()
    built: list[Any] = []
    original = server.build

    def capture(*args: Any, **kwargs: Any) -> Any:
        built.append(original(*args, **kwargs))
        return built[-1]

    server.build = capture  # type: ignore[assignment]
    try:
        app = server.http_app(rt, tokens, stateless=stateless)
    finally:
        server.build = original  # type: ignore[assignment]
    # http_app may wrap its app in the SessionGuard (the per-customer session cap): keep the
    # guard, as `serve --http` has it, and choose the front inside it.
    guard = None
    wrapped = getattr(app, "app", None)
    if not isinstance(app, fast_http.FastFront) and isinstance(wrapped, fast_http.FastFront):
        guard, app = app, wrapped
    if isinstance(app, fast_http.FastFront):
        inner = app if front else app.sdk_app
    elif guard is None and getattr(app, "app", None) is not None and hasattr(app, "manager"):
        guard, inner = app, (fast_http.FastFront(app.app, built[-1], rt, tokens) if front else app.app)
    else:
        inner = fast_http.FastFront(app, built[-1], rt, tokens) if front else app
    if guard is not None:
        guard.app = inner
        return guard
    return inner


def serve_main(argv: list[str]) -> None:
    """As `activitybi serve --http`, with the front chosen on the command line."""
    p = argparse.ArgumentParser(prog="http_cost.py serve")
    p.add_argument("--front", choices=["fast", "sdk"], default="fast")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--stateless", action="store_true")
    p.add_argument("--owner", action="store_true", help="run the warehouse owner (upload --follow)")
    p.add_argument("--diag", action="store_true", help="time requests and the loop's lag (to stderr at exit)")
    p.add_argument("--http", default="auto")
    p.add_argument("--loop", default="auto")
    a = p.parse_args(argv)
    import logging

    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="activitybi %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    from activitybi import config
    from activitybi.serve import app as server
    from activitybi.serve import runtime

    rt = runtime.Runtime.open(customer=None, source="http")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    owner = None
    if a.owner:
        from activitybi.owner.supervisor import OwnerSupervisor

        owner = OwnerSupervisor(config.queue_dir())
        owner.start()
    diag: dict[str, list[float]] = {"asgi": [], "lag": [], "gc": []}
    try:
        app = build_app(rt, server.load_tokens(a.tokens), stateless=a.stateless, front=a.front == "fast")
        if a.diag:
            app = diagnosed(app, diag)
        if os.environ.get("HTTP_BENCH_GC_FREEZE"):
            import gc

            gc.collect()
            gc.freeze()  # what start-up made lives on: keep it out of every later collection
        uvicorn.run(
            app, host="127.0.0.1", port=a.port, log_level="warning", http=a.http, loop=a.loop, backlog=4096
        )
    finally:
        rt.close()
        if owner is not None:
            owner.close()
        if a.diag:
            for k, xs in diag.items():
                print(
                    f"diag {k}: n {len(xs)} p50 {pct(xs, 50) * 1e3:.2f} ms p95 {pct(xs, 95) * 1e3:.2f} ms "
                    f"p99 {pct(xs, 99) * 1e3:.2f} ms max {max(xs or [0]) * 1e3:.2f} ms",
                    file=sys.stderr,
                )


def diagnosed(app: Any, diag: dict[str, list[float]]) -> Any:
    """The app, timing each request in the server, with the event loop's lag sampled
    every 10 ms (how late a 10 ms sleep wakes up) and the garbage collector's pauses
    (generations 1 and 2)."""
    started = False
    import gc

    gc_start = [0.0]

    def gc_timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        elif info.get("generation", 0) >= 1:
            diag["gc"].append(time.perf_counter() - gc_start[0])

    gc.callbacks.append(gc_timer)

    async def lag() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            diag["lag"].append(time.perf_counter() - t - 0.01)

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        nonlocal started
        if not started and scope["type"] == "http":
            started = True
            asyncio.get_running_loop().create_task(lag())
        t = time.perf_counter()
        await app(scope, receive, send)
        if scope["type"] == "http":
            diag["asgi"].append(time.perf_counter() - t)

    return timed


# --- the benchmark ----------------------------------------------------------------------

TOOL_ARGS: dict[str, dict[str, Any]] = {
    "noop": {},
    "log_event": {"activity": "asked_question", "feature_json": {"q": "why", "n": 1}},
    "get_context": {},
    "list_query_templates": {},
}


class SdkSession:
    """The SDK's own client (ClientSession over streamable_http_client), for comparison."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token

    async def open(self) -> SdkSession:
        import contextlib

        import httpx2
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        self.stack = contextlib.AsyncExitStack()
        http = await self.stack.enter_async_context(
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {self.token}"}, timeout=httpx2.Timeout(30, read=60)
            )
        )
        read, write = await self.stack.enter_async_context(
            streamable_http_client(f"http://127.0.0.1:{self.port}/mcp", http_client=http)
        )
        self.session = await self.stack.enter_async_context(ClientSession(read, write))
        await self.session.initialize()
        return self

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        r = await self.session.call_tool(tool, arguments)
        return {"isError": r.is_error}

    async def aclose(self) -> None:
        await self.stack.aclose()


async def measure(
    server: Server,
    token: str,
    tool: str,
    calls: int,
    warmup: int,
    concurrency: int,
    stateless: bool,
    driver: str = "lean",
    profile: Path | None = None,
    protocol: str = PROTOCOL,
) -> dict[str, float]:
    if driver == "sdk":
        sessions: list[Any] = [await SdkSession(server.port, token).open() for _ in range(concurrency)]
    else:
        sessions = [
            await LeanSession(server.port, token, stateless=stateless, protocol=protocol).open()
            for _ in range(concurrency)
        ]
    args = TOOL_ARGS[tool]
    latencies: list[float] = []
    errors = 0

    async def worker(s: Any, n: int, record: bool) -> None:
        nonlocal errors
        for _ in range(n):
            t = time.perf_counter()
            result = await s.call(tool, args)
            if record:
                latencies.append(time.perf_counter() - t)
            if result.get("isError"):
                errors += 1

    per = max(1, warmup // concurrency)
    await asyncio.gather(*(worker(s, per, False) for s in sessions))
    per = calls // concurrency
    spy = None
    if profile is not None:
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--nonblocking",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(profile),
                "--pid",
                str(server.proc.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)
    s0, d0, t0 = server.cpu(), self_cpu(), time.perf_counter()
    await asyncio.gather(*(worker(s, per, True) for s in sessions))
    s1, d1, t1 = server.cpu(), self_cpu(), time.perf_counter()
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    for s in reversed(sessions):  # the SDK's task groups close in the order they opened
        if driver == "sdk":
            await s.aclose()
        else:
            s.close()
    n = per * concurrency
    return {
        "server_ms": (s1 - s0) / n * 1e3,
        "driver_ms": (d1 - d0) / n * 1e3,
        "calls_s": n / (t1 - t0),
        "p50_ms": pct(latencies, 50) * 1e3,
        "p95_ms": pct(latencies, 95) * 1e3,
        "errors": errors,
        "calls": n,
    }


def hot_spots(path: Path, title: str, top: int = 14) -> str:
    """The functions with the most samples in a py-spy raw profile: inclusive (on the
    stack) and self (the leaf), as shares of all samples."""
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
            for f in stack.split(";")
        ]
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
    out = [f"## py-spy {title}: {total} samples"]
    out.append("inclusive:")
    for f, n in sorted(inclusive.items(), key=lambda x: -x[1])[:top]:
        out.append(f"  {n / total:6.1%}  {f}")
    out.append("self:")
    for f, n in sorted(leaf.items(), key=lambda x: -x[1])[:top]:
        out.append(f"  {n / total:6.1%}  {f}")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--warmup", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--stateless", action="store_true")
    p.add_argument("--tool", default="log_event", choices=sorted(set(TOOL_ARGS) - {"noop"}))
    p.add_argument(
        "--servers",
        default="stock,sdk,fast",
        help="any of stock, stock-sse (the SDK's default SSE answers), sdk, fast",
    )
    p.add_argument(
        "--driver",
        choices=["lean", "sdk"],
        default="lean",
        help="lean: raw HTTP/1.1; sdk: the SDK's ClientSession (costs far more CPU itself)",
    )
    p.add_argument(
        "--protocol",
        default=PROTOCOL,
        help=f"lean driver: {PROTOCOL} (handshake, session) or {MODERN} (mcp.Client's default: "
        "no session, an envelope per request; the fast front leaves these to the SDK)",
    )
    p.add_argument("--profile", metavar="DIR", help="py-spy the servers in round 1; raw stacks to DIR")
    p.add_argument(
        "--http", default="auto", help="uvicorn --http for every server (auto: httptools if installed)"
    )
    p.add_argument(
        "--loop", default="auto", help="uvicorn --loop for every server (auto: uvloop if installed)"
    )
    a = p.parse_args()
    use_uvloop()
    token = "tok-bench"
    workdir = Path(tempfile.mkdtemp(prefix="http-cost-"))
    env = {  # one customer makes every call and opens every session here
        "ACTIVITYBI_EVENTS_PER_SECOND": "1000000",
        "ACTIVITYBI_INITIALIZE_PER_MINUTE": "1000000",
        "ACTIVITYBI_SESSIONS_PER_CUSTOMER": "1000000",
    }
    kinds = a.servers.split(",")
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    print(
        f"# {a.calls} calls x {a.rounds} rounds, {a.concurrency} sessions in a closed loop, "
        f"{'stateless' if a.stateless else 'stateful'}, protocol {a.protocol}, driver {a.driver}, "
        f"uvicorn http={a.http} loop={a.loop}; "
        f"tool: noop (stock) / {a.tool} (ours); {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    try:
        for r in range(a.rounds):
            for kind in kinds:
                server = Server(
                    kind,
                    workdir,
                    {token: "bench@example.com"},
                    stateless=a.stateless,
                    http=a.http,
                    loop=a.loop,
                    env=env,
                )
                try:
                    tool = "noop" if kind.startswith("stock") else a.tool
                    profile = None
                    if a.profile and r == 0:
                        profile = Path(a.profile) / f"{kind}.txt"
                        profile.parent.mkdir(parents=True, exist_ok=True)
                    res = asyncio.run(
                        measure(
                            server,
                            token,
                            tool,
                            a.calls,
                            a.warmup,
                            a.concurrency,
                            a.stateless,
                            a.driver,
                            profile,
                            a.protocol,
                        )
                    )
                    if profile is not None and profile.exists():
                        print(hot_spots(profile, kind))
                    res["rss_mb"] = server.rss_mb()
                finally:
                    server.stop()
                results[kind].append(res)
                print(
                    f"round {r + 1} {kind:5s} server {res['server_ms']:.3f} ms CPU/call  driver "
                    f"{res['driver_ms']:.3f} ms CPU/call  {res['calls_s']:.0f} calls/s  "
                    f"p50 {res['p50_ms']:.2f} ms  p95 {res['p95_ms']:.2f} ms  errors {res['errors']}",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    names = {
        "stock": "stock SDK, do-nothing tool",
        "stock-sse": "stock SDK, SSE answers (its default)",
        "sdk": f"ours via the SDK path ({a.tool})",
        "fast": f"ours via the fast front ({a.tool})",
    }
    for kind in kinds:
        rs = results[kind]
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        print(
            f"{names[kind]:38s} server CPU/call {med['server_ms']:.3f} ms (median of {len(rs)}; "
            f"min {min(x['server_ms'] for x in rs):.3f})  driver CPU/call {med['driver_ms']:.3f} ms  "
            f"{med['calls_s']:.0f} calls/s  p50 {med['p50_ms']:.2f} ms  p95 {med['p95_ms']:.2f} ms  "
            f"RSS {med['rss_mb']:.0f} MB"
        )
    if "fast" in results and "stock" in results:
        f = statistics.median(x["server_ms"] for x in results["fast"])
        s = statistics.median(x["server_ms"] for x in results["stock"])
        print(
            f"server CPU per call: stock SDK {s:.3f} ms, fast front {f:.3f} ms (stock/fast {s / f:.1f}x); "
            f"target < 1 ms: {'met' if f < 1 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
