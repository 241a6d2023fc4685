"""Rate limits shared through Redis: two real `serve --http` processes give a customer one
budget, not two; with Redis killed each keeps serving within its own limits and counts
the fallbacks in its metrics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import orjson
import pytest

from activitybi.memory.redis_tier import RedisTier
from activitybi.serve.ratelimit import KEY_PREFIX, RateLimited, RateLimits
from tests.redis_server import RedisServer, free_port, redis_server

__all__ = ["redis_server"]

OPERATOR = "tok-operator"
INITIALIZE = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
)


def _limits(url: str) -> RateLimits:
    return RateLimits(redis=RedisTier(url, prefix=KEY_PREFIX, connect_timeout=0.5, timeout=0.5))


@pytest.mark.redis
def test_two_processes_share_one_bucket_with_the_same_burst(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTIVITYBI_QUERIES_PER_MINUTE", "6")  # burst 6, one more every 10 s
    a, b = _limits(redis_server.url), _limits(redis_server.url)
    taken = 0
    for i in range(12):
        try:
            (a if i % 2 else b).check("submit_query", "alice@a.io")
            taken += 1
        except RateLimited as e:
            assert 0 < e.retry_after <= 10
    assert taken == 6
    a.check("submit_query", "bob@b.io")  # another customer has a budget of their own
    a.refund("submit_query", "alice@a.io")
    b.check("submit_query", "alice@a.io")  # the refund is shared too
    with pytest.raises(RateLimited):
        a.check("submit_query", "alice@a.io")
    ttl = redis_server_ttl(redis_server)
    assert 0 < ttl <= 61_000  # the key goes once the bucket would be full again
    assert a.stats() == {"shared": 1, "fallbacks": 0}


def redis_server_ttl(server: RedisServer) -> int:
    import redis

    r = redis.Redis.from_url(server.url)
    keys = r.keys(KEY_PREFIX + "submit_query:*")
    assert len(keys) == 2 and all(b"@" not in k for k in keys)  # hashed: no email in Redis
    return int(r.pttl(keys[0]))


class Server:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        tokens = home.parent / f"tokens-{self.port}.json"
        tokens.write_bytes(orjson.dumps({"tok-alice": "alice@a.io"}))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "activitybi",
                "serve",
                "--http",
                "--port",
                str(self.port),
                "--tokens",
                str(tokens),
            ],
            env={**env, "ACTIVITYBI_HOME": str(home)},
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx2.get(self.base + "/metrics", timeout=1)
                return
            except httpx2.HTTPError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)

    def initialize(self) -> int:
        r = httpx2.post(
            self.base + "/mcp",
            content=INITIALIZE,
            headers={
                "authorization": "Bearer tok-alice",
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
            },
        )
        assert r.status_code in (200, 429), r.text
        return r.status_code

    def fallbacks(self) -> float:
        text = httpx2.get(self.base + "/metrics", headers={"authorization": f"Bearer {OPERATOR}"}).text
        found = re.search(r"^activitybi_ratelimit_fallbacks_total (\S+)$", text, re.M)
        assert found, text
        return float(found.group(1))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.mark.redis
@pytest.mark.slow
def test_two_servers_give_one_budget_and_fall_back_when_redis_dies(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "ACTIVITYBI_INITIALIZE_PER_MINUTE": "6",  # burst 6, one more every 10 s
        "ACTIVITYBI_OPERATOR_TOKEN": OPERATOR,
    }
    servers = [Server(tmp_path / "home-a", env), Server(tmp_path / "home-b", env)]
    try:
        codes = [servers[i % 2].initialize() for i in range(16)]
        assert 6 <= codes.count(200) <= 7, codes  # one budget (a refill may land), not 12
        assert codes[:6] == [200] * 6
        assert [s.fallbacks() for s in servers] == [0, 0]

        redis_server.stop()
        for s in servers:  # each limits on its own now: its own burst, then refusals
            own = [s.initialize() for _ in range(10)]
            assert 6 <= own.count(200) <= 7 and own[-1] == 429, own
            assert s.fallbacks() >= 10
    finally:
        for s in servers:
            s.stop()
