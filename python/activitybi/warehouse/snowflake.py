"""Snowflake, the production warehouse: bulk loads by PUT + COPY INTO, exactly once.

A load writes the batch as one NDJSON file, PUTs it into a folder of its own in the table
stage of ``_activitybi_landing``, COPYs it into that one-VARIANT landing table, and then,
in ONE transaction:

1. ``UPDATE _activitybi_checkpoints`` for the queue, when a checkpoint is given (first, on
   purpose: on Snowflake an UPDATE holds the table's lock until COMMIT, so two loaders of
   one queue, which should never run at once, would queue up here rather than both insert
   the same rows);
2. ``UPDATE claude_stream`` the rows whose (customer or anonymous id, ``activity_id``)
   the batch holds from a higher-ranked source (the precedence rule of
   `activitybi.capture.facts.SOURCE_RANK`: otel > hook > transcript > the rest), then
   ``INSERT INTO claude_stream ... SELECT ... FROM _activitybi_landing WHERE NOT EXISTS``
   the same (customer, ``activity_id``) in the table; within the batch, the
   highest-ranked line of a key wins, then the first (``QUALIFY ROW_NUMBER() ... = 1``).
   Deduplication is per customer: one customer's id never hides another's event;
3. the same for the insight atoms (``row.insight()``) into ``insight_atoms`` (per
   customer too), insert only;
4. ``INSERT`` the checkpoint row when the UPDATE found none (when a checkpoint is given);
5. ``DELETE`` the batch (and the lines of this queue's crashed loads older than an hour)
   from the landing table.

Why INSERT ... WHERE NOT EXISTS and not MERGE: fakesnow, the emulator the tests run
against, cannot run MERGE inside a transaction (it runs MERGE as a temporary table plus
DML, which aborts an open transaction), and without a transaction the checkpoint would
not be atomic with the rows. An insert-only MERGE (``WHEN NOT MATCHED THEN INSERT``) and
this INSERT have the same result; the lock taken by step 1 gives the serialisation a
MERGE would. So the statements that run in the tests are the statements that run in
production.

The connector is imported lazily (server start-up never pays for it). Connector failures
that may pass (connection refused, timeouts, HTTP 5xx/429, an expired session, a lock or
statement timeout, a suspended warehouse) become `activitybi.warehouse.TransientError`;
the others (SQL errors, bad credentials) are raised as the connector raised them. The
connection is opened with short login and network timeouts, so no call retries forever.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from activitybi.events import LOADED_COLUMNS, StreamRow
from activitybi.warehouse import (
    Checkpoint,
    DataError,
    Params,
    QueryResult,
    QueryStopped,
    TransientError,
    ddl_files,
    source_rank_sql,
)

if TYPE_CHECKING:
    from snowflake.connector import SnowflakeConnection
    from snowflake.connector.cursor import SnowflakeCursor

log = logging.getLogger(__name__)

LANDING = "_activitybi_landing"
ORPHAN_AGE_S = 3600
"""Landing lines of a load that crashed between COPY and COMMIT are deleted by a later
load of the same queue once they are this old (a load never takes that long)."""

DEFAULT_LOGIN_TIMEOUT_S = 15
DEFAULT_NETWORK_TIMEOUT_S = 60
"""``network_timeout`` bounds the retries of every request (the connector retries forever
without it) and also cancels a statement running longer; pass ``timeout=`` to `execute`
for a longer query."""

EMULATOR_UNSUPPORTED = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"CREATE\s+(OR\s+REPLACE\s+)?ROW\s+ACCESS\s+POLICY\b",
        r"ALTER\s+ROW\s+ACCESS\s+POLICY\b",
        r"ALTER\s+TABLE\s+\S+\s+(ADD|DROP)\s+(ALL\s+)?ROW\s+ACCESS\s+POLIC",
        r"(CREATE\s+(OR\s+REPLACE\s+)?|ALTER\s+)RESOURCE\s+MONITOR\b",
        r"(CREATE\s+(OR\s+REPLACE\s+)?|ALTER\s+)WAREHOUSE\b",
        r"CREATE\s+(OR\s+REPLACE\s+)?STREAM\b",
        r"(CREATE\s+(OR\s+(REPLACE|ALTER)\s+)?|ALTER\s+)TASK\b",
        r"EXECUTE\s+IMMEDIATE\b",
    )
)
"""Statement kinds fakesnow cannot run (row access policies, resource monitors, warehouses,
streams, tasks, Snowflake Scripting). With ``emulator=True``, `init` skips them and lists
them in `SnowflakeWarehouse.skipped`; on Snowflake every statement runs."""

_TRANSIENT_ERRNOS = frozenset(
    {
        604,  # statement cancelled
        625,  # too many statements waiting for a lock
        630,  # statement or warehouse timeout
        250002,  # connection is closed
        250003,  # request failed after the retries of network_timeout
        250005,  # failed to reach the server
        290401,  # HTTP 401: the session is gone (server restarted): reconnect
        390111,  # session no longer exists
        390114,  # authentication token expired
    }
)
_TRANSIENT_SQLSTATES = ("57014", "57P01", "57P03")
"""Cancellation, and "warehouse cannot be resumed" (a resource monitor at its quota suspends
the warehouse: loads wait, nothing is lost). Connection failures come as OperationalError
(250001 refused, 250003 retries exhausted); a DatabaseError 250001 (08001) is a refused
login (bad credentials): permanent."""

_ATOM_REQUIRED = ("customer_id", "subject", "metric", "value")

_KEY = "COALESCE({0}customer, {0}anonymous_customer_id, '')"
"""Whose activity_id it is: deduplication is per customer (or anonymous id), never across."""

_BATCH_BEST = f"""
SELECT
    l.v:activity_id::VARCHAR AS activity_id,
    l.v:ts::TIMESTAMP_NTZ AS ts,
    l.v:customer::VARCHAR AS customer,
    l.v:activity::VARCHAR AS activity,
    l.v:anonymous_customer_id::VARCHAR AS anonymous_customer_id,
    l.v:feature_json AS feature_json,
    l.v:revenue_impact::FLOAT AS revenue_impact,
    l.v:link::VARCHAR AS link,
    l.v:_session_id::VARCHAR AS _session_id,
    l.v:_source::VARCHAR AS _source,
    COALESCE(l.v:customer::VARCHAR, l.v:anonymous_customer_id::VARCHAR, '') AS _key,
    {source_rank_sql("l.v:_source::VARCHAR")} AS _rank
FROM {LANDING} l
WHERE l.v:_b::VARCHAR = ? AND l.v:k::VARCHAR = 's'
QUALIFY ROW_NUMBER() OVER (
    PARTITION BY _key, activity_id ORDER BY _rank DESC, l.v:_n::INTEGER
) = 1
"""
"""The batch's stream rows, one per (customer, activity_id): the highest-ranked source's,
then the first line."""

_REPLACE_STREAM = f"""
UPDATE claude_stream t SET
    ts = b.ts, activity = b.activity, feature_json = b.feature_json,
    revenue_impact = b.revenue_impact, link = b.link, _session_id = b._session_id,
    _source = b._source, _ingested_at = SYSDATE()
FROM ({_BATCH_BEST}) b
WHERE {_KEY.format("t.")} = b._key AND t.activity_id = b.activity_id
  AND b._rank > {source_rank_sql("t._source")}
"""
"""The precedence rule: a row from a higher-ranked source replaces the stored one."""

_INSERT_STREAM = f"""
INSERT INTO claude_stream (activity_id, ts, customer, activity, anonymous_customer_id,
    feature_json, revenue_impact, link, _session_id, _source, _ingested_at)
SELECT b.activity_id, b.ts, b.customer, b.activity, b.anonymous_customer_id,
    b.feature_json, b.revenue_impact, b.link, b._session_id, b._source, SYSDATE()
FROM ({_BATCH_BEST}) b
WHERE NOT EXISTS (
    SELECT 1 FROM claude_stream t
    WHERE {_KEY.format("t.")} = b._key AND t.activity_id = b.activity_id
)
"""

_INSERT_ATOMS = f"""
INSERT INTO insight_atoms (atom_id, customer_id, subject, metric, value,
    provenance_query_hash, ts)
SELECT
    l.v:atom_id::VARCHAR,
    l.v:customer_id::VARCHAR,
    l.v:subject::VARCHAR,
    l.v:metric::VARCHAR,
    l.v:value,
    l.v:provenance_query_hash::VARCHAR,
    l.v:ts::TIMESTAMP_NTZ
FROM {LANDING} l
WHERE l.v:_b::VARCHAR = ? AND l.v:k::VARCHAR = 'a'
  AND NOT EXISTS (
      SELECT 1 FROM insight_atoms t
      WHERE t.atom_id = l.v:atom_id::VARCHAR AND t.customer_id = l.v:customer_id::VARCHAR
  )
QUALIFY ROW_NUMBER() OVER (
    PARTITION BY l.v:customer_id::VARCHAR, l.v:atom_id::VARCHAR ORDER BY l.v:_n::INTEGER
) = 1
"""

_UPDATE_CHECKPOINT = """
UPDATE _activitybi_checkpoints
SET checkpoint = PARSE_JSON(?), updated_at = SYSDATE()
WHERE queue_id = ?
"""

_INSERT_CHECKPOINT = """
INSERT INTO _activitybi_checkpoints (queue_id, checkpoint, updated_at)
SELECT ?, PARSE_JSON(?), SYSDATE()
WHERE NOT EXISTS (SELECT 1 FROM _activitybi_checkpoints WHERE queue_id = ?)
"""

_REFRESH_CONTEXT = """
MERGE INTO context_cache c
USING (SELECT customer_id, context FROM context_summary) s
ON c.customer_id = s.customer_id
WHEN MATCHED THEN UPDATE SET
    context = s.context,
    updated_at = SYSDATE(),
    version = c.version + 1
WHEN NOT MATCHED THEN INSERT (customer_id, context, updated_at, version)
    VALUES (s.customer_id, s.context, SYSDATE(), 1)
"""
"""The task's MERGE of 004_governance.sql for every customer (no stream on the emulator)."""

_DELETE_LANDED = f"""
DELETE FROM {LANDING}
WHERE v:_b::VARCHAR = ?
   OR (v:_q::VARCHAR = ? AND v:_at::INTEGER < ?)
"""


def is_transient(exc: BaseException) -> bool:
    """Whether a failure of the connector may pass if the same call is made again later."""
    from snowflake.connector import errors as e

    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, e.Error):
        if isinstance(exc, e.NonRetryableTlsError):
            return False
        if isinstance(
            exc,
            e.OperationalError
            | e.HttpError
            | e.InternalServerError
            | e.ServiceUnavailableError
            | e.GatewayTimeoutError
            | e.BadGatewayError
            | e.RequestTimeoutError
            | e.OtherHTTPRetryableError
            | e.TooManyRequests
            | e.RequestExceedMaxRetryError,
        ):
            return True
        return exc.errno in _TRANSIENT_ERRNOS or (exc.sqlstate or "") in _TRANSIENT_SQLSTATES
    # A socket or HTTP failure outside the connector's wrappers (requests' errors are OSErrors).
    return isinstance(exc, OSError)


def _statement_kind(statement: str) -> str:
    """The statement without its leading comments, on one line (for matching and reports)."""
    lines = [ln for ln in statement.splitlines() if not ln.lstrip().startswith("--")]
    return " ".join(" ".join(lines).split())


class _Session:
    """One connection and the lock that keeps its transactions to one thread at a time."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.conn: SnowflakeConnection | None = None
        self.stale: list[SnowflakeConnection] = []


class SnowflakeWarehouse:
    """The `Warehouse` protocol on Snowflake (see the module's docstring for the load).

    ``connect_kwargs`` go to ``snowflake.connector.connect`` as they are, over these
    defaults: ``paramstyle="qmark"`` (parameters are bound by the server, so SQL passed to
    `execute` uses ``?``), ``login_timeout``/``network_timeout`` as above, and session
    parameters ``QUERY_TAG='activitybi'`` and ``TIMEZONE='UTC'``. ``emulator=True`` is for
    fakesnow: `init` then skips the statements fakesnow cannot run and reports them.

    Loads and queries use two connections, so a long query never holds a load back and a
    query never runs inside a load's transaction.
    """

    kind = "snowflake"

    def __init__(
        self,
        connect_kwargs: Mapping[str, Any],
        *,
        emulator: bool = False,
        query_tag: str = "activitybi",
    ) -> None:
        self._kwargs = dict(connect_kwargs)
        self.emulator = emulator
        self.query_tag = query_tag
        self.skipped: list[str] = []
        """What the last `init` did not run, as ``"<file>: <statement>"`` (emulator only)."""
        self._load = _Session()
        self._query = _Session()
        self._after_step: Callable[[str], None] | None = None
        """Test seam: called after each step of `load` with its name ("put", "copy", "begin",
        "checkpoint_update", "replace", "stream", "atoms", "checkpoint_insert", "landing_delete",
        "commit"), e.g. to stop the server between two statements of the transaction."""

    # -- configuration -----------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SnowflakeWarehouse:
        """From ``SNOWFLAKE_ACCOUNT``, ``SNOWFLAKE_USER``, ``SNOWFLAKE_PASSWORD`` or
        ``SNOWFLAKE_PRIVATE_KEY_PATH`` (key-pair; ``SNOWFLAKE_PRIVATE_KEY_PASSPHRASE`` if
        the key is encrypted), ``SNOWFLAKE_ROLE``, ``SNOWFLAKE_WAREHOUSE``,
        ``SNOWFLAKE_DATABASE``, ``SNOWFLAKE_SCHEMA``; optionally ``SNOWFLAKE_HOST``,
        ``SNOWFLAKE_PORT``, ``SNOWFLAKE_PROTOCOL`` (to reach an emulator),
        ``SNOWFLAKE_LOGIN_TIMEOUT``, ``SNOWFLAKE_NETWORK_TIMEOUT`` (seconds) and
        ``ACTIVITYBI_SNOWFLAKE_EMULATOR=1`` (the server is fakesnow)."""
        env = os.environ if environ is None else environ

        def need(name: str) -> str:
            value = env.get(name)
            if not value:
                raise ValueError(f"{name} must be set to use the Snowflake warehouse")
            return value

        kwargs: dict[str, Any] = {
            "account": need("SNOWFLAKE_ACCOUNT"),
            "user": need("SNOWFLAKE_USER"),
            "database": need("SNOWFLAKE_DATABASE"),
            "schema": need("SNOWFLAKE_SCHEMA"),
        }
        if env.get("SNOWFLAKE_PASSWORD"):
            kwargs["password"] = env["SNOWFLAKE_PASSWORD"]
        elif env.get("SNOWFLAKE_PRIVATE_KEY_PATH"):
            kwargs["authenticator"] = "SNOWFLAKE_JWT"
            kwargs["private_key_file"] = str(Path(env["SNOWFLAKE_PRIVATE_KEY_PATH"]).expanduser())
            if env.get("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"):
                kwargs["private_key_file_pwd"] = env["SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"]
        else:
            raise ValueError(
                "set SNOWFLAKE_PASSWORD or SNOWFLAKE_PRIVATE_KEY_PATH to use the Snowflake warehouse"
            )
        for name in ("role", "warehouse", "host", "protocol"):
            if env.get(f"SNOWFLAKE_{name.upper()}"):
                kwargs[name] = env[f"SNOWFLAKE_{name.upper()}"]
        for name in ("port", "login_timeout", "network_timeout"):
            if env.get(f"SNOWFLAKE_{name.upper()}"):
                kwargs[name] = int(env[f"SNOWFLAKE_{name.upper()}"])
        emulator = env.get("ACTIVITYBI_SNOWFLAKE_EMULATOR", "").lower() in ("1", "true", "yes")
        return cls(kwargs, emulator=emulator)

    def __repr__(self) -> str:
        where = self._kwargs.get("host") or self._kwargs.get("account")
        db = f"{self._kwargs.get('database')}.{self._kwargs.get('schema')}"
        return f"SnowflakeWarehouse({where!s}, {db}{', emulator' if self.emulator else ''})"

    # -- connections -------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "paramstyle": "qmark",
            "login_timeout": DEFAULT_LOGIN_TIMEOUT_S,
            "network_timeout": DEFAULT_NETWORK_TIMEOUT_S,
            "client_session_keep_alive": False,
        }
        kwargs.update(self._kwargs)
        kwargs["session_parameters"] = {
            "QUERY_TAG": self.query_tag,
            "TIMEZONE": "UTC",
            **dict(self._kwargs.get("session_parameters") or {}),
        }
        return kwargs

    def _open(self) -> SnowflakeConnection:
        # Telemetry probes of cloud metadata endpoints at every connect: off unless asked for.
        os.environ.setdefault("SNOWFLAKE_DISABLE_PLATFORM_DETECTION", "true")
        from activitybi import extras

        connector = extras.require("snowflake.connector", "snowflake", "the Snowflake warehouse")
        try:
            conn: SnowflakeConnection = connector.connect(**self._connect_kwargs())
            return conn
        except Exception as exc:
            if is_transient(exc):
                raise TransientError(f"cannot connect to Snowflake: {exc}") from exc
            raise

    def _conn(self, session: _Session) -> SnowflakeConnection:
        if session.conn is None:
            session.conn = self._open()
            self._close_stale(session)
        return session.conn

    @staticmethod
    def _close_stale(session: _Session) -> None:
        """Rolls back and closes connections dropped by a transient failure, once the server
        answers again: a transaction left open on Snowflake would keep its lock."""
        while session.stale:
            conn = session.stale.pop()
            try:
                conn.rollback()
            except Exception as exc:
                log.debug("rollback of a dropped Snowflake connection failed: %s", exc)
            try:
                conn.close()
            except Exception as exc:
                log.debug("close of a dropped Snowflake connection failed: %s", exc)

    @staticmethod
    def _drop(session: _Session, conn: SnowflakeConnection | None = None) -> None:
        """Sets the session's connection aside (to be rolled back and closed once the server
        answers again); only if it is still ``conn`` when one is given."""
        with session.lock:
            if session.conn is not None and (conn is None or session.conn is conn):
                session.stale.append(session.conn)
                session.conn = None

    @contextmanager
    def _using(self, session: _Session, *, exclusive: bool = True) -> Iterator[SnowflakeConnection]:
        """The session's connection, with failures mapped to TransientError (and the
        connection dropped) or re-raised as they are. ``exclusive`` holds the session for
        the whole block (a transaction); otherwise only while the connection is got, and
        threads share it (the connector allows that; queries are autocommit)."""
        if exclusive:
            session.lock.acquire()
        try:
            with session.lock:
                conn = self._conn(session)
            try:
                yield conn
            except TransientError:
                self._drop(session, conn)
                raise
            except QueryStopped:
                raise
            except Exception as exc:
                if is_transient(exc):
                    self._drop(session, conn)
                    raise TransientError(f"Snowflake unavailable: {exc}") from exc
                raise
        finally:
            if exclusive:
                session.lock.release()

    def _run(
        self,
        conn: SnowflakeConnection,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        tag: str | None = None,
        timeout: int | None = None,
    ) -> SnowflakeCursor:
        cur = conn.cursor()
        cur.execute(
            sql,
            tuple(params) if params else None,
            timeout=timeout,
            _statement_params={"QUERY_TAG": tag or self.query_tag},
        )
        return cur

    # -- Warehouse protocol ------------------------------------------------------------

    def init(self) -> list[str]:
        """Applies ddl/snowflake/001-004 (idempotent), on a connection of its own (a CREATE
        WAREHOUSE switches the session to the new warehouse). With ``emulator=True`` the
        statements fakesnow cannot run are skipped and listed in `skipped`."""
        from snowflake.connector.util_text import split_statements

        self.skipped = []
        names: list[str] = []
        conn = self._open()
        try:
            for name, text in ddl_files("snowflake"):
                try:
                    if not self.emulator:
                        conn.execute_string(text, _statement_params={"QUERY_TAG": f"{self.query_tag}:init"})
                    else:
                        for statement, _is_put in split_statements(StringIO(text)):
                            kind = _statement_kind(statement)
                            if not kind:
                                continue
                            if any(p.match(kind) for p in EMULATOR_UNSUPPORTED):
                                self.skipped.append(f"{name}: {kind[:120]}")
                                continue
                            self._run(conn, statement, tag=f"{self.query_tag}:init")
                except Exception as exc:
                    if is_transient(exc):
                        raise TransientError(f"Snowflake unavailable: {exc}") from exc
                    raise
                names.append(name)
        finally:
            try:
                conn.close()
            except Exception as exc:
                log.debug("close after init failed: %s", exc)
        for item in self.skipped:
            log.warning("emulator: skipped %s", item)
        return names

    def load(self, rows: Sequence[StreamRow], queue_id: str, checkpoint: Checkpoint | None) -> int:
        if not rows and checkpoint is None:
            return 0
        lines, batch = _landing_lines(rows, queue_id, checkpoint)
        tag = f"{self.query_tag}:load:{queue_id}:{batch}"
        with self._using(self._load) as conn:
            if lines:
                self._stage(conn, lines, batch, tag)
            return self._commit_batch(conn, batch, queue_id, checkpoint, tag)

    def _step(self, name: str) -> None:
        if self._after_step is not None:
            self._after_step(name)

    def _stage(self, conn: SnowflakeConnection, lines: list[bytes], batch: str, tag: str) -> None:
        """PUT the batch's NDJSON into @%_activitybi_landing/<batch>/ and COPY it in."""
        with tempfile.TemporaryDirectory(prefix="activitybi-sf-") as tmp:
            path = Path(tmp) / f"{batch}.ndjson"
            path.write_bytes(b"\n".join(lines) + b"\n")
            cur = conn.cursor()
            cur.execute(
                f"PUT 'file://{path.as_posix()}' @%{LANDING}/{batch}/ AUTO_COMPRESS = TRUE OVERWRITE = TRUE",
                _statement_params={"QUERY_TAG": tag},
                _show_progress_bar=False,
            )
        self._step("put")
        # FORCE: load this file now even if a crashed attempt loaded the same name before
        # (its lines may have been cleaned away since); duplicates within the batch are
        # dropped by the INSERTs' QUALIFY.
        cur = self._run(
            conn,
            f"COPY INTO {LANDING} FROM @%{LANDING}/{batch}/"
            " FILE_FORMAT = (TYPE = JSON) FORCE = TRUE PURGE = TRUE",
            tag=tag,
        )
        names = [d.name.lower() for d in cur.description or []]
        loaded = 0
        if "rows_loaded" in names:
            at = names.index("rows_loaded")
            loaded = sum(int(r[at] or 0) for r in cur.fetchall())
        if loaded != len(lines):
            raise TransientError(
                f"COPY INTO {LANDING} loaded {loaded} of {len(lines)} lines of batch {batch}"
            )
        self._step("copy")

    def _commit_batch(
        self,
        conn: SnowflakeConnection,
        batch: str,
        queue_id: str,
        checkpoint: Checkpoint | None,
        tag: str,
    ) -> int:
        ckpt = None if checkpoint is None else orjson.dumps(checkpoint).decode()
        orphans_before = int(time.time()) - ORPHAN_AGE_S
        self._run(conn, "BEGIN", tag=tag)
        try:
            self._step("begin")
            if ckpt is not None:
                self._run(conn, _UPDATE_CHECKPOINT, (ckpt, queue_id), tag=tag)
                self._step("checkpoint_update")
            cur = self._run(conn, _REPLACE_STREAM, (batch,), tag=tag)
            inserted = cur.rowcount or 0
            self._step("replace")
            cur = self._run(conn, _INSERT_STREAM, (batch,), tag=tag)
            inserted += cur.rowcount or 0
            self._step("stream")
            self._run(conn, _INSERT_ATOMS, (batch,), tag=tag)
            self._step("atoms")
            if ckpt is not None:
                self._run(conn, _INSERT_CHECKPOINT, (queue_id, ckpt, queue_id), tag=tag)
                self._step("checkpoint_insert")
            self._run(conn, _DELETE_LANDED, (batch, queue_id, orphans_before), tag=tag)
            self._step("landing_delete")
            self._run(conn, "COMMIT", tag=tag)
        except Exception as exc:
            if not is_transient(exc):
                # The server is there: end the transaction now. (After a transient failure
                # the connection is dropped and rolled back once the server answers again.)
                try:
                    conn.rollback()
                except Exception as rollback_exc:
                    log.warning("rollback after a failed load failed: %s", rollback_exc)
                if 100000 <= (getattr(exc, "errno", 0) or 0) < 101000:
                    # Snowflake's data errors (a value it cannot convert): the rows' fault.
                    raise DataError(str(exc)) from exc
            raise
        self._step("commit")
        return inserted

    def refresh_context(self) -> None:
        """On Snowflake the task of 004_governance.sql refreshes context_cache every 5
        minutes (only when events arrived), so this does nothing there: running the MERGE
        here too would bill the warehouse again for the same work. On the emulator, which
        has no tasks, it runs the task's MERGE for every customer."""
        if not self.emulator:
            return
        with self._using(self._load) as conn:
            self._run(conn, _REFRESH_CONTEXT, tag=f"{self.query_tag}:refresh_context")

    def checkpoint(self, queue_id: str) -> Checkpoint | None:
        with self._using(self._load) as conn:
            cur = self._run(
                conn,
                "SELECT checkpoint FROM _activitybi_checkpoints WHERE queue_id = ?",
                (queue_id,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        value = row[0]
        parsed: Checkpoint = orjson.loads(value) if isinstance(value, str | bytes) else value
        return parsed

    def execute(
        self,
        sql: str,
        params: Params = (),
        *,
        query_tag: str | None = None,
        timeout: int | None = None,
    ) -> QueryResult:
        """Runs one statement; parameters are bound by the server (qmark: ``?``, or ``:1``).
        Column names come back lower case when Snowflake made them upper case (unquoted
        identifiers), as DuckDB names them. ``query_tag`` tags this statement (e.g.
        ``cdesk_<uuid>``); ``timeout`` (s) cancels it and bounds its retries."""
        values = _positional(params)
        with self._using(self._query, exclusive=False) as conn:
            cur = self._run(conn, sql, values, tag=query_tag, timeout=timeout)
            return _result(cur)

    def run_query(
        self,
        sql: str,
        params: Params,
        *,
        timeout_s: float,
        query_tag: str,
        cancelled: Callable[[], bool],
        progress: Callable[[float], None],
    ) -> QueryResult:
        """Submits the query asynchronously (tagged ``query_tag``, with a server-side
        ``STATEMENT_TIMEOUT_IN_SECONDS`` as a backstop), polls its status, and cancels it
        (``SYSTEM$CANCEL_QUERY``) past ``timeout_s`` or when ``cancelled()``: QueryStopped.
        Snowflake tells no progress through the connector, so ``progress`` is not called."""
        values = _positional(params)
        if cancelled():
            raise QueryStopped("cancelled")
        deadline = time.monotonic() + timeout_s
        with self._using(self._query, exclusive=False) as conn:
            cur = conn.cursor()
            try:
                cur.execute_async(
                    sql,
                    values or None,
                    _statement_params={
                        "QUERY_TAG": query_tag,
                        "STATEMENT_TIMEOUT_IN_SECONDS": str(max(1, math.ceil(timeout_s))),
                    },
                )
                qid = cur.sfqid
                if qid is None:
                    raise TransientError("Snowflake returned no query id")
                pause = 0.05
                while conn.is_still_running(conn.get_query_status_throw_if_error(qid)):
                    reason = (
                        "cancelled" if cancelled() else "timeout" if time.monotonic() > deadline else None
                    )
                    if reason:
                        _cancel(conn, qid)
                        raise QueryStopped(reason)
                    time.sleep(pause)
                    pause = min(pause * 1.5, 1.0)
                cur.get_results_from_sfqid(qid)
                return _result(cur)
            except Exception as exc:
                errno = getattr(exc, "errno", None)
                if errno == 630:  # the server's statement timeout
                    raise QueryStopped("timeout") from exc
                raise

    def close(self) -> None:
        for session in (self._load, self._query):
            with session.lock:
                self._drop(session)
                while session.stale:
                    conn = session.stale.pop()
                    try:
                        conn.close()
                    except Exception as exc:
                        log.debug("close failed: %s", exc)


def _column_name(name: str) -> str:
    return name.lower() if name.isupper() else name


def _positional(params: Params) -> tuple[Any, ...]:
    if isinstance(params, Mapping):
        raise TypeError("the Snowflake warehouse binds positional parameters ('?'), not a mapping")
    return tuple(params)


def _result(cur: SnowflakeCursor) -> QueryResult:
    # Rows first: after get_results_from_sfqid, the description comes with the first fetch.
    rows = [tuple(r) for r in cur.fetchall()]
    columns = [_column_name(d.name) for d in cur.description or []]
    return QueryResult(columns=columns, rows=rows)


def _cancel(conn: SnowflakeConnection, qid: str) -> None:
    """Best effort: the server's statement timeout stops the query anyway."""
    try:
        conn.cursor().execute("SELECT SYSTEM$CANCEL_QUERY(?)", (qid,))
    except Exception as exc:
        log.warning("could not cancel query %s: %s", qid, exc)


def _batch_id(queue_id: str, rows: Sequence[StreamRow], checkpoint: Checkpoint | None) -> str:
    """The same batch resent (after a crash) gets the same id, so its staged file is
    overwritten rather than left behind."""
    h = hashlib.blake2b(digest_size=16)
    h.update(queue_id.encode())
    h.update(b"\0")
    h.update(orjson.dumps(checkpoint, option=orjson.OPT_SORT_KEYS))
    for row in rows:
        h.update(b"\0")
        h.update(row.activity_id.encode())
    return h.hexdigest()


def _landing_lines(
    rows: Sequence[StreamRow], queue_id: str, checkpoint: Checkpoint | None
) -> tuple[list[bytes], str]:
    batch = _batch_id(queue_id, rows, checkpoint)
    now = int(time.time())
    lines: list[bytes] = []
    n = 0
    for row in rows:
        line: dict[str, Any] = {"_q": queue_id, "_b": batch, "_at": now, "_n": n, "k": "s"}
        for col in LOADED_COLUMNS:
            value = getattr(row, col)
            if value is not None:  # absent, so it lands as SQL NULL (not a JSON null)
                line[col] = value
        lines.append(orjson.dumps(line))
        n += 1
        atom = row.insight()
        if atom is None:
            continue
        missing = [k for k in _ATOM_REQUIRED if atom.get(k) is None]
        if missing:
            log.warning(
                "insight %s lacks %s: loaded as an event, not as an insight atom",
                row.activity_id,
                ", ".join(missing),
            )
            continue
        entry = {k: v for k, v in atom.items() if v is not None}
        lines.append(orjson.dumps({"_q": queue_id, "_b": batch, "_at": now, "_n": n, "k": "a", **entry}))
        n += 1
    return lines, batch
