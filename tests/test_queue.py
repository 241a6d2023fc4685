"""The queue as Python sees it: events, errors, rotation, durability, several processes."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from activitybi import Queue, QueueFull, QueueReader, ulid
from activitybi.warehouse import Lines
from tests.conftest import run_python


def all_lines(qdir: Path) -> list[bytes]:
    with QueueReader(str(qdir)) as r:
        out: list[bytes] = []
        cp = r.acked()
        while True:
            lines, cp = r.read(cp, max_lines=50_000)
            if not lines:
                return out
            out.extend(lines)


def segments(qdir: Path, suffix: str) -> list[Path]:
    return sorted(qdir.glob(f"*.{suffix}"))


def test_append_fills_id_and_ts(qdir: Path) -> None:
    with Queue(str(qdir)) as q:
        aid = q.append({"activity": "asked_question", "customer": "a@b.c", "feature_json": {"n": 1}})
    (line,) = all_lines(qdir)
    event = orjson.loads(line)
    assert event["activity_id"] == aid and len(aid) == 26
    assert event["activity"] == "asked_question"
    assert event["feature_json"] == {"n": 1}
    ts = event["ts"]
    assert len(ts) == 24 and ts.endswith("Z") and ts[19] == "."
    assert time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")


def test_given_id_and_ts_are_kept_and_bytes_accepted(qdir: Path) -> None:
    with Queue(str(qdir)) as q:
        assert q.append({"activity": "x", "activity_id": "mine", "ts": "2020-01-01T00:00:00.000Z"}) == "mine"
        bid = q.append(b'{"activity": "y",\n "v": [1, 2]}')
    a, b = (orjson.loads(x) for x in all_lines(qdir))
    assert a == {"activity": "x", "activity_id": "mine", "ts": "2020-01-01T00:00:00.000Z"}
    assert b["activity_id"] == bid and b["v"] == [1, 2]


def test_values_round_trip(qdir: Path) -> None:
    event = {
        "activity": "ünïcode ✓",
        "s": 'quote " backslash \\ newline \n nul \x00',
        "big": 2**63 + 5,
        "neg": -(2**63),
        "f": 0.1,
        "t": (1, None, True),
        "nested": {"a": [{"b": False}]},
    }
    with Queue(str(qdir)) as q:
        q.append(event)
    got = orjson.loads(all_lines(qdir)[0])
    expected = {**event, "t": [1, None, True]}
    assert {k: got[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("event", "error", "message"),
    [
        ({"feature_json": {}}, ValueError, "activity"),
        ({"activity": ""}, ValueError, "activity"),
        ({"activity": 5}, ValueError, "activity"),
        ({"activity": "x", "activity_id": ""}, ValueError, "activity_id"),
        ({"activity": "x", "p": "y" * (1024 * 1024)}, ValueError, "cap"),
        ({"activity": "x", "when": object()}, TypeError, "object"),
        ({"activity": "x", "f": float("nan")}, TypeError, "NaN"),
        ({"activity": "x", "i": 2**70}, TypeError, "64-bit"),
        ({"activity": "x", 1: "non-string key"}, TypeError, "key"),
        ({"activity": "x", "s": {1, 2}}, TypeError, "set"),
        (b"not json", ValueError, "JSON"),
        (b'{"no_activity": 1}', ValueError, "activity"),
        (["a", "list"], TypeError, "dict or JSON bytes"),
    ],
)
def test_bad_events_are_refused_and_leave_nothing(
    qdir: Path, event: object, error: type[Exception], message: str
) -> None:
    with Queue(str(qdir)) as q:
        q.append({"activity": "before"})
        with pytest.raises(error, match=message):
            q.append(event)  # type: ignore[arg-type]
        with pytest.raises(error):
            q.append_many([{"activity": "in_batch"}, event])  # type: ignore[list-item]
        stats = q.stats()
        q.append({"activity": "after"})
    assert stats["rejected"] == 1 + 2
    assert stats["appended"] == 1
    assert [orjson.loads(x)["activity"] for x in all_lines(qdir)] == ["before", "after"]


def test_deeply_nested_value_is_refused(qdir: Path) -> None:
    deep: list[object] = []
    for _ in range(100):
        deep = [deep]
    with Queue(str(qdir)) as q, pytest.raises(TypeError, match="nested"):
        q.append({"activity": "x", "deep": deep})


def test_rotation_by_size_seals_with_rename(qdir: Path) -> None:
    with Queue(str(qdir), rotate_bytes=4096) as q:
        ids = q.append_many([{"activity": "a", "i": i} for i in range(10)])
        for i in range(500):
            q.append({"activity": "b", "i": i})
        assert q.stats()["rotations"] >= 5
        assert len(segments(qdir, "open")) == 1
    assert segments(qdir, "open") == []
    sealed = segments(qdir, "ndjson")
    assert len(sealed) >= 6
    assert all(p.stat().st_size <= 4096 for p in sealed)
    lines = all_lines(qdir)
    assert len(lines) == 510
    assert [orjson.loads(x)["activity_id"] for x in lines[:10]] == ids


def test_idle_segment_is_sealed_by_age(qdir: Path) -> None:
    with Queue(str(qdir), rotate_secs=0.3) as q:
        q.append({"activity": "a"})
        assert len(segments(qdir, "open")) == 1
        deadline = time.monotonic() + 0.3 + 1.0  # the ticker looks every rotate_secs / 10
        while (segments(qdir, "open") or q.stats()["rotations"] < 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert segments(qdir, "open") == []
        assert len(segments(qdir, "ndjson")) == 1
        assert q.stats()["rotations"] == 1


@pytest.mark.skipif(not Path("/usr/bin/strace").exists(), reason="needs strace")
def test_sealing_syncs_data_then_renames_then_syncs_directory(qdir: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    code = (
        "import sys; from activitybi import Queue\n"
        "q = Queue(sys.argv[1], fsync_interval_ms=60_000)  # no concurrent ticker syscalls\n"
        "q.append({'activity': 'a'}); q.close()\n"
    )
    subprocess.run(
        [
            "strace",
            "-f",
            "-o",
            str(trace),
            "-e",
            "trace=fdatasync,fsync,rename,openat",
            sys.executable,
            "-c",
            code,
            str(qdir),
        ],
        check=True,
        capture_output=True,
    )
    calls = strace_calls(trace.read_text())
    rename = next(
        i for i, (name, args, _) in enumerate(calls) if name.startswith("rename") and ".ndjson" in args
    )
    assert any(name == "fdatasync" for name, _, _ in calls[:rename])
    after = calls[rename + 1 :]
    dir_open = next(i for i, (name, args, _) in enumerate(after) if name == "openat" and f'"{qdir}"' in args)
    dir_fd = after[dir_open][2]
    assert any(name == "fsync" and args == dir_fd for name, args, _ in after[dir_open:])


def strace_calls(text: str) -> list[tuple[str, str, str]]:
    """(syscall, arguments, result) per call of an `strace -f` log, joining the halves of
    a call that another thread's call interrupted (`<unfinished ...>` / `resumed>`)."""
    pending: dict[str, str] = {}
    calls = []
    for line in text.splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest.removesuffix("<unfinished ...>")
            continue
        if rest.startswith("<..."):
            rest = pending.pop(pid, "") + rest.split("resumed>", 1)[1]
        m = re.match(r"(\w+)\((.*)\)\s+=\s+(-?\w+)", rest)
        if m:
            calls.append((m.group(1), m.group(2), m.group(3)))
    return calls


def test_four_processes_share_one_directory(qdir: Path) -> None:
    code = (
        "import sys; from activitybi import Queue\n"
        "q = Queue(sys.argv[1], rotate_bytes=1 << 20, max_pending=1_000_000)\n"
        "for i in range(50_000): q.append({'activity': 'p', 'i': i, 'pid': sys.argv[2]})\n"
        "q.close()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(qdir), str(n)]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    lines = all_lines(qdir)
    assert len(lines) == 200_000
    events = [orjson.loads(x) for x in lines]
    assert len({e["activity_id"] for e in events}) == 200_000
    for n in range(4):
        mine = [e["i"] for e in events if e["pid"] == str(n)]
        assert sorted(mine) == list(range(50_000))


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_event(qdir: Path) -> None:
    code = (
        "import sys; from activitybi import Queue\n"
        "q = Queue(sys.argv[1], rotate_bytes=64 * 1024, max_pending=10_000_000)\n"
        "out = sys.stdout\n"
        "i = 0\n"
        "while True:\n"
        "    aid = q.append({'activity': 'k', 'i': i, 'pad': 'x' * (i % 300)})\n"
        "    out.write(aid + '\\n'); out.flush(); i += 1\n"
    )
    rng = random.Random(7)
    printed: list[str] = []
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", code, str(qdir)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # appending has begun (start-up is slow on a busy machine)
        time.sleep(rng.random() * 0.4)  # then a random moment of the loop
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        complete = (first + out).decode().split("\n")[:-1]  # the last piece may be cut mid-id
        assert complete, "the child printed nothing before it was killed"
        printed.extend(complete)
    found = [orjson.loads(x)["activity_id"] for x in all_lines(qdir)]
    assert set(printed) <= set(found)
    assert len(found) == len(set(found))
    assert segments(qdir, "open") == []  # every dead writer's segment was sealed


def test_torn_tail_is_quarantined_and_never_read(qdir: Path) -> None:
    qdir.mkdir()
    stem = ulid()
    whole = b'{"activity":"whole","activity_id":"w1","ts":"2026-01-01T00:00:00.000Z"}\n'
    (qdir / f"{stem}.open").write_bytes(whole + b'{"activity":"tor' + b"\0" * 4000)
    lines = all_lines(qdir)
    assert lines == [whole.rstrip(b"\n")]
    assert (qdir / f"{stem}.ndjson").read_bytes() == whole
    (torn,) = (qdir / "quarantine").iterdir()
    assert torn.read_bytes() == b'{"activity":"tor'


def test_reader_sees_open_segments_and_acks(qdir: Path) -> None:
    with Queue(str(qdir), rotate_bytes=2048) as q, QueueReader(str(qdir)) as r:
        ids = [q.append({"activity": "a", "i": i}) for i in range(100)]
        lines, cp = r.read(max_lines=30)
        assert [orjson.loads(x)["activity_id"] for x in lines] == ids[:30]
        assert r.acked() == {}
        rest, cp2 = r.read(cp)
        assert [orjson.loads(x)["activity_id"] for x in rest] == ids[30:]
        assert q.stats()["pending"] == 100
        assert r.ack(cp) == 30
        assert q.stats()["pending"] == 70
        sealed_before = len(segments(qdir, "ndjson"))
        assert r.ack(cp2) == 70
        assert q.stats()["pending"] == 0
        assert len(segments(qdir, "ndjson")) < sealed_before  # consumed sealed segments go
        assert r.read(cp2)[0] == []
        more = q.append({"activity": "later"})
        lines, _ = r.read()
        assert [orjson.loads(x)["activity_id"] for x in lines] == [more]


def test_read_block_is_the_lines_of_read_joined(qdir: Path) -> None:
    """Across sealed and open segments, in batches cut by lines or by bytes, a block holds
    what `read` returns, joined by newlines, and ends at the same checkpoint."""
    with Queue(str(qdir), rotate_bytes=2048) as q, QueueReader(str(qdir)) as r:
        q.append_many([{"activity": "a", "i": i, "s": "nul \x00" if i % 7 == 3 else "é"} for i in range(200)])
        q.append({"activity": "in the open segment"})
        for limits in ({"max_lines": 1}, {"max_lines": 37}, {"max_bytes": 1000}, {}):
            cp = r.acked()
            seen: list[bytes] = []
            while True:
                lines, want_cp = r.read(cp, **limits)
                block, ends, irregular, rejected, block_cp = r.read_block(cp, **limits)
                assert (block, list(Lines(block, ends, irregular)), irregular, rejected, block_cp) == (
                    b"\n".join(lines),
                    lines,
                    [i for i, line in enumerate(lines) if b"\\u0000" in line],
                    [],
                    want_cp,
                ), limits
                if not lines:
                    break
                seen += lines
                cp = block_cp
            assert sorted(orjson.loads(x)["activity"] for x in seen) == ["a"] * 200 + ["in the open segment"]


def test_only_one_reader(qdir: Path) -> None:
    with QueueReader(str(qdir)):
        with pytest.raises(BlockingIOError, match="already reading"):
            QueueReader(str(qdir))
        code = "import sys; from activitybi import QueueReader; QueueReader(sys.argv[1])"
        proc = subprocess.run([sys.executable, "-c", code, str(qdir)], capture_output=True, text=True)
        assert proc.returncode != 0 and "BlockingIOError" in proc.stderr


def test_queue_full_counts_every_process_and_segment(qdir: Path) -> None:
    code = (
        "import sys; from activitybi import Queue\n"
        "q = Queue(sys.argv[1], rotate_bytes=1024, max_pending=100)\n"
        "for i in range(60): q.append({'activity': 'other_process', 'i': i})\n"
        "q.close()\n"
    )
    run_python(code, str(qdir))
    with Queue(str(qdir), rotate_bytes=1024, max_pending=100) as q:
        accepted = 0
        with pytest.raises(QueueFull, match="100"):
            while True:
                q.append({"activity": "here"})
                accepted += 1
        assert accepted == 40
        with pytest.raises(QueueFull):
            q.append_many([{"activity": "batch"}] * 2)
        assert q.stats()["rejected"] == 3
        with QueueReader(str(qdir)) as r:
            _, cp = r.read(max_lines=50)
            assert r.ack(cp) == 50
        q.append_many([{"activity": "again"}] * 50)
        with pytest.raises(QueueFull):
            q.append({"activity": "over"})
        assert q.stats()["pending"] == 100


def test_durable_appends_and_flush_sync(qdir: Path) -> None:
    with Queue(str(qdir), fsync_interval_ms=60_000) as q:
        q.append({"activity": "a"})
        before = q.stats()["fsyncs"]
        q.append({"activity": "b"}, durable=True)
        assert q.stats()["fsyncs"] == before + 1
        q.append({"activity": "c"})
        q.flush()
        assert q.stats()["fsyncs"] == before + 2


def test_background_fsync_runs(qdir: Path) -> None:
    with Queue(str(qdir), fsync_interval_ms=20) as q:
        q.append({"activity": "a"})
        time.sleep(0.2)
        assert q.stats()["fsyncs"] >= 1


def test_closed_queue_refuses(qdir: Path) -> None:
    q = Queue(str(qdir))
    q.close()
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.append({"activity": "a"})


def test_pending_recounted_when_alone(qdir: Path) -> None:
    with Queue(str(qdir)) as q:
        q.append_many([{"activity": "a"}] * 7)
    os.remove(qdir / "queue.state")
    with Queue(str(qdir)) as q:
        assert q.stats()["pending"] == 7


def test_ulid_is_monotonic() -> None:
    ids = [ulid() for _ in range(10_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
