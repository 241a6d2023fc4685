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
PROXY_ORIGINAL_ENV = "ACTIVITYBI_PROXY_ORIGINAL"
"""Set by ``install-claude --wrap`` on each wrapped Claude Desktop entry: the entry as it was,
as JSON, so that ``--unwrap`` restores it exactly. The proxy keeps it from its child."""


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
        """Query tickets and their results, one JSON file each, in a folder per day of
        submission (`YYYY-MM-DD/<id>.json`, `.result`, `.cancel`), and `pending/`, one
        empty marker per unfinished ticket (`pending/<customer key>/<id>`): all the owner
        lists, so its scan costs what is pending, not every ticket ever asked."""
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
        """Log files of the commands that keep them (the demo's servers, say)."""
        return self.root / "logs"

    @property
    def capture(self) -> Path:
        """State of the capture commands (how far each transcript was read, open sessions)."""
        return self.root / "capture"

    @property
    def transcript_state(self) -> Path:
        """`activitybi import claude-code`: byte offset and unfinished tool calls per file (JSON)."""
        return self.capture / "claude-code-transcripts.json"

    @property
    def hook_sessions(self) -> Path:
        """`activitybi hook`: per-session prompt counts, so a hook's prompt and the
        transcript's get the same id (one small JSON file per session)."""
        return self.capture / "claude-code-sessions"

    @property
    def capture_quarantine(self) -> Path:
        """Input a capture path could not use (a malformed transcript line, a bad hook
        payload), each with its reason (JSON lines)."""
        return self.root / "quarantine" / "capture.jsonl"

    @property
    def secret_key(self) -> Path:
        """The key of every keyed hash (mode 0600); see `activitybi.secret`."""
        return self.root / "secret.key"

    @property
    def policy(self) -> Path:
        """The redaction policy (TOML), when `ACTIVITYBI_POLICY` does not name another file;
        without either, the default policy applies. See `activitybi.privacy`."""
        return self.root / "policy.toml"

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


def secure_home(root: Path | None = None) -> Path:
    """Creates the home (0700, parents as needed) and makes it 0700 if it was not; files
    inside are private because every entry point runs with `os.umask(0o077)`."""
    path = root or home()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def private_umask() -> None:
    """The umask of every activitybi process: what it creates is 0600 (files) and 0700
    (directories), whatever the caller's umask (DuckDB, the Rust queue, tickets, cards)."""
    os.umask(0o077)


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
    ticket_retention_days: float
    """`ACTIVITYBI_TICKET_RETENTION_DAYS` (default 7; 0 keeps them): finished tickets and
    their results are deleted this long after the day they were submitted."""
    tickets_per_customer: int
    """`ACTIVITYBI_TICKETS_PER_CUSTOMER` (default 20): queued and running tickets one
    customer may have; a submit past it is refused."""
    query_memory_limit: str
    """`ACTIVITYBI_QUERY_MEMORY_LIMIT` (default 1GB): DuckDB's `memory_limit` in the owner
    (queries run one at a time, so it bounds each query; past it DuckDB spills or fails)."""
    query_threads: int
    """`ACTIVITYBI_QUERY_THREADS` (default 2): DuckDB's `threads` in the owner."""
    snowflake_load: str
    """`ACTIVITYBI_SNOWFLAKE_LOAD`: copy (default; PUT + COPY INTO + one transaction) or
    streaming (the Snowpipe Streaming SDK, the queue checkpoint as the offset token)."""
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
    capture_content: bool
    """`ACTIVITYBI_CAPTURE_CONTENT` (default off): captured events may hold what was said
    (prompts, tool arguments and results); off, they hold sizes and outcomes only."""
    prices: str | None
    """`ACTIVITYBI_PRICES`: a JSON price table replacing the shipped snapshot."""
    claude_config_dir: str | None
    """`CLAUDE_CONFIG_DIR`: Claude Code's own settings and transcripts (default ~/.claude)."""
    insights_per_minute: float
    """`ACTIVITYBI_INSIGHTS_PER_MINUTE` (default 60): log_insight budget per customer."""
    cards_per_minute: float
    """`ACTIVITYBI_CARDS_PER_MINUTE` (default 10): render_card budget per customer."""
    unknown_calls_per_minute: float
    """`ACTIVITYBI_UNKNOWN_CALLS_PER_MINUTE` (default 30): calls of tools that do not exist."""
    initialize_per_minute: float
    """`ACTIVITYBI_INITIALIZE_PER_MINUTE` (default 60): new HTTP sessions per customer."""
    sessions_per_customer: int
    """`ACTIVITYBI_SESSIONS_PER_CUSTOMER` (default 100): live HTTP sessions per customer."""
    insight_max_bytes: int
    """`ACTIVITYBI_INSIGHT_MAX_BYTES` (default 4096): one insight value, as JSON."""
    context_max_insights: int
    """`ACTIVITYBI_CONTEXT_MAX_INSIGHTS` (default 200): insight series (and as many
    preferences) a customer's context keeps; the least recent go first."""
    operator_token: str | None
    """`ACTIVITYBI_OPERATOR_TOKEN`: the bearer token `/metrics` asks for on `serve --http`;
    on the live page it sees every customer."""
    http_request_timeout_s: float
    """`ACTIVITYBI_HTTP_REQUEST_TIMEOUT` (default 10 s): a request's headers and body must
    arrive within this time, and a new connection must start its request within it."""
    http_connections_per_client: int | None
    """`ACTIVITYBI_HTTP_CONNECTIONS_PER_CLIENT`: open connections per client address
    (default a quarter of the descriptor limit, at most 4096)."""
    otlp_max_bytes: int
    """`ACTIVITYBI_OTLP_MAX_BYTES` (default 8 MiB): the largest OTLP request body the
    receiver takes, before and after gzip; a larger one gets 413."""
    live_refresh_s: float
    """`ACTIVITYBI_LIVE_REFRESH` (default 3 s): how often the live page asks for new figures."""
    live_session_hours: float
    """`ACTIVITYBI_LIVE_SESSION_HOURS` (default 12): how long a live page's login lasts."""
    sentry_dsn: str | None
    """`SENTRY_DSN`: report unhandled errors of the server, owner and CLI to Sentry (needs
    the `sentry` extra); the events never carry customer data."""
    sentry_environment: str | None
    """`SENTRY_ENVIRONMENT`: the environment Sentry files those errors under."""
    policy: str | None
    """`ACTIVITYBI_POLICY`: the redaction policy file (default `$ACTIVITYBI_HOME/policy.toml`
    when it exists, else the built-in default policy)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        warehouse = env.get("ACTIVITYBI_WAREHOUSE", "duckdb").strip().lower() or "duckdb"
        if warehouse not in ("duckdb", "snowflake"):
            raise ValueError(f"ACTIVITYBI_WAREHOUSE must be duckdb or snowflake, not {warehouse!r}")
        snowflake_load = env.get("ACTIVITYBI_SNOWFLAKE_LOAD", "copy").strip().lower() or "copy"
        if snowflake_load not in ("copy", "streaming"):
            raise ValueError(f"ACTIVITYBI_SNOWFLAKE_LOAD must be copy or streaming, not {snowflake_load!r}")
        return cls(
            customer=env.get(CUSTOMER_ENV) or None,
            warehouse=warehouse,
            tokens=env.get("ACTIVITYBI_TOKENS") or None,
            fast_http=env.get("ACTIVITYBI_FAST_HTTP", "1") != "0",
            events_per_second=_number(env, "ACTIVITYBI_EVENTS_PER_SECOND", 100),
            queries_per_minute=_number(env, "ACTIVITYBI_QUERIES_PER_MINUTE", 30),
            query_timeout_s=_number(env, "ACTIVITYBI_QUERY_TIMEOUT", 60),
            ticket_retention_days=_number(env, "ACTIVITYBI_TICKET_RETENTION_DAYS", 7),
            tickets_per_customer=int(_number(env, "ACTIVITYBI_TICKETS_PER_CUSTOMER", 20)),
            query_memory_limit=env.get("ACTIVITYBI_QUERY_MEMORY_LIMIT", "").strip() or "1GB",
            query_threads=int(_number(env, "ACTIVITYBI_QUERY_THREADS", 2)),
            snowflake_load=snowflake_load,
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
            capture_content=env.get("ACTIVITYBI_CAPTURE_CONTENT", "").strip().lower()
            in ("1", "true", "yes", "on"),
            prices=env.get("ACTIVITYBI_PRICES") or None,
            claude_config_dir=env.get("CLAUDE_CONFIG_DIR") or None,
            insights_per_minute=_number(env, "ACTIVITYBI_INSIGHTS_PER_MINUTE", 60),
            cards_per_minute=_number(env, "ACTIVITYBI_CARDS_PER_MINUTE", 10),
            unknown_calls_per_minute=_number(env, "ACTIVITYBI_UNKNOWN_CALLS_PER_MINUTE", 30),
            initialize_per_minute=_number(env, "ACTIVITYBI_INITIALIZE_PER_MINUTE", 60),
            sessions_per_customer=int(_number(env, "ACTIVITYBI_SESSIONS_PER_CUSTOMER", 100)),
            insight_max_bytes=int(_number(env, "ACTIVITYBI_INSIGHT_MAX_BYTES", 4096)),
            context_max_insights=int(_number(env, "ACTIVITYBI_CONTEXT_MAX_INSIGHTS", 200)),
            operator_token=env.get("ACTIVITYBI_OPERATOR_TOKEN") or None,
            http_request_timeout_s=_number(env, "ACTIVITYBI_HTTP_REQUEST_TIMEOUT", 10),
            http_connections_per_client=(
                int(_number(env, "ACTIVITYBI_HTTP_CONNECTIONS_PER_CLIENT", 0)) or None
            ),
            otlp_max_bytes=int(_number(env, "ACTIVITYBI_OTLP_MAX_BYTES", 8 * 1024 * 1024)),
            live_refresh_s=_number(env, "ACTIVITYBI_LIVE_REFRESH", 3),
            live_session_hours=_number(env, "ACTIVITYBI_LIVE_SESSION_HOURS", 12),
            sentry_dsn=env.get("SENTRY_DSN", "").strip() or None,
            sentry_environment=env.get("SENTRY_ENVIRONMENT", "").strip() or None,
            policy=env.get("ACTIVITYBI_POLICY") or None,
        )


def settings() -> Settings:
    return Settings.from_env()


def claude_dir() -> Path:
    """Claude Code's configuration directory: `$CLAUDE_CONFIG_DIR`, else ~/.claude."""
    explicit = settings().claude_config_dir
    return Path(explicit).expanduser() if explicit else Path.home() / ".claude"
