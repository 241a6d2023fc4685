"""The uploader's fast path (DuckDB parses clean lines itself) loads exactly what the drift
rule in Python loads, for every kind of line, and leaves the rare ones to Python."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from activitybi import QueueReader, ulid
from activitybi.events import StreamRow
from activitybi.owner.uploader import Uploader
from activitybi.warehouse import Checkpoint, LineLoader, Lines
from activitybi.warehouse.duckdb import DuckDBWarehouse

TS = "2026-03-04T05:06:07.089Z"


def line(**event: Any) -> bytes:
    return orjson.dumps({"activity_id": ulid(), "ts": TS, "activity": "asked_question", **event})


CLEAN = [
    line(customer="a@x.io", _session_id="s1", feature_json={"tool": "q", "n": 3, "x": 0.07}),
    line(customer="é ü 東京", link="https://x.io/a?b=c", revenue_impact=12.5, _source="hook"),
    line(anonymous_customer_id="anon-1", feature_json={"list": [1, 2, "three"], "flag": True}),
    line(customer="b@x.io", revenue_impact=-3),
    line(customer="c@x.io", feature_json={}),
    line(customer='quote " and \\ backslash\n newline'),  # escapes kept as they were
]
SLOW = [
    line(customer=42),  # drift: number to text
    line(revenue_impact="1.5"),  # drift: numeric string
    line(surprise={"x": 1}),  # drift: unknown key
    line(feature_json='{"k": 1}'),  # drift: JSON text
    line(customer=None, link=None),  # explicit nulls
    line(feature_json={"nested": {"a": 1}}),
    line(
        activity="learned_insight",
        customer="a@x.io",
        feature_json={"subject": "s", "metric": "m", "value": 1},
    ),
    orjson.dumps({"activity_id": "fixed-1", "activity": "a", "ts": "2026-01-01T00:00:00Z"}),  # no millis
    b'{"activity_id":"dup-top","activity":"a","activity":"b","ts":"' + TS.encode() + b'"}',
    b'{"activity_id":"dup-nested","activity":"a","ts":"' + TS.encode() + b'","feature_json":{"k":1,"k":2}}',
    b'{"activity_id":"spaced", "activity":"a","ts":"' + TS.encode() + b'"}',
    b'{"activity_id":"escaped","activity":"\\u0061","ts":"' + TS.encode() + b'"}',
]
BAD = [
    b"{not json",
    b'{"activity_id":"nan","activity":"a","ts":"' + TS.encode() + b'","feature_json":{"v":NaN}}',
    b'{"activity_id":"inf","activity":"a","ts":"' + TS.encode() + b'","revenue_impact":1e999}',
    b'{"activity_id":"comma","activity":"a","ts":"' + TS.encode() + b'",}',
    b'{"activity_id":"comma2","activity":"a","ts":"' + TS.encode() + b'","feature_json":{"a":1,}}',
    b'{"activity_id":"bytes","activity":"a\xff","ts":"' + TS.encode() + b'"}',
    b'{"activity_id":"bad-ts","activity":"a","ts":"2026-02-30T00:00:00.000Z"}',
    b'{"activity_id":"","activity":"a","ts":"' + TS.encode() + b'"}',
    b'{"activity_id":"no-activity","activity":" ","ts":"' + TS.encode() + b'"}',
    b"[1, 2]",
    b'{"activity_id":"blank","activity":"\xe3\x80\x80","ts":"' + TS.encode() + b'"}',  # U+3000 only
]


class PythonOnly:
    """The same DuckDB without the fast path: every line goes through the drift rule."""

    kind = "duckdb"

    def __init__(self, wh: DuckDBWarehouse) -> None:
        self.wh = wh

    def load(self, rows: Sequence[StreamRow], queue_id: str, checkpoint: Checkpoint | None) -> int:
        return self.wh.load(rows, queue_id, checkpoint)

    def checkpoint(self, queue_id: str) -> Checkpoint | None:
        return self.wh.checkpoint(queue_id)


def joined(tmp: Path, lines: list[bytes]) -> Lines:
    """The lines as `QueueReader.read_block` hands them out, from a segment written before
    checksums (which holds lines as they are, however odd)."""
    qdir = tmp / ulid()
    qdir.mkdir()
    (qdir / f"{ulid()}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    with QueueReader(str(qdir)) as r:
        data, ends, irregular, _, _ = r.read_block(max_lines=len(lines))
    assert len(ends) == len(lines)
    return Lines(data, ends, irregular)


def upload(tmp: Path, lines: list[bytes], fast: bool) -> tuple[set[tuple[Any, ...]], list[Any], Any]:
    qdir = tmp / "queue"
    qdir.mkdir(parents=True)
    (qdir / f"{ulid()}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    wh = DuckDBWarehouse(tmp / "w.duckdb")
    wh.init()
    up = Uploader(  # bulk_lines=1: the warehouse parses even these small batches
        qdir,
        wh if fast else PythonOnly(wh),  # type: ignore[arg-type]
        quarantine_file=tmp / "q.jsonl",
        bulk_lines=1,
    )
    stats = up.drain()
    up.close()
    rows = {
        (*r[:5], None if r[5] is None else orjson.dumps(orjson.loads(r[5])), *r[6:])
        for r in wh.execute(
            "SELECT activity_id, ts, customer, activity, anonymous_customer_id, feature_json, "
            "revenue_impact, link, _session_id, _source FROM claude_stream"
        ).rows
    }
    atoms = wh.execute("SELECT atom_id, subject, metric, value FROM insight_atoms").rows
    wh.close()
    qfile = tmp / "q.jsonl"
    records = map(orjson.loads, qfile.read_bytes().splitlines() if qfile.exists() else [])
    quarantined = [(r["reason"], r["line"]) for r in records]
    return rows, [quarantined, atoms], stats


def test_fast_path_loads_what_the_drift_rule_loads(tmp_path: Path) -> None:
    lines = [x for pair in zip(SLOW + BAD, CLEAN * 5, strict=False) for x in pair]
    fast_rows, fast_rest, fast = upload(tmp_path / "fast", lines, fast=True)
    slow_rows, slow_rest, slow = upload(tmp_path / "slow", lines, fast=False)
    assert fast_rows == slow_rows
    assert sorted(fast_rest[0]) == sorted(slow_rest[0]) and fast_rest[1] == slow_rest[1]
    assert len(fast_rest[0]) == len(BAD) and len(fast_rows) == len(CLEAN) + len(SLOW)
    for key in ("read", "loaded", "duplicates", "quarantined", "drifted", "drift_reasons"):
        assert getattr(fast, key) == getattr(slow, key), key


def test_clean_lines_are_parsed_by_duckdb_and_the_rest_left_to_python(tmp_path: Path) -> None:
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    wh.init()
    assert isinstance(wh, LineLoader)
    lines = CLEAN + SLOW + BAD + [b"", b'{"activity_id":"cr","activity":"a\rb","ts":"' + TS.encode() + b'"}']
    staged = wh.stage(joined(tmp_path, lines))
    assert staged.slow == list(range(len(CLEAN), len(lines)))
    assert staged.clean == len(CLEAN)
    wh.close()


def test_a_duplicate_id_within_a_batch_keeps_the_first_line_as_python_does(tmp_path: Path) -> None:
    first = orjson.dumps({"activity_id": "same", "ts": TS, "activity": "first_one", "customer": 7})
    second = orjson.dumps({"activity_id": "same", "ts": TS, "activity": "second_one", "customer": "7"})
    for fast in (True, False):
        rows, _, stats = upload(tmp_path / str(fast), [first, second], fast=fast)
        assert [r[3] for r in rows] == ["first_one"] and stats.duplicates == 1


@pytest.mark.parametrize("already", [True, False])
def test_lines_already_loaded_are_skipped_after_a_crash(tmp_path: Path, already: bool) -> None:
    lines = CLEAN + SLOW[:3]
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    wh.init()
    if already:  # a crash after the commit and before the queue's ack re-reads the batch
        staged = wh.stage(joined(tmp_path, lines))
        assert wh.load_staged(staged, [], "q", {}) == len(CLEAN)
    staged = wh.stage(joined(tmp_path, lines))
    assert wh.load_staged(staged, [], "q", {"seg": 1}) == (0 if already else len(CLEAN))
    assert wh.checkpoint("q") == {"seg": 1}
    wh.close()


def test_an_uploader_restarted_on_a_stored_checkpoint_loads_the_rest(tmp_path: Path) -> None:
    """The second uploader starts from the checkpoint the first one stored (read on the
    warehouse's connection) and goes on through the fast path."""
    qdir = tmp_path / "queue"
    qdir.mkdir()
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    wh.init()
    for _ in range(2):
        lines = [line(customer=f"c{i}") for i in range(5)]
        (qdir / f"{ulid()}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
        up = Uploader(qdir, wh, quarantine_file=tmp_path / "q.jsonl", bulk_lines=1)
        assert up.drain().loaded == 5
        up.close()
    assert wh.execute("SELECT count(*) FROM claude_stream").rows == [(10,)]
    wh.close()
