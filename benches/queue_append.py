"""Queue figures for docs/benchmarks.md, each against a baseline measured in this run.

1. ``Queue.append(dict)`` against plain Python ``os.write(fd, orjson.dumps(e) + b"\\n")``
   on the same events (the baseline also fills activity_id and ts, as append does).
2. ``append_many`` of 1,000-event batches: events/s.
3. A durable append's p95 with 4 threads appending at once, against one bare
   ``os.fdatasync`` after a small write, both on the same filesystem.
5. ``Queue.append(dict)`` with the default redaction policy against the same append without
   a redactor, in interleaved rounds (the median of the rounds' time ratios): the typical
   event (nothing to redact; its customer is an e-mail address, which is kept), and one
   whose feature_json holds an e-mail address to hash.
4. With ``--baseline-core SO``: ``Queue.append(dict)`` of this build against another build
   of ``activitybi._core`` loaded into the same process (e.g. the version before line
   checksums), in interleaved rounds: the median of the rounds' time ratios.

Run: python benches/queue_append.py [--events N] [--dir DIR] [--baseline-core SO]
Baseline build for 4 (the commit before checksums, c716e5a):
  mkdir /tmp/base && git archive c716e5a rust Cargo.toml Cargo.lock benches/core.rs | tar -x -C /tmp/base
  (cd /tmp/base && PYO3_PYTHON=python3 cargo build --release --lib --features pyo3/extension-module)
  python benches/queue_append.py --baseline-core /tmp/base/target/release/lib_core.so
Caution: a library built that way ran about 15% slower than the same Rust sources built by
`maturin develop --release` (measured Nov 29: c716e5a's cargo build against 117ad09's maturin
build, `rust/` identical), which hides a regression of that size. Prefer the `_core*.so` of
a worktree of the baseline commit built with `maturin develop --release` in its own venv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from activitybi import Queue, Redactor, ulid


def make_events(n: int) -> list[dict[str, object]]:
    return [
        {
            "activity": "called_tool",
            "customer": "ana@example.com",
            "feature_json": {"tool": "get_context", "latency_ms": 0.08, "outcome": "ok", "n": i},
            "_session_id": "s-42",
        }
        for i in range(n)
    ]


def best_of(runs: int, fn: object) -> float:
    return min(fn() for _ in range(runs))  # type: ignore[operator]


def bench_append(root: Path, events: list[dict[str, object]]) -> tuple[float, float]:
    n = len(events)

    def ours() -> float:
        d = root / f"q-{ulid()}"
        with Queue(str(d), max_pending=10 * n) as q:
            append = q.append
            t = time.perf_counter()
            for e in events:
                append(e)
            el = time.perf_counter() - t
        shutil.rmtree(d)
        return el

    def plain() -> float:
        path = root / f"plain-{ulid()}.ndjson"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        dumps, write, now = orjson.dumps, os.write, dt.datetime.now
        t = time.perf_counter()
        for e in events:
            line = {
                "activity_id": ulid(),
                "ts": now(dt.UTC).isoformat(timespec="milliseconds"),
                **e,
            }
            write(fd, dumps(line) + b"\n")
        el = time.perf_counter() - t
        os.close(fd)
        path.unlink()
        return el

    def plain_bare() -> float:
        path = root / f"bare-{ulid()}.ndjson"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        dumps, write = orjson.dumps, os.write
        t = time.perf_counter()
        for e in events:
            write(fd, dumps(e) + b"\n")
        el = time.perf_counter() - t
        os.close(fd)
        path.unlink()
        return el

    o, p, b = best_of(5, ours), best_of(5, plain), best_of(5, plain_bare)
    print(f"append(dict)            : {n / o:12,.0f} events/s  ({o / n * 1e6:.2f} µs/event)")
    print(
        f"orjson + os.write (+ids): {n / p:12,.0f} events/s  ({p / n * 1e6:.2f} µs/event)"
        f"  -> append is {p / o:.2f}x faster"
    )
    print(
        f"orjson + os.write (bare): {n / b:12,.0f} events/s  ({b / n * 1e6:.2f} µs/event)"
        f"  -> append is {b / o:.2f}x faster"
    )
    return p / o, b / o


def bench_append_many(root: Path, events: list[dict[str, object]]) -> float:
    batches = [events[i : i + 1000] for i in range(0, len(events), 1000)]

    def run() -> float:
        d = root / f"m-{ulid()}"
        with Queue(str(d), max_pending=10 * len(events)) as q:
            t = time.perf_counter()
            for b in batches:
                q.append_many(b)
            el = time.perf_counter() - t
        shutil.rmtree(d)
        return el

    el = best_of(5, run)
    rate = len(events) / el
    print(f"append_many(1000)       : {rate:12,.0f} events/s")
    return rate


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else xs[0]


def bench_durable(root: Path, per_thread: int = 200) -> float:
    path = root / "bare.dat"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    bare = []
    for _ in range(per_thread):
        os.write(fd, b'{"activity":"x"}\n')
        t = time.perf_counter()
        os.fdatasync(fd)
        bare.append(time.perf_counter() - t)
    os.close(fd)
    d = root / f"d-{ulid()}"
    lat: list[float] = []
    with Queue(str(d), max_pending=1_000_000, fsync_interval_ms=1000) as q:

        def worker() -> None:
            mine = []
            for _ in range(per_thread):
                t = time.perf_counter()
                q.append({"activity": "durable"}, durable=True)
                mine.append(time.perf_counter() - t)
            lat.extend(mine)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        fsyncs = q.stats()["fsyncs"]
    b95, d95 = pct(bare, 95), pct(lat, 95)
    print(f"bare fdatasync          : p50 {pct(bare, 50) * 1e3:.3f} ms  p95 {b95 * 1e3:.3f} ms")
    print(
        f"durable append, 4 thr.  : p50 {pct(lat, 50) * 1e3:.3f} ms  p95 {d95 * 1e3:.3f} ms"
        f"  -> {d95 / b95:.2f}x bare p95; {4 * per_thread} appends shared {fsyncs} fdatasyncs"
    )
    return d95 / b95


def load_core(path: Path) -> Any:
    """Another build of the extension, as module ``baseline._core`` (its init is ``PyInit__core``)."""
    spec = importlib.util.spec_from_file_location("baseline._core", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_against_build(root: Path, events: list[dict[str, object]], so: Path, rounds: int = 31) -> float:
    other = load_core(so).Queue
    n = min(len(events), 50_000)

    def run(queue_cls: Any) -> float:
        d = root / f"q-{ulid()}"
        with queue_cls(str(d), max_pending=10 * n) as q:
            append = q.append
            t = time.perf_counter()
            for e in events[:n]:
                append(e)
            el = time.perf_counter() - t
        shutil.rmtree(d)
        return el

    ours, theirs, ratios = [], [], []
    for i in range(rounds):
        if i % 2:
            b, a = run(other), run(Queue)
        else:
            a, b = run(Queue), run(other)
        ours.append(a)
        theirs.append(b)
        ratios.append(a / b)
    r = statistics.median(ratios)
    print(
        f"append(dict) vs {so.name}: {statistics.median(ours) / n * 1e6:.3f} µs against "
        f"{statistics.median(theirs) / n * 1e6:.3f} µs per event (medians)  -> ratio {r:.3f} "
        f"(median of {rounds} interleaved rounds of {n:,}; best {min(ours) / min(theirs):.3f})"
    )
    return r


def bench_redaction(root: Path, events: list[dict[str, object]], rounds: int = 31) -> float:
    red = Redactor("", os.urandom(32))  # the default policy
    n = min(len(events), 50_000)
    dirty = [{**e, "feature_json": {**e["feature_json"], "to": "bob@example.org"}} for e in events[:n]]  # type: ignore[dict-item]

    def run(batch: list[dict[str, object]], redactor: Redactor | None) -> float:
        d = root / f"r-{ulid()}"
        with Queue(str(d), max_pending=10 * n, redactor=redactor) as q:
            append = q.append
            t = time.perf_counter()
            for e in batch:
                append(e)
            el = time.perf_counter() - t
        shutil.rmtree(d)
        return el

    def ratio(batch: list[dict[str, object]]) -> tuple[float, float, float]:
        ours, plain, ratios = [], [], []
        for i in range(rounds):
            if i % 2:
                b, a = run(batch, None), run(batch, red)
            else:
                a, b = run(batch, red), run(batch, None)
            ours.append(a)
            plain.append(b)
            ratios.append(a / b)
        return statistics.median(ratios), statistics.median(ours) / n, statistics.median(plain) / n

    r, a, b = ratio(events[:n])
    print(
        f"append(dict), default policy, nothing to redact: {a * 1e6:.3f} µs against {b * 1e6:.3f} µs "
        f"without  -> ratio {r:.3f} (median of {rounds} interleaved rounds of {n:,})"
    )
    r2, a2, b2 = ratio(dirty)
    print(
        f"append(dict), default policy, an e-mail to hash : {a2 * 1e6:.3f} µs against {b2 * 1e6:.3f} µs "
        f"without  -> ratio {r2:.3f}"
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--dir", type=Path, default=None, help="filesystem to measure on")
    ap.add_argument("--baseline-core", type=Path, default=None, help="another build of _core to compare")
    ap.add_argument("--only-baseline", action="store_true", help="run figure 4 alone")
    ap.add_argument("--only-redaction", action="store_true", help="run figure 5 alone")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="abi-bench-", dir=args.dir))
    try:
        events = make_events(args.events)
        if args.only_redaction:
            bench_redaction(root, events)
            return
        if not args.only_baseline:
            bench_redaction(root, events)
            bench_append(root, events)
            bench_append_many(root, events)
            bench_durable(root)
        if args.baseline_core is not None:
            bench_against_build(root, events, args.baseline_core)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
