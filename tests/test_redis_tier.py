"""Tier 2 against a real redis-server: round trips, version order, and Redis killed,
restarted and frozen in the middle of a test without the caller ever noticing."""

# The imported fixture is redefined by every test's parameter of the same name:
# ruff: noqa: F811

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import redis

from activitybi.memory.redis_tier import KEY_PREFIX, RedisTier, from_env
from tests.redis_server import RedisServer, free_port, redis_server  # noqa: F401

pytestmark = pytest.mark.redis

T = TypeVar("T")
FAST = 0.050  # every call, whatever Redis is doing
BACKOFF = 0.2  # the breaker's first pause in these tests
PAYLOAD = b'{"customer":"ada@example.com","insights":[]}'


def timed(fn: Callable[[], T]) -> T:
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    assert elapsed < FAST, f"took {elapsed * 1000:.1f} ms"
    return out


def tier(url: str) -> RedisTier:
    return RedisTier(url, backoff_initial=BACKOFF, backoff_max=1.0)


@pytest.fixture
def raw(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


def test_round_trip_and_key_hides_the_customer(redis_server: RedisServer, raw: redis.Redis) -> None:
    t = tier(redis_server.url)
    assert t.get("ada@example.com") is None
    assert t.put("ada@example.com", 7, PAYLOAD)
    assert t.get("ada@example.com") == (7, PAYLOAD)
    assert t.get("grace@example.com") is None
    [key] = raw.keys("*")
    assert key == (KEY_PREFIX + hashlib.sha256(b"ada@example.com").hexdigest()).encode()
    assert b"ada" not in key and b"@" not in key
    assert 3590 < raw.ttl(key) <= 3600
    t.delete("ada@example.com")
    assert t.get("ada@example.com") is None
    assert raw.keys("*") == []
    stats = t.stats()
    assert stats["hits"] == 1 and stats["misses"] == 3 and stats["writes"] == 1
    assert stats["deletes"] == 1
    assert stats["errors"] == 0 and stats["skipped"] == 0 and stats["open"] == 0


def test_ttl_expires(redis_server: RedisServer) -> None:
    t = RedisTier(redis_server.url, ttl_seconds=0.05)
    t.put("ada@example.com", 1, PAYLOAD)
    assert t.get("ada@example.com") == (1, PAYLOAD)
    time.sleep(0.15)
    assert t.get("ada@example.com") is None


def test_an_older_version_never_overwrites_a_newer_one(redis_server: RedisServer) -> None:
    t = tier(redis_server.url)
    assert t.put("c", 5, b"five")
    assert not t.put("c", 3, b"three")
    assert t.get("c") == (5, b"five")
    assert t.put("c", 5, b"five again")  # same version: refreshed
    assert t.get("c") == (5, b"five again")
    big = 2**64
    assert t.put("c", big + 1, b"big+1")  # beyond a double's precision: compared exactly
    assert not t.put("c", big, b"big")
    assert t.get("c") == (big + 1, b"big+1")
    assert t.put("c", 2**128 - 1, b"max")
    with pytest.raises(ValueError):
        t.put("c", -1, b"negative")
    assert t.stats()["stale_writes"] == 2


def test_concurrent_writers_leave_the_newest(redis_server: RedisServer) -> None:
    t = tier(redis_server.url)
    versions = list(range(400))

    def writer(k: int) -> None:
        for v in versions[k::8][::-1]:  # each thread writes newest first: maximal contention
            t.put("c", v, str(v).encode())

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert t.get("c") == (399, b"399")
    assert t.stats()["errors"] == 0


def test_a_foreign_value_at_the_key_is_replaced(redis_server: RedisServer, raw: redis.Redis) -> None:
    t = tier(redis_server.url)
    raw.set(t.key("c"), b"not a hash")
    assert t.get("c") is None  # WRONGTYPE: an error, but Redis is up
    assert t.stats()["errors"] == 1 and t.stats()["open"] == 0
    assert t.put("c", 1, PAYLOAD)
    assert t.get("c") == (1, PAYLOAD)


def test_killed_redis_costs_nothing_and_comes_back(redis_server: RedisServer) -> None:
    t = tier(redis_server.url)
    assert t.put("c", 1, PAYLOAD) and t.get("c") == (1, PAYLOAD)

    redis_server.stop()
    assert timed(lambda: t.get("c")) is None  # the failure that opens the breaker
    assert timed(lambda: t.put("c", 2, PAYLOAD)) is False  # skipped
    for _ in range(100):
        assert timed(lambda: t.get("c")) is None
    timed(lambda: t.delete("c"))
    s = t.stats()
    assert s["errors"] == 1 and s["skipped"] == 102 and s["trips"] == 1 and s["open"] == 1

    time.sleep(BACKOFF * 1.2)
    assert timed(lambda: t.get("c")) is None  # the probe fails: the pause doubles
    assert t.stats()["errors"] == 2 and t.stats()["trips"] == 2
    time.sleep(BACKOFF * 1.2)
    assert timed(lambda: t.get("c")) is None
    assert t.stats()["errors"] == 2, "still within the doubled pause: skipped, not tried"

    redis_server.start()  # same port, empty (no persistence)
    time.sleep(BACKOFF * 2 * 1.2)
    assert timed(lambda: t.put("c", 3, PAYLOAD))  # probe succeeds: the breaker closes
    assert timed(lambda: t.get("c")) == (3, PAYLOAD)
    s = t.stats()
    assert s["open"] == 0 and s["errors"] == 2
    # The pause is back to its first length: a new failure skips for BACKOFF only.
    redis_server.stop()
    assert timed(lambda: t.get("c")) is None
    redis_server.start()
    time.sleep(BACKOFF * 1.2)
    skipped, misses = t.stats()["skipped"], t.stats()["misses"]
    assert timed(lambda: t.get("c")) is None  # a real miss: the restarted Redis is empty
    assert t.stats()["skipped"] == skipped and t.stats()["misses"] == misses + 1
    assert t.put("c", 4, PAYLOAD) and t.get("c") == (4, PAYLOAD)


def test_many_threads_while_redis_dies(redis_server: RedisServer) -> None:
    t = tier(redis_server.url)
    t.put("c", 1, PAYLOAD)
    slow: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            t.get("c")
            t.put("c", 1, PAYLOAD)
            slow.extend([dt] if (dt := time.perf_counter() - t0) > FAST else [])
            time.sleep(0.001)  # requests arrive; a tight loop would only measure the GIL

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for th in threads:
        th.start()
    time.sleep(0.1)
    redis_server.stop()
    time.sleep(0.3)
    redis_server.start()
    time.sleep(1.0)
    stop.set()
    for th in threads:
        th.join()
    assert slow == []
    s = t.stats()
    assert s["errors"] >= 1 and s["skipped"] > 0 and s["hits"] > 0
    assert s["open"] == 0 and t.get("c") is not None


def test_paused_redis_answers_within_the_timeout(redis_server: RedisServer) -> None:
    t = tier(redis_server.url)
    assert t.put("c", 2, b"two")
    redis_server.pause()
    # A stale writer whose command reaches Redis only after it wakes up...
    assert timed(lambda: t.put("c", 1, b"one")) is False
    assert t.stats()["errors"] == 1
    for _ in range(20):
        assert timed(lambda: t.get("c")) is None
    assert t.stats()["skipped"] == 20
    time.sleep(BACKOFF * 1.2)
    assert timed(lambda: t.get("c")) is None  # probe on a new connection: times out too
    assert t.stats()["errors"] == 2
    redis_server.resume()
    time.sleep(BACKOFF * 2 * 1.2)
    # ... cannot take the newer value back.
    assert timed(lambda: t.get("c")) == (2, b"two")
    assert t.stats()["open"] == 0


def test_redis_never_there(tmp_path: object) -> None:
    t = tier(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens here
    assert timed(lambda: t.get("c")) is None
    assert timed(lambda: t.put("c", 1, PAYLOAD)) is False
    assert t.stats()["errors"] == 1 and t.stats()["skipped"] == 1


def test_unroutable_host_is_bounded_by_the_connect_timeout() -> None:
    t = tier("redis://10.255.255.1:6379/0")  # a black hole: SYNs are never answered
    assert timed(lambda: t.get("c")) is None
    assert t.stats()["errors"] == 1


def test_from_env(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert from_env() is None and RedisTier.from_env() is None
    monkeypatch.setenv("REDIS_URL", "  ")
    assert from_env() is None
    monkeypatch.setenv("REDIS_URL", "http://127.0.0.1:6379")
    assert from_env() is None
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    t = from_env(ttl_seconds=10)
    assert t is not None and t.url == redis_server.url and t.ttl_ms == 10_000
    assert t.put("c", 1, PAYLOAD) and t.get("c") == (1, PAYLOAD)


def test_warm_connects_in_the_background(redis_server: RedisServer) -> None:
    t = tier(redis_server.url)
    timed(t.warm)
    deadline = time.monotonic() + 5
    while t._redis is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert timed(lambda: t.get("c")) is None
    assert t.stats()["misses"] == 1 and t.stats()["errors"] == 0


def test_importing_does_not_import_redis() -> None:
    code = "import sys, activitybi.memory.redis_tier; assert 'redis' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
