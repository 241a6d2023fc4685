"""Queue → uploader → DuckDB: exactly once through crashes, quarantine, drift, the view."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import orjson
import pytest

from activitybi import Queue, QueueReader, ulid
from activitybi.owner.uploader import Batch, Uploader
from activitybi.warehouse import Checkpoint, TransientError
from activitybi.warehouse.duckdb import DuckDBWarehouse


@pytest.fixture
def wh(tmp_path: Path) -> DuckDBWarehouse:
    w = DuckDBWarehouse(tmp_path / "w.duckdb")
    w.init()
    yield w
    w.close()


def count(wh: DuckDBWarehouse, sql: str = "SELECT count(*) FROM claude_stream") -> int:
    return int(wh.execute(sql).rows[0][0])


def test_init_is_idempotent(wh: DuckDBWarehouse) -> None:
    assert wh.init() == ["001_stream.sql", "002_memory.sql", "003_queries.sql", "004_customer_key.sql"]
    tables = {r[0] for r in wh.execute("SELECT table_name FROM information_schema.tables").rows}
    assert {
        "claude_stream",
        "insight_atoms",
        "context_cache",
        "artifacts",
        "query_audit",
        "claude_stream_enriched",
    } <= tables
    cols = [
        r[0]
        for r in wh.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'claude_stream' "
            "ORDER BY ordinal_position"
        ).rows
    ]
    assert cols[:8] == [
        "activity_id",
        "ts",
        "customer",
        "activity",
        "anonymous_customer_id",
        "feature_json",
        "revenue_impact",
        "link",
    ]
    assert all(c.startswith("_") for c in cols[8:])


def test_cli_init_twice(tmp_path: Path) -> None:
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "activitybi", "init"], capture_output=True, text=True, check=True
        )
        assert "001_stream.sql" in out.stdout


def test_upload_loads_everything_once_with_insights(qdir: Path, wh: DuckDBWarehouse) -> None:
    with Queue(str(qdir)) as q:
        ids = q.append_many([{"activity": "asked_question", "customer": "a@x.io"}] * 250)
        atom = q.append(
            {
                "activity": "learned_insight",
                "customer": "a@x.io",
                "feature_json": {"subject": "repo", "metric": "test_minutes", "value": 4.5},
            }
        )
        q.append({"activity": "asked_question", "activity_id": ids[0], "customer": "a@x.io"})
    up = Uploader(qdir, wh, batch_lines=100)
    stats = up.drain()
    up.close()
    assert stats.read == 252 and stats.loaded == 251 and stats.duplicates == 1
    assert count(wh) == 251
    assert wh.execute("SELECT atom_id, subject, metric, value::DOUBLE FROM insight_atoms").rows == [
        (atom, "repo", "test_minutes", 4.5)
    ]
    assert wh.checkpoint(up.queue_id) is not None
    with QueueReader(str(qdir)) as r:
        assert r.pending() == 0


class CountingReads(Uploader):
    reads = 0

    def _read(self, start: Checkpoint) -> Batch:
        self.reads += 1
        return super()._read(start)


def test_a_batch_read_ahead_and_not_loaded_is_read_again(qdir: Path, wh: DuckDBWarehouse) -> None:
    """`drain` reads and stages the next batch while one loads; stopped after the first
    batch, it leaves the one it read ahead unacknowledged, and the next drain loads it."""
    with Queue(str(qdir)) as q:
        ids = q.append_many([{"activity": "asked_question", "customer": f"c{i}"} for i in range(250)])
    up = CountingReads(qdir, wh, batch_lines=100, bulk_lines=1)  # bulk_lines=1: all staged
    first = up.drain(on_batch=lambda n: up.stop.set())
    assert first.loaded == 100 and up.reads == 2 and count(wh) == 100 and up.pending() == 150
    up.stop.clear()
    assert up.drain().loaded == 250 and up.stats.duplicates == 0
    up.close()
    assert {r[0] for r in wh.execute("SELECT activity_id FROM claude_stream").rows} == set(ids)


def test_corrupt_line_is_quarantined_and_neighbours_load(
    qdir: Path, wh: DuckDBWarehouse, tmp_path: Path
) -> None:
    qdir.mkdir()
    good = [
        orjson.dumps({"activity": "a", "activity_id": f"g{i}", "ts": "2026-01-01T00:00:00Z"})
        for i in range(3)
    ]
    bad = [
        b"{not json",
        orjson.dumps({"activity": "a", "activity_id": "b1", "ts": "yesterday"}),
        orjson.dumps(
            {
                "activity": "a",
                "activity_id": "b2",
                "ts": "2026-01-01T00:00:00Z",
                "feature_json": [1, 2],
            }
        ),
        orjson.dumps({"activity_id": "b3", "ts": "2026-01-01T00:00:00Z"}),
    ]
    lines = [good[0], bad[0], good[1], bad[1], bad[2], bad[3], good[2]]
    (qdir / f"{ulid()}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    qfile = tmp_path / "q.jsonl"
    up = Uploader(qdir, wh, quarantine_file=qfile)
    stats = up.drain()
    up.close()
    assert stats.quarantined == 4 and stats.loaded == 3
    assert sorted(r[0] for r in wh.execute("SELECT activity_id FROM claude_stream").rows) == [
        "g0",
        "g1",
        "g2",
    ]
    records = [orjson.loads(x) for x in qfile.read_bytes().splitlines()]
    assert [r["line"].encode() for r in records] == bad
    reasons = " | ".join(r["reason"] for r in records)
    assert "not JSON" in reasons and "ISO-8601" in reasons and "feature_json" in reasons
    assert "activity" in reasons


def test_schema_drift_is_kept_and_reported(qdir: Path, wh: DuckDBWarehouse) -> None:
    with Queue(str(qdir)) as q:
        q.append(
            {
                "activity": "a",
                "customer": 42,
                "revenue_impact": "1.5",
                "surprise": {"x": 1},
                "feature_json": {"k": 1},
            }
        )
        q.append({"activity": "b", "feature_json": {"surprise": "taken"}, "surprise": "new"})
    up = Uploader(qdir, wh)
    stats = up.drain()
    up.close()
    assert stats.drifted == 2 and stats.quarantined == 0
    assert any("surprise" in k for k in stats.drift_reasons)
    rows = dict(wh.execute("SELECT activity, feature_json FROM claude_stream").rows)
    assert orjson.loads(rows["a"]) == {"k": 1, "surprise": {"x": 1}}
    assert orjson.loads(rows["b"]) == {"surprise": "taken", "_extra": {"surprise": "new"}}
    assert wh.execute("SELECT customer, revenue_impact FROM claude_stream WHERE activity = 'a'").rows == [
        ("42", 1.5)
    ]


def test_occurrence_and_repeated_at_with_ties_and_late_arrivals(wh: DuckDBWarehouse, qdir: Path) -> None:
    def ev(aid: str, ts: str, customer: str | None = "c1", anon: str | None = None) -> dict[str, object]:
        return {
            "activity": "visited_page",
            "activity_id": aid,
            "ts": ts,
            "customer": customer,
            "anonymous_customer_id": anon,
        }

    first = [
        ev("b", "2026-01-01T10:00:00Z"),
        ev("a", "2026-01-01T10:00:00Z"),
        ev("c", "2026-01-01T12:00:00Z"),
        ev("x", "2026-01-01T11:00:00Z", None, "anon-1"),
    ]
    late = [ev("d", "2026-01-01T09:00:00Z"), ev("y", "2026-01-01T09:30:00Z", None, "anon-1")]
    with Queue(str(qdir)) as q:
        q.append_many(first)
    up = Uploader(qdir, wh)
    up.drain()
    with Queue(str(qdir)) as q:
        q.append_many(late)
    up.drain()
    up.close()
    got = {
        r[0]: (r[1], r[2])
        for r in wh.execute(
            "SELECT activity_id, activity_occurrence, strftime(activity_repeated_at, '%H:%M') "
            "FROM claude_stream_enriched"
        ).rows
    }
    assert got == {
        "d": (1, "10:00"),  # the late arrival comes first and points at the next one
        "a": (2, "10:00"),  # a tie on ts is ordered by activity_id: a before b
        "b": (3, "12:00"),
        "c": (4, None),
        "y": (1, "11:00"),  # no customer: partitioned by anonymous_customer_id
        "x": (2, None),
    }


UPLOAD_CHILD = """
import sys
from pathlib import Path
from activitybi.owner.uploader import Uploader
from activitybi.warehouse.duckdb import DuckDBWarehouse
wh = DuckDBWarehouse(sys.argv[2]); wh.init()
up = Uploader(Path(sys.argv[1]), wh, batch_lines=int(sys.argv[3]))
print("ready", flush=True)
up.drain()
"""


@pytest.mark.slow
def test_sigkill_uploader_anywhere_still_exactly_once(qdir: Path, tmp_path: Path) -> None:
    n = 100_000
    with Queue(str(qdir), rotate_bytes=256 * 1024, max_pending=n) as q:
        for i in range(0, n, 1000):
            q.append_many([{"activity": "k", "customer": "c", "i": i + j} for j in range(1000)])
    db = tmp_path / "k.duckdb"
    rng = random.Random(11)
    kills = 0
    for _ in range(40):  # until an uploader finishes the drain by itself
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                UPLOAD_CHILD,
                str(qdir),
                str(db),
                str(rng.choice([500, 2000, 5000])),
            ],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.02 + rng.random() * 0.2)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 5
    subprocess.run(
        [sys.executable, "-c", UPLOAD_CHILD, str(qdir), str(db), "5000"],
        check=True,
        capture_output=True,
    )
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute(
        "SELECT count(*), count(DISTINCT activity_id), count(DISTINCT feature_json->>'i') FROM claude_stream"
    ).fetchone() == (n, n, n)
    con.close()


@pytest.mark.slow
def test_warehouse_busy_then_back(qdir: Path, tmp_path: Path) -> None:
    """Another process holds the DuckDB file: the uploader retries and then catches up."""
    db = tmp_path / "busy.duckdb"
    DuckDBWarehouse(db).init()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
            "print('held', flush=True); time.sleep(float(sys.argv[2]))",
            str(db),
            "2.5",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    with pytest.raises(TransientError, match="busy"):
        DuckDBWarehouse(db)

    class ReopeningDuckDB:
        """Opens the file per call, so a lock held elsewhere surfaces as TransientError."""

        kind = "duckdb"

        def _with(self, fn):  # type: ignore[no-untyped-def]
            w = DuckDBWarehouse(db)
            try:
                return fn(w)
            finally:
                w.close()

        def checkpoint(self, qid):  # type: ignore[no-untyped-def]
            return self._with(lambda w: w.checkpoint(qid))

        def load(self, rows, qid, cp):  # type: ignore[no-untyped-def]
            return self._with(lambda w: w.load(rows, qid, cp))

    with Queue(str(qdir)) as q:
        q.append_many([{"activity": "during_outage", "i": i} for i in range(1000)])
    up = Uploader(qdir, ReopeningDuckDB())  # type: ignore[arg-type]
    t = time.monotonic()
    stats = up.drain()
    up.close()
    holder.wait()
    assert stats.retries >= 1 and stats.loaded == 1000
    assert time.monotonic() - t >= 1.0
    w = DuckDBWarehouse(db)
    assert count(w) == 1000
    w.close()


def test_rows_the_warehouse_refuses_are_isolated_and_quarantined(qdir: Path, tmp_path: Path) -> None:
    """A real DuckDB whose stream table has a stricter CHECK than ours refuses one row."""
    db = tmp_path / "strict.duckdb"
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE claude_stream (activity_id VARCHAR, ts TIMESTAMP NOT NULL, "
        "customer VARCHAR, activity VARCHAR NOT NULL CHECK (length(activity) < 40), "
        "anonymous_customer_id VARCHAR, feature_json JSON, revenue_impact DOUBLE, link VARCHAR, "
        "_session_id VARCHAR, _source VARCHAR, _ingested_at TIMESTAMP DEFAULT now(), "
        "_customer_key VARCHAR NOT NULL, PRIMARY KEY (_customer_key, activity_id))"
    )
    con.close()
    wh = DuckDBWarehouse(db)
    wh.init()
    with Queue(str(qdir)) as q:
        q.append_many([{"activity": "fine_event", "i": i} for i in range(40)])
        q.append({"activity": "a_name_far_too_long_for_this_strict_warehouse_table"})
        q.append_many([{"activity": "fine_event", "i": i} for i in range(40, 80)])
    qfile = tmp_path / "q.jsonl"
    up = Uploader(qdir, wh, quarantine_file=qfile)
    stats = up.drain()
    up.close()
    assert stats.loaded == 80 and stats.quarantined == 1
    (record,) = [orjson.loads(x) for x in qfile.read_bytes().splitlines()]
    assert "warehouse refused" in record["reason"] and "far_too_long" in record["line"]
    assert count(wh) == 80
    wh.close()
