"""The Rust LRU cache: recency, TTL, counters, threads."""

from __future__ import annotations

import threading
import time

import pytest

from activitybi import LruCache


def test_get_put_delete_and_eviction() -> None:
    c: LruCache[object] = LruCache(2)
    value = {"any": ["python", "object"]}
    c.put("a", value)
    c.put("b", 2)
    assert c.get("a") is value
    c.put("c", 3)  # evicts b, the least recently used
    assert "b" not in c and c.get("b") is None and c.get("b", "dflt") == "dflt"
    assert len(c) == 2
    assert c.delete("a") and not c.delete("a")
    assert c.stats() == {
        "hits": 1,
        "misses": 2,
        "evictions": 1,
        "expirations": 0,
        "size": 1,
        "capacity": 2,
    }


def test_ttl_expires_entries() -> None:
    c: LruCache[int] = LruCache(10, ttl_seconds=0.05)
    c.put("k", 1)
    assert c.get("k") == 1
    time.sleep(0.08)
    assert c.get("k") is None
    assert c.stats()["expirations"] == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        LruCache(0)
    with pytest.raises(ValueError):
        LruCache(1, ttl_seconds=-1)


def test_threads_share_it_safely() -> None:
    c: LruCache[int] = LruCache(100)

    def work(n: int) -> None:
        for i in range(5_000):
            c.put(f"{n}-{i % 150}", i)
            c.get(f"{(n + 1) % 4}-{i % 150}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = c.stats()
    assert len(c) == 100 and s["hits"] + s["misses"] == 20_000
