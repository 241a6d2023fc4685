"""Prometheus metrics, and the status files `activitybi status` reads.

A server exposes its metrics at `/metrics` (HTTP) or on `--metrics-port` (stdio); the
warehouse owner on its own `--metrics-port`. Every process also writes a small status file
under `$ACTIVITYBI_HOME/status/` for a person running `activitybi status`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from activitybi import config
from activitybi._core import REDACTION_KINDS

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def status_dir(home: Path) -> Path:
    path = config.Home(home).status
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_status(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(orjson.dumps(data, default=str))
    os.replace(tmp, path)


class _Read(Collector):
    """Counters and gauges read from live objects at scrape time."""

    def __init__(self, read: Callable[[], Iterator[Metric]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        return self.read()


class ServerMetrics:
    """A server process: tool latency and errors, its queue, its cache tiers."""

    def __init__(
        self,
        queue_stats: Callable[[], dict[str, Any]],
        cache_stats: Callable[[], dict[str, dict[str, int]]],
        limit_stats: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "activitybi_tool_latency_seconds",
            "Tool call latency",
            ["tool"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "activitybi_tool_errors_total",
            "Tool calls that failed",
            ["tool"],
            registry=self.registry,
        )
        self.queue_stats = queue_stats
        self.cache_stats = cache_stats
        self.limit_stats = limit_stats or (lambda: {"shared": 0, "fallbacks": 0})
        self.calls = 0
        self.failures = 0
        self.last_errors: deque[dict[str, Any]] = deque(maxlen=5)
        self.registry.register(_Read(self._read))

    def observe(self, tool: str, latency_ms: float, error: str | None) -> None:
        self.latency.labels(tool).observe(latency_ms / 1000)
        self.calls += 1
        if error is not None:
            self.errors.labels(tool).inc()
            self.failures += 1
            self.last_errors.append({"at": time.time(), "tool": tool, "error": error})

    def _read(self) -> Iterator[Metric]:
        q = self.queue_stats()
        for name, key, doc in (
            ("appended", "appended", "Events appended by this process"),
            ("rejected", "rejected", "Events refused (invalid, too large, queue full)"),
            ("fsyncs", "fsyncs", "fdatasync calls"),
        ):
            yield CounterMetricFamily(f"activitybi_queue_{name}", doc, value=q[key])
        yield GaugeMetricFamily(
            "activitybi_queue_pending",
            "Events not yet uploaded (all processes)",
            value=q["pending"],
        )
        if "max_pending" in q:  # absent while the queue cannot open
            yield GaugeMetricFamily(
                "activitybi_queue_max_pending",
                "Pending events at which appends are refused (QueueFull)",
                value=q["max_pending"],
            )
        yield GaugeMetricFamily("activitybi_queue_bytes", "Bytes appended by this process", value=q["bytes"])
        redacted = CounterMetricFamily(
            "activitybi_redactions",
            "Values redacted before enqueue by this process, by kind (what the policy masked, "
            "hashed or dropped)",
            labels=["kind"],
        )
        counts: Any = q.get("redactions") or {}
        for kind in REDACTION_KINDS:  # a fixed set: the label never carries event data
            redacted.add_metric([kind], counts.get(kind, 0))
        yield redacted
        hits = CounterMetricFamily("activitybi_cache_hits", "Context cache hits", labels=["tier"])
        misses = CounterMetricFamily("activitybi_cache_misses", "Context cache misses", labels=["tier"])
        skipped = CounterMetricFamily(
            "activitybi_cache_unavailable", "Redis calls skipped or failed", labels=["tier"]
        )
        tiers = self.cache_stats()
        for tier, s in tiers.items():
            hits.add_metric([tier], s.get("hits", 0))
            misses.add_metric([tier], s.get("misses", 0))
            if "errors" in s:
                skipped.add_metric([tier], s.get("errors", 0) + s.get("skipped", 0))
        yield hits
        yield misses
        yield skipped
        if "redis" in tiers:  # only with REDIS_URL set
            yield GaugeMetricFamily(
                "activitybi_redis_breaker_open",
                "1 while the circuit breaker skips Redis",
                value=tiers["redis"].get("open", 0),
            )

        limits = self.limit_stats()
        yield GaugeMetricFamily(
            "activitybi_ratelimit_shared",
            "1 when rate limits are shared through Redis",
            value=limits["shared"],
        )
        yield CounterMetricFamily(
            "activitybi_ratelimit_fallbacks",
            "Rate-limit checks this process decided alone because Redis was unavailable",
            value=limits["fallbacks"],
        )

    def status(self, source: str) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "source": source,
            "updated_at": time.time(),
            "tool_calls": self.calls,
            "tool_errors": self.failures,
            "last_errors": list(self.last_errors),
            "queue": self.queue_stats(),
            "cache": self.cache_stats(),
            "rate_limits": self.limit_stats(),
        }


class OwnerMetrics:
    """The warehouse owner: uploader progress and health."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.stats = stats
        self.registry.register(_Read(self._read))

    def _read(self) -> Iterator[Metric]:
        s = self.stats()
        for key, doc in (
            ("loaded", "Events loaded into the warehouse"),
            ("duplicates", "Events skipped as already loaded"),
            ("quarantined", "Lines moved to quarantine"),
            ("retries", "Warehouse retries after transient failures"),
            ("drifted", "Events loaded under the schema-drift rule"),
        ):
            yield CounterMetricFamily(f"activitybi_uploader_{key}", doc, value=s[key])
        yield GaugeMetricFamily(
            "activitybi_uploader_lag_seconds",
            "Seconds since the uploader last had nothing left to load",
            value=s["lag_seconds"],
        )
        yield GaugeMetricFamily("activitybi_queue_pending", "Events not yet uploaded", value=s["pending"])
        yield GaugeMetricFamily(
            "activitybi_warehouse_consecutive_failures",
            "Warehouse calls failed in a row (0 after a success)",
            value=s["consecutive_failures"],
        )


def serve_port(registry: CollectorRegistry, port: int) -> None:
    start_http_server(port, addr="127.0.0.1", registry=registry)


def every(seconds: float, fn: Callable[[], None], stop: threading.Event) -> threading.Thread:
    """Calls `fn` now and then every `seconds` on a daemon thread until `stop` is set; an
    error in one call is logged and the thread goes on."""

    def once() -> None:
        try:
            fn()
        except Exception:  # EMFILE, a full disk: say so, and try again next time
            log.warning("%s failed; retrying in %g s", getattr(fn, "__name__", fn), seconds, exc_info=True)

    def loop() -> None:
        once()
        while not stop.wait(seconds):
            once()

    thread = threading.Thread(target=loop, daemon=True, name="activitybi-status")
    thread.start()
    return thread
