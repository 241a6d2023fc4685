"""Retention, archival and forgetting a person: real processes, SIGKILLs, raw bytes."""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import orjson
import pytest

from activitybi import Queue, config, secret, ulid
from activitybi.memory.journal import MemoryJournal
from activitybi.memory.redis_tier import RedisTier
from activitybi.owner import retention
from activitybi.owner.loop import refresh_context
from activitybi.owner.uploader import Uploader
from activitybi.query.artifacts import ArtifactStore
from activitybi.query.tickets import Ticket, TicketStore
from activitybi.warehouse.duckdb import DuckDBWarehouse
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.test_cards import s3  # noqa: F401

ALICE, BOB = "alice.forgotten@example.org", "bob.kept@example.org"
TICKETS: dict[str, str] = {}  # customer -> the ticket id build_everything gave them
NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None)


def events(customer: str, tag: str, n: int, days_ago: list[int]) -> list[dict[str, object]]:
    """`n` events per age, each with a value unique to it (`uniq-<tag>-...`)."""
    out: list[dict[str, object]] = []
    for age in days_ago:
        ts = (NOW - dt.timedelta(days=age, minutes=1)).isoformat(timespec="milliseconds") + "Z"
        out += [
            {
                "activity": "asked_question",
                "customer": customer,
                "ts": ts,
                "feature_json": {"note": f"uniq-{tag}-{age}-{i}", "by": customer},
            }
            for i in range(n)
        ]
    return out


def env(home: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ACTIVITYBI_HOME": str(home),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        **extra,
    }


def cli(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "activitybi", *args],
        env=env(home, **extra),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def upload(home: Path) -> None:
    wh = DuckDBWarehouse(config.Home(home).warehouse)
    wh.init()
    up = Uploader(config.Home(home).queue, wh)
    up.drain()
    up.close()
    wh.close()


def query(home: Path, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(config.Home(home).warehouse), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def files_containing(home: Path, needles: list[bytes]) -> list[str]:
    """Every file under `home` whose raw bytes hold any of `needles`."""
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(home)}: {n!r}" for n in needles if n in data]
    return found


def test_secret_key_is_created_once_with_mode_0600(_home: Path) -> None:
    k = secret.key()
    path = config.Home.current().secret_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(k) == secret.KEY_BYTES
    assert secret.key() == k
    assert secret.keyed_hash("a@b.c") == secret.keyed_hash("a@b.c") != secret.keyed_hash("b@b.c")
    assert "a@b.c" not in secret.keyed_hash("a@b.c")


def test_retention_archives_by_month_and_the_view_reads_everything(_home: Path) -> None:
    ages = [200, 170, 130, 100, 10, 0]
    with Queue(str(config.Home(_home).queue)) as q:
        q.append_many(events(ALICE, "a", 50, ages) + events(BOB, "b", 30, ages))
    upload(_home)
    total = 80 * len(ages)
    wh = DuckDBWarehouse(config.Home(_home).warehouse)
    settings = config.Settings.from_env({"ACTIVITYBI_RETENTION_DAYS": "90"})
    dry = retention.dry_run(wh, settings, NOW)
    assert (
        sum(dry.months.values()) == 80 * 4
        and wh.execute("SELECT count(*) FROM claude_stream").rows[0][0] == total
    )
    report = retention.run(wh, _home, settings, NOW)
    assert report.months == dry.months
    again = retention.run(wh, _home, settings, NOW)
    assert again.months == {}
    assert wh.execute("SELECT count(*), min(ts) >= ? FROM claude_stream", [report.cutoff]).rows[0] == (
        160,
        True,
    )
    assert wh.execute("SELECT count(*), count(DISTINCT activity_id) FROM claude_stream_all").rows[0] == (
        total,
        total,
    )
    manifest = orjson.loads((config.Home(_home).archive / "manifest.json").read_bytes())
    assert sum(m["rows"] for m in manifest["months"].values()) == 320
    assert {p.name for p in retention.archive_files(config.Home(_home).archive)} == {
        f"stream-{m}.parquet" for m in dry.months
    }
    # the JSON column survives the round trip
    got = wh.execute(
        "SELECT feature_json->>'note' FROM claude_stream_all WHERE ts < ? LIMIT 1", [report.cutoff]
    )
    assert str(got.rows[0][0]).startswith("uniq-")
    wh.close()
    assert not retention.due(_home)


def test_other_limits_are_applied(_home: Path) -> None:
    paths = config.Home(_home)
    old = time.time() - 400 * retention.DAY
    MemoryJournal(paths.memory).append(ALICE, {"customer_id": ALICE})
    os.utime(MemoryJournal(paths.memory).path(ALICE), (old, old))
    paths.logs.mkdir(parents=True)
    (paths.logs / "old.log").write_text("x")
    os.utime(paths.logs / "old.log", (old, old))
    (paths.logs / "new.log").write_text("y")
    paths.quarantine.parent.mkdir(parents=True)
    lines = [{"at": "2020-01-01T00:00:00.000+00:00", "reason": "r", "line": "old"}]
    lines.append({"at": NOW.isoformat() + "+00:00", "reason": "r", "line": "new"})
    paths.quarantine.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    wh = DuckDBWarehouse(paths.warehouse)
    wh.init()
    wh.execute(
        "INSERT INTO query_audit VALUES ('t1', 'c', 'x', 'h', 'q', 1, 1, 1.0, 'succeeded', ?)",
        [NOW - dt.timedelta(days=400)],
    )
    removed = retention.cleanup(wh, _home, config.Settings.from_env({}), NOW)
    assert removed["query_audit rows"] == 1 and removed["insight journals"] == 1
    assert removed["log files"] == 1 and removed["quarantined lines"] == 1
    assert [p.name for p in paths.logs.iterdir()] == ["new.log"]
    assert b"new" in paths.quarantine.read_bytes() and b"old" not in paths.quarantine.read_bytes()
    wh.close()


def test_rate_limit_buckets_of_idle_customers_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    from activitybi.serve import ratelimit

    limits = ratelimit.RateLimits(events_per_second=1000, queries_per_minute=60)
    limits.check("log_event", ALICE)
    limits.check("log_event", BOB)
    assert len(limits.buckets) == 2
    clock = time.monotonic() + ratelimit.PRUNE_EVERY + 20
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: clock)
    limits.check("log_event", BOB)
    assert list(limits.buckets) == [("log_event", BOB)]


def kill_repeatedly(home: Path, args: list[str], rng: random.Random, kills: int = 6) -> int:
    """Runs the command until it ends by itself: the first `kills` runs are SIGKILLed at a
    random moment of a whole run (timed first on a copy of the home), if still running
    then; returns how many were."""
    copy = home.parent / "timing-copy"
    shutil.copytree(home, copy)
    started = time.monotonic()
    cli(copy, *args)
    whole = time.monotonic() - started
    shutil.rmtree(copy)
    killed = 0
    for attempt in range(kills + 1):
        proc = subprocess.Popen(
            [sys.executable, "-m", "activitybi", *args],
            env=env(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # early enough that a run resuming a killed one (less left to do) is still cut short
            proc.wait(timeout=whole * rng.uniform(0.15, 0.6) if attempt < kills else 300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
            continue
        assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
        return killed
    raise AssertionError("the last run did not finish")


@pytest.mark.slow
def test_retention_killed_at_random_then_completed_loses_and_doubles_nothing(_home: Path) -> None:
    ages = [*range(95, 400, 9), 1, 2]
    with Queue(str(config.Home(_home).queue), max_pending=1_000_000) as q:
        for age in ages:
            q.append_many(events(ALICE if age % 2 else BOB, "r", 4000, [age]))
    upload(_home)
    total = 4000 * len(ages)
    kills = kill_repeatedly(_home, ["retention", "run"], random.Random(5))
    assert kills >= 3
    assert query(_home, "SELECT count(*), count(DISTINCT activity_id) FROM claude_stream_all") == [
        (total, total)
    ]
    glob = str(config.Home(_home).archive / "stream-*.parquet")
    table = query(_home, "SELECT count(*) FROM claude_stream")[0][0]
    archived = query(_home, f"SELECT count(*), count(DISTINCT activity_id) FROM read_parquet('{glob}')")[0]
    assert table == 8000 and archived == (total - 8000, total - 8000)
    assert not list(config.Home(_home).archive.glob(".*"))  # no temporary file left


def build_everything(home: Path, s3_on: bool) -> None:
    """Both customers in every place the tool keeps data."""
    paths = config.Home(home)
    ages = [150, 120, 20, 0]
    with Queue(str(paths.queue)) as q:
        q.append_many(events(ALICE, "alice", 40, ages) + events(BOB, "bob", 40, ages))
        q.append({"activity": "bad", "customer": ALICE, "feature_json": ["uniq-alice-quarantined"]})
        q.append(
            {
                "activity": "learned_insight",
                "customer": ALICE,
                "feature_json": {"subject": "repo", "metric": "m", "value": "uniq-alice-insight"},
            }
        )
    upload(home)
    wh = DuckDBWarehouse(paths.warehouse)
    retention.run(wh, home, config.Settings.from_env({"ACTIVITYBI_RETENTION_DAYS": "90"}), NOW)
    paths.context.mkdir(parents=True)
    refresh_context(wh, paths.context)
    for customer in (ALICE, BOB):
        wh.execute(
            "INSERT INTO query_audit VALUES (?, ?, 'x', 'h', 'q', 1, 1, 1.0, 'succeeded', ?)",
            [f"t-{customer[:3]}", customer, NOW],
        )
    wh.close()
    store = TicketStore(paths.tickets)
    TICKETS.update({ALICE: ulid(), BOB: ulid()})
    for customer in (ALICE, BOB):
        t = Ticket(TICKETS[customer], customer, "x", {"q": f"uniq-{customer[:3]}-ticket"}, "h", 1, "tag")
        store.save(t)
        store.save_result(t.ticket_id, {"rows": [{"who": customer}]})
        ArtifactStore.from_env(home).put(
            customer, f"uniq-{customer[:3]}-card {customer}".encode(), "text/html"
        )
        MemoryJournal(paths.memory).append(
            customer, {"customer_id": customer, "value": f"uniq-{customer[:3]}-j"}
        )
    paths.logs.mkdir(parents=True, exist_ok=True)
    (paths.logs / "server.log").write_text(f"served {ALICE}\nserved {BOB}\n")
    with Queue(str(paths.queue)) as q:  # not uploaded yet: forget drains these first
        q.append_many(events(ALICE, "alice-late", 5, [0]) + events(BOB, "bob-late", 5, [0]))
    if os.environ.get("REDIS_URL"):
        tier = RedisTier(os.environ["REDIS_URL"])
        for customer in (ALICE, BOB):
            tier.put(customer, 1, orjson.dumps({"customer": customer}))
        tier.close()
    assert s3_on == bool(os.environ.get("ACTIVITYBI_ARTIFACTS_S3"))


def check_forgotten(home: Path) -> None:
    leftovers = files_containing(home, [ALICE.encode(), b"uniq-alice"])
    assert leftovers == []
    bob_rows = "SELECT count(*) FROM claude_stream_all WHERE customer = ?"
    assert query(home, bob_rows, [BOB]) == [(40 * 4 + 5,)]
    assert query(home, bob_rows, [ALICE]) == [(0,)]
    h = secret.keyed_hash(ALICE, home)
    assert query(
        home, "SELECT template, outcome FROM query_audit WHERE customer_id = ? ORDER BY template", [h]
    ) == [
        ("forget", "erased"),
        ("x", "succeeded"),
    ]
    assert query(home, "SELECT count(*) FROM insight_atoms WHERE customer_id = ?", [ALICE]) == [(0,)]
    paths = config.Home(home)
    kept = TicketStore(paths.tickets)
    assert kept.get(TICKETS[ALICE]) is None and kept.get(TICKETS[BOB]) is not None
    assert [a.customer_id for a in ArtifactStore.from_env(home).list()] == [BOB]
    assert MemoryJournal(paths.memory).version(BOB) > 0
    assert not list(paths.lifecycle.glob("forget-*"))


@pytest.fixture
def s3_bucket(s3: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # noqa: F811
    import boto3

    boto3.client("s3").create_bucket(Bucket="cards")
    monkeypatch.setenv("ACTIVITYBI_ARTIFACTS_S3", "s3://cards/prod")
    yield "cards"


@pytest.mark.redis
def test_forget_removes_every_byte_and_keeps_everyone_else(
    _home: Path,
    redis_server: RedisServer,  # noqa: F811
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    monkeypatch.setenv("REDIS_URL", redis_server.url)
    build_everything(_home, s3_on=True)
    assert files_containing(_home, [ALICE.encode()])  # the proof below proves something
    out = cli(_home, "forget", "--customer", ALICE, "--yes").stdout
    assert "warehouse claude_stream: 86" in out and "archive rows: 80" in out
    assert "redis keys: 1" in out and "artifacts (S3): 1" in out
    check_forgotten(_home)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert len(keys) == 1
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key=keys[0])["Body"].read()
    assert BOB.encode() in body
    tier = RedisTier(redis_server.url)
    assert tier.get(ALICE) is None and tier.get(BOB) is not None
    tier.close()


@pytest.mark.slow
def test_forget_killed_at_random_then_completed(_home: Path) -> None:
    build_everything(_home, s3_on=False)
    kills = kill_repeatedly(_home, ["forget", "--customer", ALICE, "--yes"], random.Random(3))
    assert kills >= 3
    check_forgotten(_home)


@pytest.mark.slow
def test_a_server_running_during_forget_keeps_working_and_loses_nothing(_home: Path, tmp_path: Path) -> None:
    import anyio

    from tests.mcp_clients import free_port, http_session

    port = free_port()
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok-a": ALICE, "tok-b": BOB}))
    _home.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "activitybi", "serve", "--http", "--port", str(port), "--tokens", str(tokens)],
        env=env(
            _home,
            ACTIVITYBI_QUEUE_ROTATE_SECS="1",
            ACTIVITYBI_EVENTS_PER_SECOND="100000",
            ACTIVITYBI_INITIALIZE_PER_MINUTE="6000",  # 20 sessions in a row
        ),
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    bob_notes: list[str] = []

    async def log(token: str, note: str) -> None:
        async with http_session(url, token) as s:
            result = await s.call_tool(
                "log_event", {"activity": "asked_question", "feature_json": {"note": note}}
            )
            assert not result.is_error

    async def run() -> None:
        for i in range(20):
            await log("tok-a", f"uniq-alice-live-{i}")
        async with http_session(url, "tok-b") as b:
            forget = await anyio.to_thread.run_sync(
                lambda: subprocess.Popen(
                    [sys.executable, "-m", "activitybi", "forget", "--customer", ALICE, "--yes"],
                    env=env(_home, ACTIVITYBI_QUEUE_ROTATE_SECS="1"),
                    stdout=subprocess.PIPE,
                )
            )
            while forget.poll() is None or len(bob_notes) < 200:
                note = f"bob-live-{len(bob_notes)}"
                result = await b.call_tool(
                    "log_event", {"activity": "asked_question", "feature_json": {"note": note}}
                )
                assert not result.is_error
                bob_notes.append(note)
                ctx = orjson.loads(str((await b.call_tool("get_context", {})).content[0].text))  # type: ignore[union-attr]
                assert ctx["customer"] == BOB
            assert forget.returncode == 0 and forget.stdout is not None
            receipt = forget.stdout.read()
            assert b"warehouse claude_stream: 40" in receipt, receipt  # 20 events, 20 tool calls

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        anyio.run(run)
    finally:
        server.terminate()
        server.wait(30)
    upload(_home)  # what the owner had not loaded when the server stopped
    assert files_containing(_home, [ALICE.encode(), b"uniq-alice"]) == []
    got = query(
        _home,
        "SELECT feature_json->>'note' FROM claude_stream WHERE customer = ? AND activity = 'asked_question'",
        [BOB],
    )
    assert sorted(r[0] for r in got) == sorted(bob_notes)


@pytest.mark.snowflake
def test_snowflake_retention_and_forget_against_fakesnow(tmp_path: Path, _home: Path) -> None:
    from activitybi.owner import forget
    from activitybi.warehouse.snowflake import SnowflakeWarehouse
    from tests.test_snowflake import FakeSnowServer, _kwargs, row

    server = FakeSnowServer()
    server.start()
    try:
        wh = SnowflakeWarehouse(_kwargs(server, "TLIFECYCLE"), emulator=True)
        wh.init()
        old, new = NOW - dt.timedelta(days=200), NOW - dt.timedelta(days=1)
        rows = [row(f"01A{i}", base=old, customer=ALICE) for i in range(3)]
        rows += [row(f"01B{i}", base=new, customer=ALICE) for i in range(2)]
        rows += [row(f"01C{i}", base=old, customer=BOB) for i in range(4)]
        assert wh.load(rows, "q", None) == 9
        state = tmp_path / "state"
        cutoff = NOW - dt.timedelta(days=90)
        with pytest.raises(Exception):  # noqa: B017 - fakesnow has no stages: nothing may go
            retention.archive_snowflake(wh, state, cutoff, "@archive_stage")
        assert wh.execute("SELECT count(*) FROM claude_stream").rows[0][0] == 9
        assert (state / retention.UNLOAD_FILE).exists()  # the rerun deletes the same rows
        assert retention.archive_snowflake(wh, state, cutoff, None) == 7
        assert not (state / retention.UNLOAD_FILE).exists()
        receipt = forget.Receipt("E1", secret.keyed_hash(ALICE))
        forget.erase_rows(wh, ALICE, receipt.customer_hash, receipt)
        assert receipt.removed["warehouse claude_stream"] == 2
        assert wh.execute("SELECT count(*) FROM claude_stream WHERE customer = ?", [ALICE]).rows[0][0] == 0
        wh.close()
    finally:
        server.stop()
