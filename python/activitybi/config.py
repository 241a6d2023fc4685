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
    def logs(self) -> Path:
        """Log files of the commands that keep them (the demo's servers, say)."""
        return self.root / "logs"

    @property
    def secret_key(self) -> Path:
        """The key of every keyed hash (mode 0600); see `activitybi.secret`."""
        return self.root / "secret.key"

    @property
    def archive(self) -> Path:
        """Stream rows past retention: `stream-YYYY-MM.parquet` and `manifest.json`."""
        return self.root / "archive"

    @property
    def lifecycle(self) -> Path:
        """Retention and erasure state: `retention.json` (the last daily run), the
        `forget-*.json` of an erasure under way, and `pause` (the owner yields the queue
        and the warehouse while it exists and its writer lives)."""
        return self.root / "lifecycle"


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
    retention_days: float
    """`ACTIVITYBI_RETENTION_DAYS` (default 90; 0 keeps them): stream rows older than this
    leave the warehouse for the archive."""
    audit_retention_days: float
    """`ACTIVITYBI_AUDIT_RETENTION_DAYS` (default 365; 0 keeps them): `query_audit` rows."""
    quarantine_retention_days: float
    """`ACTIVITYBI_QUARANTINE_RETENTION_DAYS` (default 30; 0 keeps them): quarantined lines."""
    journal_retention_days: float
    """`ACTIVITYBI_JOURNAL_RETENTION_DAYS` (default 90; 0 keeps them): an insight journal
    nobody wrote for this long."""
    snapshot_retention_days: float
    """`ACTIVITYBI_SNAPSHOT_RETENTION_DAYS` (default 30; 0 keeps them): context snapshots
    and `context_cache` rows not refreshed for this long."""
    log_retention_days: float
    """`ACTIVITYBI_LOG_RETENTION_DAYS` (default 14; 0 keeps them): files under logs/."""
    archive_stage: str | None
    """`ACTIVITYBI_ARCHIVE_STAGE`: Snowflake only, a stage (`@db.schema.stage/path`) that
    rows past retention are unloaded to (Parquet) before they are deleted."""
    queue_rotate_secs: float
    """`ACTIVITYBI_QUEUE_ROTATE_SECS` (default 60): a server's open segment is sealed after
    this long, which also bounds how long `forget` waits for one."""
    traces: str | None
    """`ACTIVITYBI_TRACES=console` prints spans to stderr."""
    otlp_endpoint: str | None
    """`OTEL_EXPORTER_OTLP_ENDPOINT`: where our own traces go, over OTLP/HTTP."""

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
            retention_days=_number(env, "ACTIVITYBI_RETENTION_DAYS", 90),
            audit_retention_days=_number(env, "ACTIVITYBI_AUDIT_RETENTION_DAYS", 365),
            quarantine_retention_days=_number(env, "ACTIVITYBI_QUARANTINE_RETENTION_DAYS", 30),
            journal_retention_days=_number(env, "ACTIVITYBI_JOURNAL_RETENTION_DAYS", 90),
            snapshot_retention_days=_number(env, "ACTIVITYBI_SNAPSHOT_RETENTION_DAYS", 30),
            log_retention_days=_number(env, "ACTIVITYBI_LOG_RETENTION_DAYS", 14),
            archive_stage=env.get("ACTIVITYBI_ARCHIVE_STAGE") or None,
            queue_rotate_secs=_number(env, "ACTIVITYBI_QUEUE_ROTATE_SECS", 60),
            traces=env.get("ACTIVITYBI_TRACES") or None,
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        )


def settings() -> Settings:
    return Settings.from_env()
