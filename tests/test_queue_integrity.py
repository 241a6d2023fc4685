"""The queue never acknowledges lost data: its exceptions, sticky I/O failures (an
LD_PRELOAD shim fails fdatasync), the magic word of queue.state."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

import activitybi
from activitybi import ActivitybiError, Queue, QueueFull, QueueIOError, QueueReader, _core


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
