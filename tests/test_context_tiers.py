"""Context memory across tiers: the in-process LRU, a real Redis (killed and restarted
mid-test), the journal that makes insights visible at once to every process."""

# ruff: noqa: F811
from __future__ import annotations

import time
from pathlib import Path

import anyio
import orjson
import pytest

from activitybi.memory.context import ContextService, write_snapshot
from activitybi.memory.journal import MemoryJournal
from activitybi.memory.redis_tier import RedisTier
from tests.mcp_clients import stdio_session, text
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.redis


def atom(subject: str, metric: str, value: object, ts: str) -> dict[str, object]:
    return {
        "atom_id": ts,
        "customer_id": "c@x.io",
        "subject": subject,
        "metric": metric,
        "value": value,
        "ts": ts,
    }


def service(tmp_path: Path, redis: RedisTier | None) -> ContextService:
    return ContextService(MemoryJournal(tmp_path / "memory"), tmp_path / "context", redis)


def test_memory_hit_until_the_journal_or_snapshot_changes(tmp_path: Path) -> None:
    svc = service(tmp_path, None)
    first = svc.get("c@x.io")
    assert svc.get("c@x.io") is first and svc.builds == 1
    svc.journal.append("c@x.io", atom("repo", "size", 3, "2026-11-01T00:00:00.000"))
    assert orjson.loads(svc.get("c@x.io"))["insights"][0]["latest"] == 3 and svc.builds == 2
    write_snapshot(tmp_path / "context", "c@x.io", {"events": 12})
    assert orjson.loads(svc.get("c@x.io"))["activity"] == {"events": 12} and svc.builds == 3


def test_redis_serves_a_second_process(tmp_path: Path, redis_server: RedisServer) -> None:
    a = service(tmp_path, RedisTier(redis_server.url))
    b = service(tmp_path, RedisTier(redis_server.url))
    a.journal.append("c@x.io", atom("repo", "size", 3, "2026-11-01T00:00:00.000"))
    built = a.get("c@x.io")
    assert b.get("c@x.io") == built
    assert b.builds == 0 and b.redis.stats()["hits"] == 1  # type: ignore[union-attr]


def test_redis_down_still_answers_and_nothing_is_lost(tmp_path: Path, redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url)
    a = service(tmp_path, tier)
    a.get("c@x.io")
    redis_server.stop()
    slowest = 0.0
    for i in range(20):  # a write while Redis is down, then reads
        a.journal.append("c@x.io", atom("build", "seconds", i, f"2026-11-02T00:00:{i:02d}.000"))
        t = time.perf_counter()
        ctx = orjson.loads(a.get("c@x.io"))
        slowest = max(slowest, time.perf_counter() - t)
    assert ctx["insights"][0]["latest"] == 19 and ctx["insights"][0]["count"] == 20
    assert slowest < 0.25  # no hang on a dead Redis (its timeouts are ~20 ms, then the breaker skips it)
    stats = tier.stats()
    assert stats["errors"] >= 1 and stats["skipped"] >= 1
    redis_server.start()
    b = service(tmp_path, RedisTier(redis_server.url))
    assert orjson.loads(b.get("c@x.io"))["insights"][0]["count"] == 20
    deadline = time.monotonic() + 10
    while True:  # once Redis answers again, the context built after the outage is there
        b.cache.clear()
        b.get("c@x.io")
        c = service(tmp_path, RedisTier(redis_server.url))
        if c.get("c@x.io") == b.get("c@x.io") and c.builds == 0:
            break
        assert time.monotonic() < deadline, "Redis never served the rebuilt context"
        time.sleep(0.2)


def test_tools_keep_answering_when_redis_dies(_home: Path, redis_server: RedisServer) -> None:
    async def run() -> None:
        async with stdio_session(_home, "r@x.io", REDIS_URL=redis_server.url) as s:
            await s.call_tool("log_insight", {"subject": "a", "metric": "b", "value": 1})
            assert orjson.loads(text(await s.call_tool("get_context", {})))["insights"]
            redis_server.stop()
            for i in range(5):
                res = await s.call_tool("log_insight", {"subject": "a", "metric": "b", "value": i})
                assert not res.is_error
                ctx = orjson.loads(text(await s.call_tool("get_context", {})))
                assert ctx["insights"][0]["latest"] == i
            redis_server.start()
            assert not (await s.call_tool("log_event", {"activity": "came_back"})).is_error

    anyio.run(run)
