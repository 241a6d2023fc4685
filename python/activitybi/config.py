"""Every setting and every path of activitybi, in one place.

The processes (server, warehouse owner, CLI, capture commands) talk only through files under
one home directory, `$ACTIVITYBI_HOME`: `Home` names each of them, and docs/architecture.md
describes their formats. `Settings` is every environment variable, typed, with its default;
it is read when asked for (not at import), so a test or a parent process can set the
environment first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "ACTIVITYBI_HOME"
CUSTOMER_ENV = "ACTIVITYBI_CUSTOMER"


def home() -> Path:
    """``$ACTIVITYBI_HOME``, or the per-user data directory of the platform."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    from platformdirs import user_data_path

    return user_data_path("activitybi", appauthor=False)


@dataclass(frozen=True)
class Home:
    """The files under `$ACTIVITYBI_HOME`, by what they are."""

    root: Path

    @classmethod
    def current(cls) -> Home:
        return cls(home())

    @property
    def queue(self) -> Path:
        """The Rust queue's directory: NDJSON segments, `queue.state`, `ack.json`, locks."""
        return self.root / "queue"

    @property
    def warehouse(self) -> Path:
        """The embedded DuckDB file, written only by the warehouse owner."""
        return self.root / "warehouse.duckdb"

    @property
    def quarantine(self) -> Path:
        """Lines the uploader can never load, each with its reason (JSON lines)."""
        return self.root / "quarantine" / "uploader.jsonl"

    @property
    def tickets(self) -> Path:
        """Query tickets and their results, one JSON file each."""
        return self.root / "tickets"

    @property
    def memory(self) -> Path:
        """Per-customer insight journals (JSON lines)."""
        return self.root / "memory"

    @property
    def context(self) -> Path:
        """Per-customer context snapshots the owner mirrors from `context_cache`."""
        return self.root / "context"

    @property
    def status(self) -> Path:
        """One small JSON status file per running process, for `activitybi status`."""
        return self.root / "status"

    @property
    def artifacts(self) -> Path:
        """Rendered cards and their index (`index.jsonl`), unless they go to S3."""
        return self.root / "artifacts"

    @property
    def otlp_series(self) -> Path:
        """The OTLP receiver's last point of each cumulative metric series (JSON), so that
        each point is recorded as its increase since the previous one."""
        return self.root / "capture" / "otlp_series.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def queue_dir() -> Path:
    return Home.current().queue


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Every `ACTIVITYBI_*` environment variable (and the few standard ones we read)."""

    customer: str | None
    """`ACTIVITYBI_CUSTOMER`: who a stdio server or a capture command records for."""
    warehouse: str
    """`ACTIVITYBI_WAREHOUSE`: duckdb (default) or snowflake."""
    tokens: str | None
    """`ACTIVITYBI_TOKENS`: HTTP bearer tokens, a JSON object token → customer."""
    fast_http: bool
    """`ACTIVITYBI_FAST_HTTP` (default 1): the lean front for tools/call over HTTP."""
    events_per_second: float
    """`ACTIVITYBI_EVENTS_PER_SECOND` (default 100): log_event budget per customer."""
    queries_per_minute: float
    """`ACTIVITYBI_QUERIES_PER_MINUTE` (default 30): submit_query budget per customer."""
    query_timeout_s: float
    """`ACTIVITYBI_QUERY_TIMEOUT` (default 60 s): one ticket's statement timeout."""
    redis_url: str | None
    """`REDIS_URL`: the shared tier-2 context cache, when set."""
    artifacts_s3: str | None
    """`ACTIVITYBI_ARTIFACTS_S3`: s3://bucket/prefix for cards instead of the home."""
    artifact_ttl_days: float
    """`ACTIVITYBI_ARTIFACTS_TTL_DAYS` (default 30; 0 keeps them)."""
    traces: str | None
    """`ACTIVITYBI_TRACES=console` prints spans to stderr."""
    otlp_endpoint: str | None
    """`OTEL_EXPORTER_OTLP_ENDPOINT`: where our own traces go, over OTLP/HTTP."""
    capture_content: bool
    """`ACTIVITYBI_CAPTURE_CONTENT` (default 0): capture paths record prompt texts too."""
    otlp_max_bytes: int
    """`ACTIVITYBI_OTLP_MAX_BYTES` (default 8 MiB): the largest OTLP request body the
    receiver takes, before and after gzip; a larger one gets 413."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        warehouse = env.get("ACTIVITYBI_WAREHOUSE", "duckdb").strip().lower() or "duckdb"
        if warehouse not in ("duckdb", "snowflake"):
            raise ValueError(f"ACTIVITYBI_WAREHOUSE must be duckdb or snowflake, not {warehouse!r}")
        return cls(
            customer=env.get(CUSTOMER_ENV) or None,
            warehouse=warehouse,
            tokens=env.get("ACTIVITYBI_TOKENS") or None,
            fast_http=env.get("ACTIVITYBI_FAST_HTTP", "1") != "0",
            events_per_second=_number(env, "ACTIVITYBI_EVENTS_PER_SECOND", 100),
            queries_per_minute=_number(env, "ACTIVITYBI_QUERIES_PER_MINUTE", 30),
            query_timeout_s=_number(env, "ACTIVITYBI_QUERY_TIMEOUT", 60),
            redis_url=env.get("REDIS_URL", "").strip() or None,
            artifacts_s3=env.get("ACTIVITYBI_ARTIFACTS_S3") or None,
            artifact_ttl_days=_number(env, "ACTIVITYBI_ARTIFACTS_TTL_DAYS", 30),
            traces=env.get("ACTIVITYBI_TRACES") or None,
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            capture_content=env.get("ACTIVITYBI_CAPTURE_CONTENT", "0").strip().lower()
            in ("1", "true", "yes"),
            otlp_max_bytes=int(_number(env, "ACTIVITYBI_OTLP_MAX_BYTES", 8 * 1024 * 1024)),
        )


def settings() -> Settings:
    return Settings.from_env()
