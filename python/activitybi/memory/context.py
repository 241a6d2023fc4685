"""A customer's context: what get_context returns, from three tiers of memory.

Tier 1 is the Rust `LruCache` in this process, tier 2 Redis (when `REDIS_URL` is set),
tier 3 the warehouse's `context_cache` (refreshed every few minutes by the process that
owns the warehouse, and mirrored into snapshot files so every process can read it). A
cached context is valid while its version, the size of the customer's insight journal
and the modification time of their snapshot, is unchanged: two `stat` calls decide a hit.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from activitybi import LruCache, config
from activitybi.memory.journal import PREFERENCES_SUBJECT, MemoryJournal, customer_key

Version = tuple[int, int]


@dataclass(slots=True)
class InsightSeries:
    """One subject/metric: its latest value and simple aggregates over the window."""

    subject: str
    metric: str
    latest: Any = None
    latest_at: str = ""
    count: int = 0
    numbers: list[tuple[str, float]] = field(default_factory=list)

    def add(self, value: Any, at: str) -> None:
        self.count += 1
        if at >= self.latest_at:
            self.latest, self.latest_at = value, at
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.numbers.append((at, float(value)))

    def summary(self, since: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "subject": self.subject,
            "metric": self.metric,
            "latest": self.latest,
            "latest_at": self.latest_at,
            "count": self.count,
        }
        self.numbers = [(at, v) for at, v in self.numbers if at >= since]  # older ones never count again
        window = [v for _, v in self.numbers]
        if window:
            out.update(
                min=min(window),
                max=max(window),
                avg=sum(window) / len(window),
                window_count=len(window),
            )
        return out


@dataclass(slots=True)
class CustomerMemory:
    """A customer's journal folded into series and preferences, read incrementally."""

    offset: int = 0
    series: dict[tuple[str, str], InsightSeries] = field(default_factory=dict)
    preferences: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def absorb(self, atoms: list[dict[str, Any]], keep: int) -> None:
        """Folds `atoms` in, then keeps the `keep` most recent series and preferences."""
        for a in atoms:
            subject, metric, at = a["subject"], a["metric"], a["ts"]
            if subject == PREFERENCES_SUBJECT:
                if at >= self.preferences.get(metric, ("", None))[0]:
                    self.preferences[metric] = (at, a["value"])
                continue
            key = (subject, metric)
            if key not in self.series:
                self.series[key] = InsightSeries(subject, metric)
            self.series[key].add(a["value"], at)
        if len(self.series) > keep:
            recent = sorted(self.series.items(), key=lambda kv: kv[1].latest_at, reverse=True)
            self.series = dict(recent[:keep])
        if len(self.preferences) > keep:
            recent_prefs = sorted(self.preferences.items(), key=lambda kv: kv[1][0], reverse=True)
            self.preferences = dict(recent_prefs[:keep])


@dataclass(slots=True)
class Cached:
    version: Version
    payload: bytes
    memory: CustomerMemory


Lookup = tuple[Cached | None, Version]


def redis_version(version: Version) -> int:
    """One number that grows whenever either part of the version does."""
    journal_size, snapshot_mtime_ns = version
    return (journal_size << 64) | snapshot_mtime_ns


def snapshot_path(snapshot_dir: Path, customer: str) -> Path:
    return snapshot_dir / f"{customer_key(customer)}.json"


def write_snapshot(snapshot_dir: Path, customer: str, activity: dict[str, Any]) -> None:
    """Tier 3's mirror of a customer's activity summary, replaced atomically by the
    process that owns the warehouse."""
    snapshot_dir.mkdir(parents=True, exist_ok=True)  # a standalone owner may be the first
    path = snapshot_path(snapshot_dir, customer)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(activity))
    os.replace(tmp, path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def trim(context: dict[str, Any], max_bytes: int) -> bytes:
    """Drops whole items (oldest insights, rarest activities, preferences) until the JSON
    fits; the result is always a complete JSON object.

    Linear in the context's size: each item is serialised once, and the JSON's length
    is kept as a running sum (orjson writes no spaces, so an item costs its own bytes
    plus one comma)."""
    payload = orjson.dumps(context)
    if len(payload) <= max_bytes:
        return payload
    ctx = {**context, "truncated": True, "insights": list(context.get("insights", []))}
    activity = dict(ctx.get("activity") or {})
    ctx["activity"] = activity
    kept = [ctx["insights"], list(activity.get("top_activities") or []), list(activity.get("tools") or [])]
    lists: list[list[Any]] = [[], [], []]  # filled with what fits, below
    ctx["insights"], activity["top_activities"], activity["tools"] = lists
    prefs = dict(ctx.get("preferences") or {})
    ctx["preferences"] = {}
    size = len(orjson.dumps(ctx))  # every list and the preferences empty
    sizes = [[len(orjson.dumps(item)) for item in items] for items in kept]
    pref_sizes = [len(orjson.dumps({k: v})) - 2 for k, v in prefs.items()]
    counts = [len(s) for s in sizes]
    size += sum(sum(s) + max(0, len(s) - 1) for s in sizes)
    size += sum(pref_sizes) + max(0, len(pref_sizes) - 1)
    n_prefs = len(pref_sizes)
    while size > max_bytes:
        longest = max(range(len(counts)), key=lambda i: counts[i])
        if counts[longest]:
            counts[longest] -= 1
            size -= sizes[longest][counts[longest]] + (1 if counts[longest] else 0)
        elif n_prefs:
            n_prefs -= 1
            size -= pref_sizes[n_prefs] + (1 if n_prefs else 0)
        else:
            return orjson.dumps({"customer": ctx["customer"], "truncated": True})
    for items, whole, n in zip(lists, kept, counts, strict=True):
        items.extend(whole[:n])
    ctx["preferences"] = dict(list(prefs.items())[:n_prefs])
    return orjson.dumps(ctx)


class ContextService:
    def __init__(
        self,
        journal: MemoryJournal,
        snapshot_dir: Path,
        redis: Any | None = None,
        *,
        capacity: int = 10_000,
        window_days: int = 30,
        max_insights: int | None = None,
    ) -> None:
        self.journal = journal
        self.max_insights = max_insights or config.settings().context_max_insights
        self._build_lock = threading.Lock()
        self.snapshot_dir = snapshot_dir
        snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.redis = redis
        self.window = dt.timedelta(days=window_days)
        self.cache: LruCache[Cached] = LruCache(capacity)
        self.builds = 0
        self.snapshot_reads = {"hits": 0, "misses": 0}

    def snapshot_path(self, customer: str) -> Path:
        return snapshot_path(self.snapshot_dir, customer)

    def version(self, customer: str) -> Version:
        try:
            snap = os.stat(self.snapshot_path(customer)).st_mtime_ns
        except FileNotFoundError:
            snap = 0
        return (self.journal.version(customer), snap)

    def get(self, customer: str, max_bytes: int | None = None) -> bytes:
        """The context as JSON; at most `max_bytes` when given."""
        return self.resolve(customer, self.lookup(customer), max_bytes)

    def lookup(self, customer: str) -> Lookup:
        """(the cached context, the current version): two `stat` calls and a cache read."""
        version = self.version(customer)
        return self.cache.get(customer), version

    @staticmethod
    def ready(found: Lookup, max_bytes: int | None = None) -> bytes | None:
        """The answer when `lookup` found it current and small enough (no build, no trim:
        cheap enough for the event loop); None when `resolve` has work to do."""
        cached, version = found
        if cached is None or cached.version != version:
            return None
        if max_bytes is not None and len(cached.payload) > max_bytes:
            return None
        return cached.payload

    def resolve(self, customer: str, found: Lookup, max_bytes: int | None = None) -> bytes:
        """The answer from what `lookup` found, building and trimming as needed."""
        cached, version = found
        if cached is None or cached.version != version:
            with self._build_lock:  # builds share the customer's folded memory
                cached = self._from_redis(customer, version) or self._build(customer, version, cached)
        if max_bytes is not None and len(cached.payload) > max_bytes:
            return trim(orjson.loads(cached.payload), max_bytes)
        return cached.payload

    def _from_redis(self, customer: str, version: Version) -> Cached | None:
        if self.redis is None:
            return None
        got = self.redis.get(customer)
        if got is None or got[0] != redis_version(version):
            return None
        memory = CustomerMemory()  # only rebuilt if this process later builds it itself
        memory.offset = -1
        cached = Cached(version, got[1], memory)
        self.cache.put(customer, cached)
        return cached

    def _build(self, customer: str, version: Version, stale: Cached | None) -> Cached:
        memory = stale.memory if stale is not None and stale.memory.offset >= 0 else CustomerMemory()
        atoms, memory.offset = self.journal.read(customer, memory.offset)
        memory.absorb(atoms, self.max_insights)
        now = _now()
        since = (now - self.window).isoformat(timespec="milliseconds")
        series = sorted(memory.series.values(), key=lambda s: s.latest_at, reverse=True)
        context = {
            "customer": customer,
            "generated_at": now.isoformat(timespec="milliseconds") + "Z",
            "activity": self._snapshot(customer),
            "insights": [s.summary(since) for s in series],
            "preferences": {k: v for k, (_, v) in sorted(memory.preferences.items())},
            "truncated": False,
        }
        cached = Cached(version, orjson.dumps(context), memory)
        self.cache.put(customer, cached)
        self.builds += 1
        if self.redis is not None:
            self.redis.put(customer, redis_version(version), cached.payload)
        return cached

    def _snapshot(self, customer: str) -> dict[str, Any] | None:
        try:
            snapshot = dict(orjson.loads(self.snapshot_path(customer).read_bytes()))
        except FileNotFoundError:
            self.snapshot_reads["misses"] += 1
            return None
        self.snapshot_reads["hits"] += 1
        return snapshot

    def tier_stats(self) -> dict[str, dict[str, int]]:
        """Hits and misses per tier: memory (this process), redis, warehouse (snapshots)."""
        tiers: dict[str, Any] = {"memory": self.cache.stats()}
        if self.redis is not None:
            tiers["redis"] = self.redis.stats()
        tiers["warehouse"] = dict(self.snapshot_reads)
        return tiers

    def warm(self, customers: list[str]) -> int:
        for c in customers:
            self.get(c)
        return len(customers)
