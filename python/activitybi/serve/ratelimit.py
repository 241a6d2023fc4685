"""Per-customer token buckets for every tool that writes, and for new HTTP sessions.

Limits are per server process and configurable by environment (config.Settings):
`ACTIVITYBI_EVENTS_PER_SECOND` (log_event and log_events; default 100, bursts of 10 s,
enough for a full log_events batch), `ACTIVITYBI_QUERIES_PER_MINUTE` (submit_query; 30),
`ACTIVITYBI_INSIGHTS_PER_MINUTE` (log_insight; 60), `ACTIVITYBI_CARDS_PER_MINUTE`
(render_card; 10), `ACTIVITYBI_UNKNOWN_CALLS_PER_MINUTE` (tools that do not exist; 30) and
`ACTIVITYBI_INITIALIZE_PER_MINUTE` (new HTTP sessions; 60). Per-minute limits allow
bursts of up to 10 calls. A refused call writes nothing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from activitybi import config

PRUNE_EVERY = 60.0


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
        self, events_per_second: float | None = None, queries_per_minute: float | None = None
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
        with self.lock:
            bucket = self.buckets.get((action, customer))
            if bucket is not None:
                bucket.tokens = min(bucket.burst, bucket.tokens + n)
