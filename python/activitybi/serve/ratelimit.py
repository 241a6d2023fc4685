"""Per-customer token buckets for every tool that writes, and for new HTTP sessions.

Limits are per server process and configurable by environment (config.Settings):
`ACTIVITYBI_EVENTS_PER_SECOND` (log_event and log_events; default 100, bursts of 10 s,
enough for a full log_events batch), `ACTIVITYBI_QUERIES_PER_MINUTE` (submit_query; 30),
`ACTIVITYBI_INSIGHTS_PER_MINUTE` (log_insight; 60), `ACTIVITYBI_CARDS_PER_MINUTE`
(render_card; 10), `ACTIVITYBI_UNKNOWN_CALLS_PER_MINUTE` (tools that do not exist; 30) and
`ACTIVITYBI_INITIALIZE_PER_MINUTE` (new HTTP sessions; 60). Per-minute limits allow
bursts of up to 10 calls. A refused call writes nothing.

With `REDIS_URL` set, every server of a deployment shares one bucket per customer and
action: a Lua script takes the tokens atomically in Redis (on Redis's clock), with the
same burst semantics, under keys that expire once the bucket would be full again. While
Redis is down (the breaker of `memory.redis_tier`), each process limits on its own again,
and counts each such decision in `activitybi_ratelimit_fallbacks_total`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from activitybi import config
from activitybi.memory.redis_tier import RedisTier, redis_key

if TYPE_CHECKING:
    from redis import Redis
    from redis.commands.core import Script

PRUNE_EVERY = 60.0
KEY_PREFIX = "activitybi:rl:"

# KEYS[1] = the bucket; ARGV = rate (tokens/s), burst, n (negative: a refund), ttl in ms.
# Returns the seconds until n tokens are there ("0": taken), as text (Lua numbers would be
# cut to integers on the way out).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 's')
local tokens, stamp = tonumber(b[1]), tonumber(b[2])
if tokens == nil or stamp == nil then
  tokens, stamp = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if n < 0 or tokens >= n then
  tokens = math.min(burst, tokens - n)
else
  wait = (n - tokens) / rate
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 's', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return string.format('%.17g', wait)
"""


class RateLimited(Exception):
    def __init__(self, action: str, rate: str, retry_after: float) -> None:
        super().__init__(f"rate limit: at most {rate} {action} calls; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


@dataclass
class Bucket:
    rate: float  # tokens per second
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float, n: int = 1) -> float:
        """0 when `n` tokens were taken, else the seconds until they are there."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


def _per_minute(per_minute: float) -> tuple[float, float, str]:
    """(rate per second, burst, text) of a per-minute budget: bursts of up to 10 calls."""
    return per_minute / 60, max(1.0, min(10.0, per_minute)), f"{per_minute:g}/min"


class RateLimits:
    def __init__(
        self,
        events_per_second: float | None = None,
        queries_per_minute: float | None = None,
        *,
        redis: RedisTier | None = None,
    ) -> None:
        settings = config.settings()
        eps = events_per_second or settings.events_per_second
        qpm = queries_per_minute or settings.queries_per_minute
        self.limits = {
            "log_event": (eps, max(1.0, eps * 10), f"{eps:g}/s"),
            "submit_query": _per_minute(qpm),
            "log_insight": _per_minute(settings.insights_per_minute),
            "render_card": _per_minute(settings.cards_per_minute),
            "unknown_tool": _per_minute(settings.unknown_calls_per_minute),
            "initialize": _per_minute(settings.initialize_per_minute),
        }
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.lock = threading.Lock()
        self._pruned = time.monotonic()
        self.redis = redis
        self._script: Script | None = None
        self.fallbacks = 0

    @classmethod
    def from_env(cls) -> RateLimits:
        """Limits shared through `REDIS_URL` when it is set, else this process's own."""
        # A script takes far longer than a cache read when Redis is busy: a looser read
        # timeout than the context tier's, so that a slow moment does not split the budget.
        return cls(redis=RedisTier.from_env(prefix=KEY_PREFIX, connect_timeout=0.05, timeout=0.05))

    def stats(self) -> dict[str, int]:
        """Whether the limits are shared, and how often Redis could not decide."""
        return {"shared": int(self.redis is not None), "fallbacks": self.fallbacks}

    def _shared(self, action: str, customer: str, n: int) -> float | None:
        """Takes (or, with `n` < 0, gives back) tokens in Redis; the seconds to wait, or
        None when Redis could not decide (then this process does, and it is counted)."""
        if self.redis is None:
            return None
        rate, burst, _ = self.limits[action]
        key = redis_key(customer, f"{KEY_PREFIX}{action}:")
        ttl_ms = math.ceil(burst / rate * 1000) + 1000  # by then the bucket is full: no key

        def take(r: Redis) -> Any:
            if self._script is None:
                self._script = r.register_script(_TAKE)
            return self._script(keys=[key], args=[rate, burst, n, ttl_ms], client=r)

        got = self.redis.call(take)
        if got is None:
            with self.lock:
                self.fallbacks += 1
            return None
        return float(got)

    def _prune(self, now: float) -> None:
        """Drops buckets that have refilled: a full bucket limits exactly as no bucket, and
        a forgotten (or gone) customer's name must not stay in memory for ever."""
        self._pruned = now
        for key, b in list(self.buckets.items()):
            if b.tokens + (now - b.stamp) * b.rate >= b.burst:
                del self.buckets[key]

    def check(self, action: str, customer: str, n: int = 1) -> None:
        """Takes `n` tokens for this customer's action, or raises RateLimited (taking none)."""
        rate, burst, text = self.limits[action]
        shared = self._shared(action, customer, n)
        if shared is not None:
            if shared:
                raise RateLimited(action, text, shared)
            return
        now = time.monotonic()
        with self.lock:
            if now - self._pruned >= PRUNE_EVERY:
                self._prune(now)
            bucket = self.buckets.get((action, customer))
            if bucket is None:
                bucket = self.buckets[(action, customer)] = Bucket(rate, burst, burst, now)
            wait = bucket.take(now, n)
        if wait:
            raise RateLimited(action, text, wait)

    def refund(self, action: str, customer: str, n: int = 1) -> None:
        """Gives back `n` tokens taken for a call that was then refused."""
        if self._shared(action, customer, -n) is not None:
            return
        with self.lock:
            bucket = self.buckets.get((action, customer))
            if bucket is not None:
                bucket.tokens = min(bucket.burst, bucket.tokens + n)
