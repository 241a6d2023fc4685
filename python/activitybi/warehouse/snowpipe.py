"""The streaming load mode into Snowflake (`ACTIVITYBI_SNOWFLAKE_LOAD=streaming`): the
``snowpipe-streaming`` SDK, one channel per queue, in place of PUT + COPY INTO.

Exactly once the way the Snowflake Kafka connector does it: every batch is appended with
the queue checkpoint that follows it as its offset token (JSON of the checkpoint), and
Snowflake commits rows and token together. On start, `resume` opens the queue's channel
(always the same name, so a restart takes over from the previous process) and returns the
last committed checkpoint: the uploader reads the queue from there, so what was appended
but not committed is sent again and what was committed is not. The queue is acknowledged
only once the committed token covers the batch.

The channel lands rows in ``claude_stream`` (through the table's default pipe). Insight
rows, rare, go through `SnowflakeWarehouse.load` instead (idempotent on activity_id, and it
also writes their `insight_atoms`), before the rest of their batch is streamed.
`_activitybi_checkpoints` is not written in this mode: the channel's token is the
checkpoint. The SDK (in the `snowflake` extra) is imported lazily and cannot run offline:
tests/test_snowflake.py drives this module with a fake of its offset-token protocol.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from activitybi import extras
from activitybi.events import INSIGHT_ACTIVITY, StreamRow
from activitybi.warehouse import Checkpoint, TransientError, Warehouse

_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_REOPEN_CODES = frozenset({"INVALID_CHANNEL_ERROR", "CLOSED_CHANNEL_ERROR", "CHANNEL_NOT_FOUND"})
_PERMANENT_500 = frozenset({"FATAL"})


def offset_token(checkpoint: Checkpoint) -> str:
    """The offset token of a checkpoint: its JSON, keys sorted (stable text)."""
    return orjson.dumps(checkpoint, option=orjson.OPT_SORT_KEYS).decode()


def parse_token(token: str | None) -> Checkpoint | None:
    if token is None:
        return None
    value = orjson.loads(token)
    if not isinstance(value, dict):
        raise ValueError(f"offset token is not a checkpoint: {token[:80]!r}")
    return {str(k): int(v) for k, v in value.items()}


def covers(committed: Checkpoint | None, expected: Checkpoint) -> bool:
    """Whether the committed checkpoint is at or past ``expected``: commits come in batches,
    so the committed token may have jumped past the one waited for."""
    if committed is None:
        return False
    return all(committed.get(key, -1) >= value for key, value in expected.items())


def channel_name(queue_id: str, prefix: str = "activitybi") -> str:
    """One stable channel name per queue (Snowflake channel names are identifiers)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", queue_id)
    return f"{prefix}_{safe}"


class SnowpipeStreamer:
    """Appends stream rows to one channel per queue; ``client`` is a
    ``snowflake.ingest.streaming.StreamingIngestClient`` (or a fake of it in tests)."""

    def __init__(self, client: Any, *, prefix: str = "activitybi") -> None:
        self.client = client
        self.prefix = prefix
        self._channels: dict[str, Any] = {}

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, table: str = "claude_stream"
    ) -> SnowpipeStreamer:
        """Key-pair authentication (the SDK's JWT): ``SNOWFLAKE_ACCOUNT``,
        ``SNOWFLAKE_USER``, ``SNOWFLAKE_PRIVATE_KEY_PATH``, ``SNOWFLAKE_DATABASE``,
        ``SNOWFLAKE_SCHEMA``, optional ``SNOWFLAKE_ROLE`` and ``SNOWFLAKE_HOST``."""
        env = os.environ if environ is None else environ
        missing = [
            n
            for n in (
                "SNOWFLAKE_ACCOUNT",
                "SNOWFLAKE_USER",
                "SNOWFLAKE_PRIVATE_KEY_PATH",
                "SNOWFLAKE_DATABASE",
                "SNOWFLAKE_SCHEMA",
            )
            if not env.get(n)
        ]
        if missing:
            raise ValueError("snowpipe streaming needs " + ", ".join(missing))
        sdk = extras.require("snowflake.ingest.streaming", "snowflake", "Snowpipe Streaming")
        account = env["SNOWFLAKE_ACCOUNT"]
        host = env.get("SNOWFLAKE_HOST") or f"{account}.snowflakecomputing.com"
        properties = {
            "account": account,
            "user": env["SNOWFLAKE_USER"],
            "url": f"https://{host}",
            "private_key_file": os.path.expanduser(env["SNOWFLAKE_PRIVATE_KEY_PATH"]),
        }
        if env.get("SNOWFLAKE_ROLE"):
            properties["role"] = env["SNOWFLAKE_ROLE"]
        client = sdk.StreamingIngestClient.from_table(
            "activitybi",
            env["SNOWFLAKE_DATABASE"],
            env["SNOWFLAKE_SCHEMA"],
            table,
            properties=properties,
        )
        return cls(client)

    def _channel(self, queue_id: str) -> Any:
        channel = self._channels.get(queue_id)
        if channel is None:
            name = channel_name(queue_id, self.prefix)
            channel, _status = self._guard(lambda: self.client.open_channel(name), queue_id)
            self._channels[queue_id] = channel
        return channel

    def _guard(self, call: Any, queue_id: str) -> Any:
        """SDK errors that may pass become TransientError; a channel that another process
        reopened (ours is superseded) or that was closed is reopened on the next call."""
        try:
            return call()
        except Exception as exc:
            code = getattr(getattr(exc, "error_code", None), "name", None) or str(
                getattr(exc, "error_code", "")
            )
            http = getattr(exc, "http_status_code", None)
            if code in _REOPEN_CODES:
                self._channels.pop(queue_id, None)
                raise TransientError(f"snowpipe channel of {queue_id} reopened: {exc}") from exc
            if http in _TRANSIENT_HTTP and code not in _PERMANENT_500:
                raise TransientError(f"snowpipe streaming unavailable: {exc}") from exc
            if isinstance(exc, OSError | TimeoutError):
                raise TransientError(f"snowpipe streaming unavailable: {exc}") from exc
            raise

    def resume(self, queue_id: str) -> Checkpoint | None:
        """Opens the queue's channel and returns its last committed checkpoint (None for a
        channel that never committed): read the queue from there."""
        channel = self._channel(queue_id)
        token = self._guard(channel.get_latest_committed_offset_token, queue_id)
        return parse_token(token)

    def append(self, rows: Sequence[StreamRow], queue_id: str, checkpoint: Checkpoint) -> None:
        """Appends the batch; ``checkpoint`` (the queue position after it) is its offset
        token. Fire and forget: `wait_committed` says when it is in the table."""
        channel = self._channel(queue_id)
        token = offset_token(checkpoint)
        payload = [r.columns() for r in rows]
        self._guard(lambda: channel.append_rows(payload, end_offset_token=token), queue_id)

    def wait_committed(self, queue_id: str, checkpoint: Checkpoint, timeout_s: float) -> None:
        """Blocks until the committed token covers ``checkpoint``, then the queue may be
        acknowledged up to it. Past ``timeout_s``: TransientError (resume, and send again
        from the committed checkpoint)."""
        channel = self._channel(queue_id)
        self._guard(
            lambda: channel.wait_for_commit(
                lambda token: covers(parse_token(token), checkpoint),
                timeout_seconds=max(1, math.ceil(timeout_s)),  # the SDK takes whole seconds
            ),
            queue_id,
        )

    def forget(self, queue_id: str) -> None:
        """Drops the queue's channel handle: the next call opens the channel again."""
        self._channels.pop(queue_id, None)

    def close(self) -> None:
        for channel in self._channels.values():
            # Best effort: the service times channels out.
            with contextlib.suppress(Exception):
                channel.close()
        self._channels.clear()
        self.client.close()


class StreamingLoad:
    """The uploader's `load` and `checkpoint` through a channel (see the module's text)."""

    def __init__(self, warehouse: Warehouse, streamer: SnowpipeStreamer, *, commit_timeout_s: float = 60):
        self.warehouse = warehouse
        self.streamer = streamer
        self.commit_timeout_s = commit_timeout_s
        self._held: list[StreamRow] = []
        self._reopened = False

    def checkpoint(self, queue_id: str) -> Checkpoint | None:
        return self.streamer.resume(queue_id)

    def load(self, rows: Sequence[StreamRow], queue_id: str, checkpoint: Checkpoint | None) -> int:
        """Streams the rows with `checkpoint` as their token and waits for the commit.
        Rows given without a checkpoint (the uploader splitting a refused batch) are held
        and sent with the next call that has one: a row committed without a token would
        be sent again after a crash. After a failure the channel is opened again, which
        discards what the old handle appended but Snowflake did not commit, and the batch
        is sent again only if the committed token does not cover it already."""
        insights = [r for r in rows if r.activity == INSIGHT_ACTIVITY]
        inserted = self.warehouse.load(insights, queue_id, None) if insights else 0
        stream = [r for r in rows if r.activity != INSIGHT_ACTIVITY]
        if checkpoint is None:
            self._held.extend(stream)
            return inserted
        batch = [*self._held, *stream]
        try:
            if not (self._reopened and covers(self.streamer.resume(queue_id), checkpoint)):
                self.streamer.append(batch, queue_id, checkpoint)
                self.streamer.wait_committed(queue_id, checkpoint, self.commit_timeout_s)
        except TransientError:
            self.streamer.forget(queue_id)
            self._reopened = True
            raise
        self._held, self._reopened = [], False
        return inserted + len(batch)

    def close(self) -> None:
        self.streamer.close()
