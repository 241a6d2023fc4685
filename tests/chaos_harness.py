"""Fault injection for activitybi, shared by `tests/test_chaos.py` and `benches/chaos.py`.

Each fault runs real processes (`activitybi serve` over stdio or HTTP, driven by the mcp
SDK's own client; the `upload --follow` owner it supervises; a real `redis-server`; a
real DuckDB file; a real tmpfs) and returns an `Outcome`: events acknowledged, found,
lost, duplicated, quarantined, and whether the fault ended in a recovery or a clear
error. Every event a client logs carries `{"chaos": run, "c": client, "seq": n}` in its
feature_json, so that an event stored twice under two ids is seen as a duplicate too.

Every step has a timeout: a fault that hangs is reported as a failure, never waited on.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson

from activitybi import Queue, QueueReader, ulid
from tests.mcp_clients import server_env

ACTIVITY = "survived_chaos"
EXE = shutil.which("activitybi") or "activitybi"
FAST = {
    name: "1000000"
    for name in (
        "ACTIVITYBI_EVENTS_PER_SECOND",
        "ACTIVITYBI_QUERIES_PER_MINUTE",
        "ACTIVITYBI_INSIGHTS_PER_MINUTE",
        "ACTIVITYBI_CARDS_PER_MINUTE",
        "ACTIVITYBI_UNKNOWN_CALLS_PER_MINUTE",
        "ACTIVITYBI_INITIALIZE_PER_MINUTE",
        "ACTIVITYBI_SESSIONS_PER_CUSTOMER",
    )
}
"""Rate limits out of the way: a refused call is not what these faults are about."""
DIRECT = 999
"""The `c` of events appended straight to the queue by the test process."""
CALL_TIMEOUT = 15.0
CONNECT_TIMEOUT = 30.0


class ChaosFailure(AssertionError):
    """A step of a fault did not happen as it must (a hang, a missing process, a mount)."""


# -- outcome ---------------------------------------------------------------------------


@dataclass
class Outcome:
    fault: str
    acknowledged: int = 0
    found: int = 0
    lost: int = 0
    duplicated: int = 0
    quarantined: int = 0
    altered: int = 0
    """Corrupted lines that still parsed and loaded with other content (no checksum)."""
    in_flight: int = 0
    """Calls whose answer never came (the server died under them): may or may not be stored."""
    in_flight_stored: int = 0
    errors: int = 0
    """Tool calls answered with an error, or connections lost."""
    outcome: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.lost == 0 and self.duplicated == 0

    def require(self, cond: bool, problem: str) -> None:
        if not cond:
            self.problems.append(problem)

    def finish(self, recovered: str = "recovered") -> Outcome:
        if self.lost:
            self.problems.append(f"{self.lost} acknowledged events lost")
        if self.duplicated:
            self.problems.append(f"{self.duplicated} events stored twice")
        self.outcome = recovered if not self.problems else "FAILED: " + "; ".join(self.problems)
        return self

    def summary(self) -> str:
        return (
            f"{self.fault}: acknowledged {self.acknowledged}, found {self.found}, lost "
            f"{self.lost}, duplicated {self.duplicated}, quarantined {self.quarantined}: "
            f"{self.outcome}"
        )


@dataclass
class Ledger:
    """What clients sent and what the server acknowledged."""

    run: str = field(default_factory=ulid)
    acked: dict[str, tuple[int, int]] = field(default_factory=dict)  # activity_id → (c, seq)
    in_flight: set[tuple[int, int]] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    seqs: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, client: int, pad: int = 0) -> tuple[tuple[int, int], dict[str, Any]]:
        with self.lock:
            seq = self.seqs[client]
            self.seqs[client] += 1
        features: dict[str, Any] = {"chaos": self.run, "c": client, "seq": seq}
        if pad:
            features["pad"] = "x" * pad
        return (client, seq), {"activity": ACTIVITY, "feature_json": features}

    def direct(self, q: Queue, n: int) -> None:
        """Appends `n` events straight to the queue, as a second writer process would."""
        with self.lock:
            start = self.seqs[DIRECT]
            self.seqs[DIRECT] += n
        events = [
            {
                "activity": ACTIVITY,
                "customer": "direct@chaos.io",
                "feature_json": {"chaos": self.run, "c": DIRECT, "seq": start + i},
            }
            for i in range(n)
        ]
        ids = q.append_many(events)
        with self.lock:
            for i, aid in enumerate(ids):
                self.acked[aid] = (DIRECT, start + i)


def text(result: Any) -> str:
    content = getattr(result, "content", None) or []
    return str(getattr(content[0], "text", "")) if content else ""


async def log_one(
    session: Any, ledger: Ledger, client: int, *, pad: int = 0, timeout: float = CALL_TIMEOUT
) -> str | None:
    """Logs one event; returns its id, or None when the server answered with an error
    (the error text goes to `ledger.refused`). Raises when the connection is gone; the
    event then stays in `ledger.in_flight`: the server may or may not have stored it."""
    key, args = ledger.event(client, pad)
    ledger.in_flight.add(key)
    with anyio.fail_after(timeout):
        result = await session.call_tool("log_event", args)
    ledger.in_flight.discard(key)
    if result.is_error:
        ledger.refused.append(text(result))
        return None
    aid = text(result)
    ledger.acked[aid] = key
    return aid


# -- processes -------------------------------------------------------------------------


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return server_env(home, **{**FAST, **extra})


def pids_of(home: Path, needle: str) -> list[int]:
    """Processes whose ACTIVITYBI_HOME is `home` and whose command line contains `needle`
    (" serve" for servers, "upload --follow" for warehouse owners)."""
    want = f"ACTIVITYBI_HOME={home}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
            if needle.encode() not in cmd:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if want in env and state != b"Z":
            out.append(int(entry))
    return sorted(out)


def pids_of_under(root: Path) -> list[int]:
    """Processes started for a fault under `root`: their ACTIVITYBI_HOME or their command
    line lies inside it (servers, owners, redis-server, DuckDB holders)."""
    inside = str(root).encode() + b"/"
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if inside in cmd or any(e.startswith(b"ACTIVITYBI_HOME=" + inside) for e in env):
            out.append(int(entry))
    return sorted(out)


def wait_for(what: str, cond: Callable[[], Any], timeout: float, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise ChaosFailure(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def owner_pid(home: Path, timeout: float = 20.0) -> int:
    pids = wait_for(
        "the warehouse owner (upload --follow)", lambda: pids_of(home, "upload --follow"), timeout
    )
    return int(pids[0])


def wait_gone(pid: int, timeout: float = 20.0) -> None:
    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            return True

    wait_for(f"process {pid} to exit", gone, timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpServer:
    """`activitybi serve --http` on a fixed port, which may be killed and started again."""

    def __init__(self, home: Path, tokens: dict[str, str], **env: str) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        home.mkdir(parents=True, exist_ok=True)
        self.token_file = home.parent / f"tokens-{self.port}.json"
        self.token_file.write_bytes(orjson.dumps(tokens))
        self.env = env_for(home, **env)
        self.log = home.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = CONNECT_TIMEOUT) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [EXE, "serve", "--http", "--port", str(self.port), "--tokens", str(self.token_file)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise ChaosFailure(
                        f"the HTTP server exited with {self.proc.returncode}:\n"
                        + self.log.read_text(errors="replace")[-2000:]
                    ) from None
                time.sleep(0.05)
        raise ChaosFailure(f"the HTTP server did not listen within {timeout:g} s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise ChaosFailure(f"the HTTP server ignored SIGTERM for {timeout:g} s") from None


@asynccontextmanager
async def http_session(url: str, token: str) -> AsyncIterator[Any]:
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(CALL_TIMEOUT)
        ) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as s,
    ):
        with anyio.fail_after(CONNECT_TIMEOUT):
            await s.initialize()
        yield s


@asynccontextmanager
async def stdio_session(home: Path, customer: str, errlog: Any = None, **env: str) -> AsyncIterator[Any]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=EXE, args=["serve"], env=env_for(home, ACTIVITYBI_CUSTOMER=customer, **env)
    )
    kwargs = {"errlog": errlog} if errlog is not None else {}
    async with stdio_client(params, **kwargs) as (read, write), ClientSession(read, write) as s:
        with anyio.fail_after(CONNECT_TIMEOUT):
            await s.initialize()
            await s.send_ping()
        yield s


async def keep_logging(
    connect: Callable[[], Any],
    ledger: Ledger,
    client: int,
    stop: anyio.Event,
    *,
    pad: int = 0,
    per_session: Callable[[Any], Awaitable[None]] | None = None,
) -> None:
    """Logs events in a loop until `stop`; reconnects (a new session, for stdio a new
    server) whenever the connection is lost."""
    while not stop.is_set():
        try:
            async with connect() as s:
                while not stop.is_set():
                    if per_session is not None:
                        await per_session(s)
                    else:
                        await log_one(s, ledger, client, pad=pad)
        except Exception as e:  # the server died under us: start again
            ledger.disconnects.append(f"{type(e).__name__}: {str(e)[:200]}")
            await anyio.sleep(0.05)


def run_async(fn: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    async def bounded() -> Any:
        with anyio.fail_after(timeout):
            return await fn()

    try:
        return anyio.run(bounded)
    except TimeoutError:
        raise ChaosFailure(f"the load did not finish within {timeout:g} s") from None


# -- the queue and the warehouse, seen from outside -------------------------------------


def acked_bytes(qdir: Path) -> int:
    """The acknowledged offsets summed over segments: it moves exactly when the uploader
    commits a batch (or, downwards, when acknowledged segments are deleted)."""
    try:
        return sum(orjson.loads((qdir / "ack.json").read_bytes()).values())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return 0


def backlog(qdir: Path) -> int:
    """Complete lines not yet acknowledged by the uploader, in every segment; read from the
    files alone (no lock), so it can be called while the owner runs."""
    try:
        acked = orjson.loads((qdir / "ack.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        acked = {}
    total = 0
    for path in qdir.iterdir():
        if path.suffix not in (".open", ".ndjson"):
            continue
        try:
            with open(path, "rb") as f:
                f.seek(acked.get(path.stem, 0))
                while chunk := f.read(1 << 20):
                    zero = chunk.find(b"\0") if path.suffix == ".open" else -1
                    if zero >= 0:  # an open segment's data ends at its first zero byte
                        total += chunk.count(b"\n", 0, zero)
                        break
                    total += chunk.count(b"\n")
        except FileNotFoundError:  # sealed (renamed) or deleted meanwhile: count again
            return backlog(qdir)
    return total


def wait_caught_up(qdir: Path, timeout: float) -> float:
    """Seconds until the owner has loaded everything in the queue."""
    start = time.monotonic()
    wait_for("the warehouse owner to catch up", lambda: backlog(qdir) == 0, timeout, every=0.05)
    return time.monotonic() - start


def upload_once(home: Path, timeout: float = 120.0) -> str:
    """`activitybi upload --once`; returns its summary line."""
    proc = subprocess.run(
        [EXE, "upload", "--once"],
        env={**os.environ, "ACTIVITYBI_HOME": str(home), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise ChaosFailure(f"upload --once failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def stream_rows(home: Path) -> list[tuple[str, Any]]:
    """(activity_id, parsed feature_json) of every row in claude_stream."""
    import duckdb

    path = home / "warehouse.duckdb"
    if not path.exists():
        return []
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute("SELECT activity_id, feature_json FROM claude_stream").fetchall()
    finally:
        con.close()
    return [(aid, orjson.loads(f) if f else None) for aid, f in rows]


def queued_events(qdir: Path) -> list[tuple[str, Any]]:
    """(activity_id, feature_json) of every line still in the queue (not acknowledged)."""
    out: list[tuple[str, Any]] = []
    if not qdir.exists():
        return out
    with QueueReader(str(qdir)) as r:
        cp = r.acked()
        while True:
            lines, cp = r.read(cp)
            if not lines:
                return out
            for line in lines:
                try:
                    e = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(e, dict):
                    out.append((str(e.get("activity_id")), e.get("feature_json")))


def quarantine_records(home: Path) -> list[dict[str, Any]]:
    path = home / "quarantine" / "uploader.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def torn_files(home: Path) -> list[Path]:
    qdir = home / "queue" / "quarantine"
    return sorted(qdir.iterdir()) if qdir.exists() else []


def account(
    out: Outcome,
    home: Path,
    ledger: Ledger,
    *,
    corrupted: frozenset[str] = frozenset(),
    altered: frozenset[str] = frozenset(),
) -> None:
    """Compares what was acknowledged with what is in DuckDB and still in the queue.
    `corrupted`: acknowledged ids whose line was damaged on purpose (not lost if missing);
    `altered`: ids of damaged lines that still loaded (their content is not compared)."""
    stored = stream_rows(home) + queued_events(home / "queue")
    ids = [aid for aid, _ in stored]
    by_key: dict[tuple[int, int], set[str]] = defaultdict(set)
    for aid, f in stored:
        if aid in altered:
            continue
        if isinstance(f, dict) and f.get("chaos") == ledger.run:
            by_key[(int(f.get("c", -1)), int(f.get("seq", -1)))].add(aid)
    present = set(ids)
    out.acknowledged = len(ledger.acked)
    out.found = sum(1 for aid in ledger.acked if aid in present)
    out.lost = sum(1 for aid in ledger.acked if aid not in present and aid not in corrupted)
    out.duplicated = (len(ids) - len(present)) + sum(len(v) - 1 for v in by_key.values())
    out.in_flight = len(ledger.in_flight)
    out.in_flight_stored = sum(1 for k in ledger.in_flight if k in by_key)
    wrong = [
        aid
        for aid, key in ledger.acked.items()
        if aid in present and aid not in altered and aid not in by_key.get(key, ())
    ]
    out.require(not wrong, f"{len(wrong)} acknowledged ids stored with another event's content")
    out.errors += len(ledger.refused) + len(ledger.disconnects)


# -- (a) SIGKILL the server during load -------------------------------------------------


def fault_server_kill(
    root: Path,
    *,
    transport: str = "http",
    seconds: float = 6.0,
    kills: int = 2,
    clients: int = 3,
    seed: int = 1,
) -> Outcome:
    """Clients log events as fast as they can while the server is SIGKILLed `kills` times
    and started again; afterwards the restarted server's owner must load everything."""
    t0 = time.monotonic()
    out = Outcome(f"SIGKILL server ({transport})")
    home = root / f"server-kill-{transport}"
    ledger = Ledger()
    rng = random.Random(seed)
    killed: list[int] = []
    tokens = {f"tok-{c}": f"c{c}@chaos.io" for c in range(clients)}
    http = HttpServer(home, tokens) if transport == "http" else None
    if http is not None:
        http.start()

    def connect(c: int) -> Callable[[], Any]:
        if http is not None:
            return lambda: http_session(http.url, f"tok-{c}")
        return lambda: stdio_session(home, f"c{c}@chaos.io")

    async def killer(stop: anyio.Event) -> None:
        gap = seconds / (kills + 1)
        for _ in range(kills):
            await anyio.sleep(gap * (0.6 + 0.8 * rng.random()))
            if http is not None:
                assert http.proc is not None
                pid = http.proc.pid
                http.kill()
                await anyio.sleep(0.2)
                await anyio.to_thread.run_sync(http.start)
            else:
                pids = await anyio.to_thread.run_sync(
                    lambda: wait_for("a stdio server", lambda: pids_of(home, " serve"), 20)
                )
                pid = rng.choice(pids)
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        await anyio.sleep(gap)
        stop.set()

    async def load() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer, stop)
            for c in range(clients):
                tg.start_soon(keep_logging, connect(c), ledger, c, stop)

    try:
        run_async(load, seconds * 4 + 60)
        out.require(len(killed) == kills, f"only {len(killed)} of {kills} kills happened")
        # The restarted server's owner loads everything, the dead servers' segments too.
        if http is not None:
            out.notes.append(f"owner caught up {wait_caught_up(home / 'queue', 60):.2f} s after the load")
        else:

            async def observe() -> float:
                async with stdio_session(home, "observer@chaos.io"):
                    return await anyio.to_thread.run_sync(lambda: wait_caught_up(home / "queue", 60))

            out.notes.append(f"a restarted server's owner caught up in {run_async(observe, 90):.2f} s")
    finally:
        if http is not None:
            http.stop()
    with contextlib.suppress(ChaosFailure):
        wait_for("owners to exit", lambda: not pids_of(home, "upload --follow"), 20)
    out.notes.append(f"final upload --once: {upload_once(home)}")
    account(out, home, ledger)
    out.notes.append(
        f"{len(killed)} kills, {len(ledger.disconnects)} lost connections, "
        f"{out.in_flight} calls in flight when killed ({out.in_flight_stored} stored), "
        f"{len(torn_files(home))} torn tails quarantined"
    )
    out.require(not ledger.refused, f"{len(ledger.refused)} calls refused: {ledger.refused[:3]}")
    out.require(not quarantine_records(home), "the uploader quarantined lines")
    out.seconds = time.monotonic() - t0
    return out.finish("recovered")


# -- (b) SIGKILL the uploader mid-batch -------------------------------------------------


def fault_uploader_kill(
    root: Path, *, kills: int = 2, clients: int = 2, burst: int = 5000, seed: int = 2
) -> Outcome:
    """The server runs with clients logging through it, while this process appends
    bursts straight to the queue so the owner always has big batches to load; the owner
    (`upload --follow`) is SIGKILLed mid-batch `kills` times and the server restarts it."""
    t0 = time.monotonic()
    out = Outcome("SIGKILL uploader mid-batch")
    home = root / "uploader-kill"
    qdir = home / "queue"
    ledger = Ledger()
    rng = random.Random(seed)
    tokens = {f"tok-{c}": f"c{c}@chaos.io" for c in range(clients)}
    http = HttpServer(home, tokens)
    http.start()
    killed: list[tuple[int, int]] = []  # (pid, lines pending when killed)
    stop_appending = threading.Event()
    q = Queue(str(qdir), rotate_bytes=1 << 20)

    def appender() -> None:
        while not stop_appending.is_set():
            if backlog(qdir) < 40_000:
                ledger.direct(q, burst)
            stop_appending.wait(0.1)

    feeder = threading.Thread(target=appender, daemon=True)

    def kill_owners() -> None:
        for _ in range(kills):
            pid = owner_pid(home)
            # Mid-batch: after the owner has committed a batch and is loading the next.
            wait_for("a backlog for the owner", lambda: backlog(qdir) > 1000, 20)
            before = acked_bytes(qdir)

            def committed(before: int = before) -> bool:  # the owner acknowledged a batch
                return acked_bytes(qdir) != before

            wait_for("the owner to commit a batch", committed, 20, every=0.005)
            time.sleep(rng.random() * 0.05)
            pending = backlog(qdir)
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, pending))
            wait_gone(pid)

    async def load() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            for c in range(clients):
                connect = functools.partial(http_session, http.url, f"tok-{c}")
                tg.start_soon(keep_logging, connect, ledger, c, stop)
            await anyio.to_thread.run_sync(kill_owners)
            await anyio.sleep(0.5)
            stop.set()

    try:
        feeder.start()
        run_async(load, 120)
        stop_appending.set()
        feeder.join(10)
        q.close()
        out.notes.append(f"owner caught up {wait_caught_up(qdir, 60):.2f} s after the last kill")
    finally:
        stop_appending.set()
        q.close()
        http.stop()
    out.notes.append(f"final upload --once: {upload_once(home)}")
    account(out, home, ledger)
    out.notes.append("killed with " + ", ".join(f"{p:,}" for _, p in killed) + " lines pending")
    out.require(len(killed) == kills, f"only {len(killed)} of {kills} kills happened")
    out.require(not ledger.refused, f"{len(ledger.refused)} calls refused: {ledger.refused[:3]}")
    out.require(not ledger.disconnects, f"connections lost: {ledger.disconnects[:3]}")
    out.require(not quarantine_records(home), "the uploader quarantined lines")
    out.seconds = time.monotonic() - t0
    return out.finish("recovered")


# -- (c) kill Redis and restart it ------------------------------------------------------


def _redis_command(port: int, *args: str) -> bytes:
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(payload)
        return s.recv(256)


def redis_keys(port: int) -> int:
    try:
        reply = _redis_command(port, "DBSIZE")
    except OSError:
        return -1
    return int(reply[1:].split(b"\r\n")[0]) if reply.startswith(b":") else -1


def fault_redis(
    root: Path, redis: Any, *, before: float = 1.5, outage: float = 2.0, after: float = 4.0, clients: int = 2
) -> Outcome:
    """The server runs with REDIS_URL; clients log events, write insights and read them
    back with get_context while Redis is SIGKILLed and, `outage` seconds later, started
    again (empty). Tools must keep answering, right, and fast; the tier must come back."""
    t0 = time.monotonic()
    out = Outcome("kill Redis, restart it")
    home = root / "redis"
    ledger = Ledger()
    tokens = {f"tok-{c}": f"c{c}@chaos.io" for c in range(clients)}
    http = HttpServer(home, tokens, REDIS_URL=redis.url)
    http.start()
    phase = ["before"]
    stale: list[str] = []
    latency: dict[str, list[float]] = defaultdict(list)  # phase → seconds of each tool call
    repopulated: list[float] = []

    def per_client(c: int) -> Callable[[Any], Awaitable[None]]:
        async def step(s: Any) -> None:
            await log_one(s, ledger, c)
            value = ledger.seqs[c]
            with anyio.fail_after(CALL_TIMEOUT):
                start = time.perf_counter()
                r1 = await s.call_tool("log_insight", {"subject": "chaos", "metric": f"m{c}", "value": value})
                middle = time.perf_counter()
                r2 = await s.call_tool("get_context", {})
                latency[phase[0]] += [middle - start, time.perf_counter() - middle]
            if r1.is_error or r2.is_error:
                ledger.refused.append(text(r1) if r1.is_error else text(r2))
                return
            ctx = orjson.loads(text(r2))
            latest = {i["metric"]: i["latest"] for i in ctx["insights"]}
            if latest.get(f"m{c}") != value:
                stale.append(f"{phase[0]}: m{c} latest {latest.get(f'm{c}')} != {value}")

        return step

    async def chaos(stop: anyio.Event) -> None:
        await anyio.sleep(before)
        out.require(redis_keys(redis.port) > 0, "Redis held no context before the kill: tier 2 unused")
        await anyio.to_thread.run_sync(redis.stop)
        phase[0] = "during"
        await anyio.sleep(outage)
        await anyio.to_thread.run_sync(redis.start)
        phase[0] = "after"
        restarted = time.monotonic()
        deadline = restarted + max(after, 1.0)
        while time.monotonic() < deadline:
            if not repopulated and redis_keys(redis.port) > 0:
                repopulated.append(time.monotonic() - restarted)
            await anyio.sleep(0.05)
        stop.set()

    async def load() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(chaos, stop)
            for c in range(clients):
                tg.start_soon(
                    functools.partial(
                        keep_logging,
                        functools.partial(http_session, http.url, f"tok-{c}"),
                        ledger,
                        c,
                        stop,
                        per_session=per_client(c),
                    )
                )

    try:
        run_async(load, before + outage + after + 60)
        out.notes.append(f"owner caught up {wait_caught_up(home / 'queue', 60):.2f} s after the load")
    finally:
        http.stop()
    out.notes.append(f"final upload --once: {upload_once(home)}")
    account(out, home, ledger)
    for name, values in latency.items():
        values.sort()
        out.notes.append(
            f"log_insight + get_context {name} the outage: {len(values)} calls, p50 "
            f"{values[len(values) // 2] * 1000:.1f} ms, p95 "
            f"{values[int(len(values) * 0.95)] * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms"
        )
    worst = max(latency.get("during", [0.0]))
    out.notes.append(
        "Redis held contexts again "
        + (f"{repopulated[0]:.2f} s after its restart" if repopulated else "never after its restart")
    )
    out.require(bool(repopulated), "the Redis tier did not come back after Redis restarted")
    out.require(not stale, f"{len(stale)} get_context answers missed the insight just written: {stale[:3]}")
    out.require(not ledger.refused, f"{len(ledger.refused)} calls refused: {ledger.refused[:3]}")
    out.require(not ledger.disconnects, f"connections lost: {ledger.disconnects[:3]}")
    out.require(worst < 1.0, f"tool calls took up to {worst:.2f} s while Redis was down")
    out.seconds = time.monotonic() - t0
    return out.finish("recovered")


# -- (d) the warehouse unavailable -------------------------------------------------------

HOLDER = """
import sys, time, duckdb
path, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + 30
while True:
    try:
        con = duckdb.connect(path)
        break
    except duckdb.IOException:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.005)
n = con.execute("SELECT count(*) FROM claude_stream").fetchone()[0]
print("held", n, flush=True)
time.sleep(seconds)
m = con.execute("SELECT count(*) FROM claude_stream").fetchone()[0]
con.close()
print("released", m, flush=True)
"""


def fault_warehouse_down(root: Path, *, outage: float = 3.0, clients: int = 2) -> Outcome:
    """Another process takes the DuckDB file (DuckDB allows one writer) for `outage`
    seconds, right after the owner is stopped. Tools must keep answering; the server keeps
    trying to start an owner; once the file is free, the owner catches up."""
    t0 = time.monotonic()
    out = Outcome(f"warehouse unavailable {outage:g} s")
    home = root / "warehouse-down"
    qdir = home / "queue"
    ledger = Ledger()
    tokens = {f"tok-{c}": f"c{c}@chaos.io" for c in range(clients)}
    http = HttpServer(home, tokens)
    http.start()
    timeline: dict[str, float] = {}

    def outage_window() -> None:
        pid = owner_pid(home)
        time.sleep(0.5)  # some load first
        # and the owner past its start (tables made, a batch committed), however busy the machine
        wait_for("the owner's first commit", lambda: acked_bytes(qdir) > 0, 30)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(home / "warehouse.duckdb"), str(outage)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            # Stop the owner; the holder takes the file at once. Should the server start a
            # new owner first, that one is stopped too.
            for _ in range(10):
                for owner in pids_of(home, "upload --follow") or [pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(owner, signal.SIGTERM)
                if select.select([holder.stdout], [], [], 3.0)[0]:
                    break
            held = holder.stdout.readline().split()
            if held[:1] != ["held"]:
                raise ChaosFailure("the holder could not take the DuckDB file")
            timeline["held"] = time.monotonic()
            time.sleep(outage / 2)
            timeline["backlog_mid_outage"] = backlog(qdir)
            released = holder.stdout.readline().split()
            timeline["released"] = time.monotonic()
            timeline["rows_loaded_during_outage"] = int(released[1]) - int(held[1])
            holder.wait(10)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()

    async def load() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            for c in range(clients):
                connect = functools.partial(http_session, http.url, f"tok-{c}")
                tg.start_soon(keep_logging, connect, ledger, c, stop)
            await anyio.to_thread.run_sync(outage_window)
            await anyio.sleep(0.5)
            stop.set()

    try:
        run_async(load, outage + 90)
        caught = wait_caught_up(qdir, 60)
        out.notes.append(
            f"owner caught up {time.monotonic() - timeline['released']:.2f} s after the file "
            f"was released ({caught:.2f} s after the load stopped)"
        )
    finally:
        http.stop()
    log = http.log.read_text(errors="replace")
    refused_opens = log.count("TransientError: DuckDB file")
    out.notes.append(
        f"{timeline.get('backlog_mid_outage', 0):,} events waiting mid-outage; the server "
        f"tried to start an owner {refused_opens} times while the file was held"
    )
    out.notes.append(f"final upload --once: {upload_once(home)}")
    account(out, home, ledger)
    out.require(timeline.get("rows_loaded_during_outage") == 0, "rows were loaded while the file was held")
    out.require(timeline.get("backlog_mid_outage", 0) > 0, "nothing was waiting during the outage")
    out.require(not ledger.refused, f"{len(ledger.refused)} calls refused: {ledger.refused[:3]}")
    out.require(not ledger.disconnects, f"connections lost: {ledger.disconnects[:3]}")
    out.require(not quarantine_records(home), "the uploader quarantined lines")
    out.seconds = time.monotonic() - t0
    return out.finish("recovered")


def fault_warehouse_down_standalone(root: Path, *, outage: float = 3.0, events: int = 5000) -> Outcome:
    """`activitybi upload --follow` started by hand (no server supervising it) while another
    process holds the DuckDB file for `outage` seconds: it must wait (the README: transient
    warehouse failures are retried forever) and then load everything, not exit."""
    t0 = time.monotonic()
    out = Outcome(f"warehouse unavailable {outage:g} s, standalone upload --follow")
    home = root / "warehouse-down-standalone"
    qdir = home / "queue"
    ledger = Ledger()
    env = {**os.environ, "ACTIVITYBI_HOME": str(home), "COLUMNS": "300"}
    subprocess.run([EXE, "init"], env=env, capture_output=True, check=True, timeout=60)
    with Queue(str(qdir)) as q:
        ledger.direct(q, events)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home / "warehouse.duckdb"), str(outage)],
        stdout=subprocess.PIPE,
        text=True,
    )
    follower: subprocess.Popen[str] | None = None
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().split()[:1] != ["held"]:
            raise ChaosFailure("the holder could not take the DuckDB file")
        follower = subprocess.Popen(
            [EXE, "upload", "--follow", "--quiet"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(outage / 2)
        if follower.poll() is not None:
            assert follower.stderr is not None
            last = follower.stderr.read().strip().splitlines()[-1:] or [""]
            out.problems.append(
                f"upload --follow exited with {follower.returncode} while the file was "
                f"held instead of retrying: {last[0][:200]}"
            )
        holder.wait(outage + 30)
        released = time.monotonic()
        if follower.poll() is None:
            wait_caught_up(qdir, 60)
            out.notes.append(f"caught up {time.monotonic() - released:.2f} s after the file was released")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if follower is not None and follower.poll() is None:
            follower.terminate()
            try:
                follower.wait(20)
            except subprocess.TimeoutExpired:
                follower.kill()
                follower.wait()
                out.problems.append("upload --follow ignored SIGTERM for 20 s")
    out.notes.append(f"final upload --once: {upload_once(home)}")
    account(out, home, ledger)
    out.seconds = time.monotonic() - t0
    return out.finish("recovered")


# -- (e) a full disk under the queue ------------------------------------------------------


class MountError(ChaosFailure):
    pass


@contextlib.contextmanager
def small_filesystem(path: Path, size_mb: int, scratch: Path) -> Iterator[str]:
    """Mounts a `size_mb` tmpfs on `path` (root only); falls back to a loop-mounted ext4
    image. Raises MountError saying why when neither works."""
    path.mkdir(parents=True, exist_ok=True)
    tried = []
    kind = None
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode == 0:
        kind = "tmpfs"
    else:
        tried.append(f"mount -t tmpfs: {r.stderr.strip() or r.returncode}")
        image = scratch / f"disk-{ulid()}.img"
        steps = [
            ["dd", "if=/dev/zero", f"of={image}", "bs=1M", f"count={size_mb}", "status=none"],
            ["mkfs.ext4", "-q", "-m", "0", "-F", str(image)],
            ["mount", "-o", "loop", str(image), str(path)],
        ]
        for step in steps:
            try:
                r = subprocess.run(step, capture_output=True, text=True, timeout=60)
            except FileNotFoundError as e:
                r = subprocess.CompletedProcess(step, 127, "", str(e))
            if r.returncode != 0:
                tried.append(f"{' '.join(step[:2])}: {r.stderr.strip() or r.returncode}")
                break
        else:
            kind = "ext4 loop"
    if kind is None:
        raise MountError(
            f"cannot mount a small filesystem on {path} (needs root and mount permission, "
            f"e.g. a privileged container): " + " | ".join(tried)
        )
    try:
        yield kind
    finally:
        done = subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def set_free(path: Path, ballast: Path, want_free: int) -> None:
    """Grows or shrinks `ballast` so that about `want_free` bytes stay free."""
    have = ballast.stat().st_size if ballast.exists() else 0
    size = max(0, have + free_bytes(path) - want_free)
    ballast.unlink(missing_ok=True)
    if size:
        with open(ballast, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, size)


def segment_problems(qdir: Path) -> list[str]:
    """Sealed segments must hold whole JSON lines only; no stray open segments."""
    problems = []
    for path in sorted(qdir.glob("*.ndjson")):
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            problems.append(f"{path.name} does not end with a newline")
        for i, line in enumerate(data.splitlines()):
            try:
                if not isinstance(orjson.loads(line), dict):
                    raise ValueError
            except ValueError:
                problems.append(f"{path.name} line {i} is not a JSON object: {line[:80]!r}")
                break
    return problems


SEGMENT = 16 * 1024 * 1024
"""The server's segment size: each open segment preallocates this much."""


def fault_disk_full(root: Path, *, size_mb: int = 40, pad: int = 64 * 1024) -> Outcome:
    """ACTIVITYBI_HOME/queue is a small tmpfs. The server starts on it; a ballast file then
    leaves less than a segment free (a small event must still go in: the segment shrinks to
    what fits); then room for
    one segment and no more: log (64 KiB events) until ENOSPC and some calls past it; then
    the ballast goes and logging goes on. Acknowledged events must all load; sealed
    segments hold whole lines only; the uploader quarantines nothing. The test process
    holds the queue's reader lock throughout, so no owner frees space by uploading (the
    filesystem is big enough for the full segment plus a new one once the ballast is gone).
    """
    t0 = time.monotonic()
    out = Outcome(f"full disk under the queue ({size_mb} MiB)")
    home = root / "disk-full"
    qdir = home / "queue"
    ballast = qdir / "ballast.bin"
    ledger = Ledger()
    phases: dict[str, Any] = {}
    errlog = open(root / "disk-full-server.log", "w+")  # noqa: SIM115
    with small_filesystem(qdir, size_mb, root) as kind:
        out.notes.append(f"queue on a {size_mb} MiB {kind}")
        reader = QueueReader(str(qdir))  # no owner may start: nothing is uploaded meanwhile
        try:

            async def run() -> None:
                async with stdio_session(home, "disk@chaos.io", errlog=errlog) as s:
                    await anyio.to_thread.run_sync(
                        lambda: wait_for("the server's queue", lambda: (qdir / "queue.state").exists(), 20)
                    )
                    set_free(qdir, ballast, 4 << 20)  # less than one segment
                    phases["free_at_start"] = free_bytes(qdir)
                    first = await log_one(s, ledger, 0)  # the segment shrinks to what fits
                    phases["first_error"] = ledger.refused[-1] if first is None else None
                    set_free(qdir, ballast, SEGMENT + (1 << 20))  # one segment, and a little
                    for _ in range(2 * SEGMENT // pad + 50):
                        if await log_one(s, ledger, 0, pad=pad) is None:
                            break
                    phases["acked_before_full"] = len(ledger.acked)
                    errors_before = len(ledger.refused)
                    for _ in range(20):  # still full: every call must fail the same clear way
                        await log_one(s, ledger, 0, pad=pad)
                    phases["errors_while_full"] = len(ledger.refused) - errors_before + 1
                    phases["ok_while_full"] = len(ledger.acked) - phases["acked_before_full"]
                    phases["ping_while_full"] = (await s.send_ping()) is not None
                    ctx = await s.call_tool("get_context", {})
                    phases["get_context_while_full"] = not ctx.is_error
                    phases["segments_while_full"] = segment_problems(qdir)
                    ballast.unlink()
                    n = len(ledger.acked)
                    for _ in range(20):
                        await log_one(s, ledger, 0)
                    phases["ok_after_freeing"] = len(ledger.acked) - n

            run_async(run, 120)
        finally:
            reader.close()
        out.notes.append(f"final upload --once: {upload_once(home)}")
        account(out, home, ledger)
        seg_problems = segment_problems(qdir)
    errlog.seek(0)
    server_log = errlog.read()
    errlog.close()
    messages = sorted(set(ledger.refused))
    first_error = phases.get("first_error")
    out.require(
        first_error is None, f"with less than a segment free, a small event was refused: {first_error!r}"
    )
    out.require(phases.get("acked_before_full", 0) > 0, "no event was acknowledged before the disk filled")
    out.require(
        phases.get("ok_while_full") == 0,
        f"{phases.get('ok_while_full')} events were acknowledged while the disk stayed full",
    )
    out.require(
        all("No space left on device" in m for m in messages), f"errors without a clear reason: {messages}"
    )
    out.require(
        bool(phases.get("ping_while_full") and phases.get("get_context_while_full")),
        "the server stopped answering while the disk was full",
    )
    out.require(
        phases.get("ok_after_freeing") == 20,
        f"only {phases.get('ok_after_freeing')} of 20 events were acknowledged after freeing space",
    )
    out.require(
        not phases.get("segments_while_full") and not seg_problems,
        f"half-written segments: {phases.get('segments_while_full') or seg_problems}",
    )
    out.require(not quarantine_records(home), "the uploader quarantined lines")
    out.notes.append(
        f"server stderr: {server_log.count('could not log a tool call')} tool-call log "
        f"lines could not be written, {server_log.count('Traceback')} tracebacks"
    )
    out.errors = len(ledger.refused)
    out.notes.append(
        f"{phases.get('acked_before_full')} events of {pad // 1024} KiB acknowledged "
        f"before ENOSPC, then {phases.get('errors_while_full')} clear errors: "
        f"{messages[:1]}"
    )
    out.seconds = time.monotonic() - t0
    return out.finish("clear error (No space left on device), then recovered")


def fault_full_disk_at_start(root: Path) -> Outcome:
    """A queue opened for the first time on a filesystem that is already full (a server
    starting there): a clear error, or a server that answers with clear errors; never a
    process killed by a signal."""
    t0 = time.monotonic()
    out = Outcome("queue opened on a full disk")
    home = root / "full-at-start"
    qdir = home / "queue"
    ledger = Ledger()
    errlog = open(root / "full-at-start.log", "w+")  # noqa: SIM115
    with small_filesystem(qdir, 1, root):
        set_free(qdir, qdir / "ballast.bin", 0)
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from activitybi import Queue; Queue(sys.argv[1]).close()",
                str(qdir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode < 0:
            out.problems.append(
                f"Queue(dir) on a full filesystem killed the process with "
                f"{signal.Signals(-proc.returncode).name}"
            )
        elif proc.returncode != 0 and "No space left" not in proc.stderr:
            out.problems.append(f"Queue(dir) on a full filesystem failed unclearly: {proc.stderr[-300:]}")
        out.notes.append(f"Queue(dir) exit status {proc.returncode}: {proc.stderr.strip()[-120:]}")

        async def run() -> None:
            async with stdio_session(home, "full@chaos.io", errlog=errlog) as s:
                await log_one(s, ledger, 0)

        try:
            run_async(run, 60)
        except Exception as e:  # the server died at start
            out.problems.append(f"the stdio server died: {type(e).__name__}: {str(e)[:160]}")
    errlog.close()
    if ledger.refused:
        out.notes.append(f"log_event answered: {ledger.refused[0][:120]}")
        out.require("No space left" in ledger.refused[0], f"unclear error: {ledger.refused[0][:200]}")
    out.errors = len(ledger.refused)
    out.seconds = time.monotonic() - t0
    return out.finish("clear error")


# -- (f) flipped bytes in a sealed segment ---------------------------------------------


STRUCTURAL = b'{}":,'


def corrupt_line(line: bytes, rng: random.Random, mode: str) -> bytes:
    """One byte of `line` changed: in "structural" mode a brace, quote, colon or comma
    (the line stops being JSON); in "random" mode any byte, one bit (bit rot). Never a
    newline or a zero byte in or out."""
    positions = (
        [i for i, b in enumerate(line) if b in STRUCTURAL] if mode == "structural" else list(range(len(line)))
    )
    for _ in range(1000):
        i = rng.choice(positions)
        mask = rng.randrange(1, 128) if mode == "structural" else 1 << rng.randrange(8)
        new = line[i] ^ mask
        if new in (0, 10) or line[i] in (0, 10):
            continue
        bad = line[:i] + bytes([new]) + line[i + 1 :]
        if mode == "structural":
            try:
                orjson.loads(bad)
                continue  # still JSON: try another
            except orjson.JSONDecodeError:
                pass
        return bad
    raise ChaosFailure(f"could not corrupt {line[:80]!r}")


def fault_flipped_bytes(
    root: Path, *, events: int = 300, flips: int = 10, mode: str = "structural", seed: int = 3
) -> Outcome:
    """The server logs `events` while no owner runs (the test holds the reader lock);
    then one byte of `flips` lines of the sealed segments is changed; then the uploader
    runs (twice). Unreadable lines go to quarantine with a reason, the others load once."""
    from activitybi.events import Rejected, to_row

    t0 = time.monotonic()
    out = Outcome(f"flipped bytes ({mode})")
    home = root / f"flipped-{mode}"
    qdir = home / "queue"
    ledger = Ledger()
    rng = random.Random(seed)
    qdir.mkdir(parents=True, exist_ok=True)
    reader = QueueReader(str(qdir))
    try:

        async def run() -> None:
            async with stdio_session(home, "flip@chaos.io") as s:
                for _ in range(events):
                    await log_one(s, ledger, 0)

        run_async(run, 120)
    finally:
        reader.close()
    with QueueReader(str(qdir)):  # seals what a server left open; nobody uploads meanwhile
        segments = sorted(qdir.glob("*.ndjson"))
        out.require(bool(segments) and not list(qdir.glob("*.open")), "no sealed segment to corrupt")
        lines = [(p, i, line) for p in segments for i, line in enumerate(p.read_bytes().splitlines())]
        mine = [x for x in lines if b'"chaos"' in x[2]]
        chosen = rng.sample(mine, min(flips, len(mine)))
        corrupted: dict[str, bytes] = {}  # original activity_id → the corrupted line
        expect_bad: set[str] = set()
        altered_ids: set[str] = set()
        parsed_id: dict[str, str] = {}  # original activity_id → the id the corrupted line parses to
        by_file: dict[Path, dict[int, bytes]] = defaultdict(dict)
        for path, i, line in chosen:
            bad = corrupt_line(line, rng, mode)
            aid = orjson.loads(line)["activity_id"]
            corrupted[aid] = bad
            try:
                parsed_id[aid] = to_row(bad).activity_id
                altered_ids.add(parsed_id[aid])
            except Rejected:
                expect_bad.add(aid)
            by_file[path][i] = bad
        for path, changes in by_file.items():
            data = path.read_bytes().splitlines()
            for i, bad in changes.items():
                data[i] = bad
            path.write_bytes(b"\n".join(data) + b"\n")
    first = upload_once(home)
    quarantine_after_first = quarantine_records(home)
    second = upload_once(home)
    out.notes.append(f"upload --once: {first}; again: {second}")
    records = quarantine_records(home)
    account(out, home, ledger, corrupted=frozenset(corrupted), altered=frozenset(altered_ids))
    present = {aid for aid, _ in stream_rows(home)}
    quarantined_lines = {r["line"] for r in records}
    # Measured, not predicted: a corrupted line counts as quarantined when its bytes are in
    # quarantine, and as silently altered when it is not and a row under its id (the
    # original, or the one the damaged line parses to) is in the warehouse. With the
    # queue's per-line checksum a line that is still valid JSON is quarantined too
    # ("checksum mismatch"), so `to_row` alone no longer predicts what loads.
    in_quarantine = {
        aid for aid, bad in corrupted.items() if bad.decode("utf-8", "replace") in quarantined_lines
    }
    out.quarantined = len(in_quarantine)
    loaded = {
        aid
        for aid in corrupted
        if aid not in in_quarantine and (aid in present or parsed_id.get(aid) in present)
    }
    out.altered = len(loaded)
    altered_lost = sum(1 for aid in loaded if aid not in present)
    unreadable_quarantined = len(expect_bad & in_quarantine)
    out.require(
        unreadable_quarantined == len(expect_bad),
        f"only {unreadable_quarantined} of {len(expect_bad)} unreadable lines are in quarantine",
    )
    out.require(all(r.get("reason") for r in records), "a quarantined line has no reason")
    out.require(len(records) == len(quarantine_after_first), "the second upload quarantined lines again")
    out.require(not any(aid in present for aid in expect_bad), "an unreadable line was loaded")
    out.found = sum(1 for aid in ledger.acked if aid in present and aid not in corrupted)
    out.notes.append(
        f"{len(corrupted)} lines corrupted: {len(expect_bad)} unreadable as JSON, "
        f"{len(corrupted) - len(expect_bad)} still valid JSON; quarantined {out.quarantined}, "
        f"{out.altered} loaded with other content ({altered_lost} of them under another activity_id)"
    )
    if out.altered:
        out.notes.append("a corrupted line loaded silently: the line checksum did not catch it")
    out.seconds = time.monotonic() - t0
    return out.finish("recovered (corrupt lines quarantined)")


def format_table(outcomes: list[Outcome]) -> str:
    head = (
        "fault",
        "acked",
        "found",
        "lost",
        "dup",
        "quar.",
        "altered",
        "in flight",
        "errors",
        "s",
        "outcome",
    )
    rows = [
        (
            o.fault,
            f"{o.acknowledged:,}",
            f"{o.found:,}",
            str(o.lost),
            str(o.duplicated),
            str(o.quarantined),
            str(o.altered),
            f"{o.in_flight} ({o.in_flight_stored} stored)",
            str(o.errors),
            f"{o.seconds:.1f}",
            o.outcome if len(o.outcome) <= 60 else o.outcome[:57] + "...",
        )
        for o in outcomes
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
