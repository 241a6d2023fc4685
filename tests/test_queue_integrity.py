"""The queue never acknowledges lost data, and never hands over a damaged line as an event:
its exceptions, sticky I/O failures (an LD_PRELOAD shim fails fdatasync), the magic word of
queue.state, and the checksum every line carries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from array import array
from pathlib import Path

import orjson
import pytest

import activitybi
from activitybi import ActivitybiError, Queue, QueueFull, QueueIOError, QueueReader, _core
from activitybi.owner.uploader import Uploader
from activitybi.warehouse import Lines
from activitybi.warehouse.duckdb import DuckDBWarehouse


def test_exception_hierarchy() -> None:
    assert issubclass(QueueFull, ActivitybiError) and issubclass(QueueIOError, ActivitybiError)
    assert issubclass(QueueIOError, OSError) and issubclass(ActivitybiError, Exception)
    for name in ("ActivitybiError", "QueueFull", "QueueIOError"):
        assert getattr(activitybi, name) is getattr(_core, name)
        assert getattr(_core, name).__module__ == "activitybi._core"
    e = QueueIOError(5, "fdatasync failed")
    assert e.errno == 5 and isinstance(e, OSError)


def test_stats_say_no_io_error(qdir: Path) -> None:
    with Queue(qdir) as q:  # a PathLike is accepted as well as a str
        q.append({"activity": "a"}, durable=True)
        assert q.stats()["io_error"] is None


def test_queue_state_magic_is_checked(qdir: Path) -> None:
    with Queue(str(qdir)) as q:
        q.append({"activity": "a"})
    state = qdir / "queue.state"
    data = bytearray(state.read_bytes())
    data[:8] = b"notmine!"
    state.write_bytes(bytes(data))
    with pytest.raises(ActivitybiError, match="not an activitybi queue state file") as e:
        Queue(str(qdir))
    assert not isinstance(e.value, OSError)
    with pytest.raises(ActivitybiError, match=r"queue\.state"):
        QueueReader(str(qdir))


SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

/* fdatasync fails with EIO once, on the first call after the file named by
   ACTIVITYBI_FAIL_FDATASYNC appears (the shim removes it), as a disk's writeback error does. */
int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *flag = getenv("ACTIVITYBI_FAIL_FDATASYNC");
    if (flag && unlink(flag) == 0) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}
"""

CHILD = textwrap.dedent(
    """
    import os, sys
    from activitybi import Queue, QueueIOError
    qdir, flag = sys.argv[1], sys.argv[2]
    q = Queue(qdir, fsync_interval_ms=3_600_000)
    q.append({"activity": "before"}, durable=True)
    open(flag, "w").close()
    try:
        q.append({"activity": "lost?"}, durable=True)
        raise SystemExit("a failed fdatasync was acknowledged")
    except QueueIOError as e:
        assert e.errno == 5, e
    assert not os.path.exists(flag)  # the shim failed it once; the disk works again
    for attempt in (lambda: q.flush(), lambda: q.append({"activity": "x"}, durable=True)):
        try:
            attempt()
            raise SystemExit("a retried fdatasync was trusted")
        except QueueIOError as e:
            assert "reopen the queue" in str(e), e
    q.append({"activity": "page cache"})  # not durable: still accepted
    why = q.stats()["io_error"]
    assert why and "fdatasync" in why and "os error 5" in why, why
    try:
        q.close()
        raise SystemExit("sealing after a failed fdatasync succeeded")
    except QueueIOError:
        pass
    q2 = Queue(qdir)  # reopened: the old segment is recovered, the new handle is healthy
    q2.append({"activity": "after"}, durable=True)
    q2.flush()
    assert q2.stats()["io_error"] is None
    q2.close()
    print("ok")
    """
)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the LD_PRELOAD shim")
def test_failed_fdatasync_is_sticky_until_reopened(qdir: Path, tmp_path: Path) -> None:
    src = tmp_path / "failsync.c"
    src.write_text(SHIM)
    lib = tmp_path / "failsync.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"], check=True)
    flag = tmp_path / "fail-next-fdatasync"
    env = {**os.environ, "LD_PRELOAD": str(lib), "ACTIVITYBI_FAIL_FDATASYNC": str(flag)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(qdir), str(flag)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    with QueueReader(str(qdir)) as r:
        lines, _ = r.read(max_lines=100)
        assert [orjson.loads(x)["activity"] for x in lines] == ["before", "lost?", "page cache", "after"]


def test_lines_carry_checksums_that_the_reader_strips(qdir: Path) -> None:
    with Queue(str(qdir)) as q:
        aid = q.append({"activity": "a", "n": 1})
    (seg,) = qdir.glob("*.ndjson")
    assert seg.stem.endswith("-v2")
    raw = seg.read_bytes()
    assert raw.startswith(b'{"_crc32c":"') and orjson.loads(raw)["activity_id"] == aid  # still JSON
    with QueueReader(str(qdir)) as r:
        (line,), _ = r.read()
        assert b"_crc32c" not in line and orjson.loads(line)["activity_id"] == aid


def test_flipped_byte_goes_to_quarantine_with_its_reason(qdir: Path, tmp_path: Path) -> None:
    with Queue(str(qdir)) as q:
        ids = [q.append({"activity": "a", "feature_json": {"amount": 100 + i}}) for i in range(5)]
    (seg,) = qdir.glob("*.ndjson")
    lines = seg.read_bytes().splitlines()
    # A bit flip that leaves the line valid JSON, with another value: "amount":102 -> 103.
    damaged = lines[2].replace(b'"amount":102', b'"amount":103')
    assert damaged != lines[2] and orjson.loads(damaged)
    lines[2] = damaged
    seg.write_bytes(b"\n".join(lines) + b"\n")
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    wh.init()
    try:
        qfile = tmp_path / "quarantine.jsonl"
        up = Uploader(qdir, wh, quarantine_file=qfile)
        stats = up.drain()
        up.close()
        assert stats.quarantined == 1 and stats.loaded == 4 and stats.read == 5
        loaded = sorted(r[0] for r in wh.execute("SELECT activity_id FROM claude_stream").rows)
        assert loaded == sorted(ids[:2] + ids[3:])
    finally:
        wh.close()
    (record,) = [orjson.loads(x) for x in qfile.read_bytes().splitlines()]
    assert record["reason"] == "checksum mismatch"
    assert record["line"].encode() == damaged
    with QueueReader(str(qdir)) as r:
        assert r.pending() == 0


def test_read_block_separates_rejected_lines(qdir: Path) -> None:
    with Queue(str(qdir)) as q:
        q.append_many([{"activity": "a", "i": i} for i in range(4)])
    (seg,) = qdir.glob("*.ndjson")
    data = bytearray(seg.read_bytes())
    raw = bytes(data).splitlines()[2]
    data[bytes(data).index(raw) + len(raw) - 3] ^= 0x01  # inside the third line's payload
    seg.write_bytes(bytes(data))
    damaged = bytes(data).splitlines()[2]
    with QueueReader(str(qdir)) as r:
        block, ends, irregular, rejected, cp = r.read_block()
        lines = list(Lines(block, ends, irregular))
        assert block == b"\n".join(lines) and [orjson.loads(x)["i"] for x in lines] == [0, 1, 3]
        assert rejected == [("checksum mismatch", damaged)] and cp == {seg.stem: len(data)}
        with pytest.raises(ActivitybiError, match=r"checksum mismatch.*read_block"):
            r.read()  # never hands a damaged line over as an event, never skips one silently
        before = {seg.stem: bytes(data).index(damaged)}
        assert r.read(max_lines=2) == (lines[:2], before)
        assert r.read_block(max_lines=2) == (b"\n".join(lines[:2]), ends[:2], [], [], before)
        assert r.read_block(before) == (lines[2], array("q", [len(lines[2])]), [], rejected, cp)
        assert r.ack(cp) == 4


def test_segments_without_checksums_are_still_read(qdir: Path) -> None:
    qdir.mkdir()
    old = qdir / "01J00000000000000000000000.ndjson"  # the previous version's name and lines
    old.write_bytes(b'{"activity":"old","activity_id":"o1"}\n')
    with Queue(str(qdir)) as q:
        new = q.append({"activity": "new"})
    with QueueReader(str(qdir)) as r:
        block, ends, irregular, rejected, _ = r.read_block()
        lines = list(Lines(block, ends, irregular))
        assert [orjson.loads(x)["activity_id"] for x in lines] == ["o1", new] and rejected == []
