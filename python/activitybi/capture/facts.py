"""The vocabulary every capture path writes: one builder per fact, deterministic ids.

A fact (a prompt, a model call, a tool call) may be reported by several sources: the MCP
server itself, the recording proxy, a Claude Code hook, OpenTelemetry, a transcript. Each
builder makes the queue event of one fact with the `feature_json` keys analysts rely on
(the README's table), and `fact_id` makes its `activity_id` from the customer, the kind of
fact and the source's own stable key (request id, tool-use id, prompt id). So importing
twice adds nothing, and the same call seen by three sources is one row: which source's
figures the row keeps is decided at load time by `SOURCE_RANK` (see
`activitybi.warehouse.duckdb` and the README, "One row per fact").
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any, Literal

import orjson

from activitybi._core import fact_id as _id

Source = Literal["mcp", "proxy", "hook", "otel", "transcript"]
SOURCES: tuple[Source, ...] = ("mcp", "proxy", "hook", "otel", "transcript")

SOURCE_RANK: dict[str, int] = {"otel": 3, "hook": 2, "transcript": 1}
"""Who wins when two sources report the same fact (same customer and activity_id): the
higher rank replaces a lower one whatever the arrival order; an equal or lower rank is
ignored. OpenTelemetry's `api_request` holds the figures Claude Code billed; transcripts
can hold streaming placeholders for token counts. Any other `_source` ranks 0."""

ASKED_QUESTION = "asked_question"
CALLED_MODEL = "called_model"
CALLED_TOOL = "called_tool"


Stamp = dt.datetime | str
"""A fact's time: a datetime (naive is UTC), or a string already in the queue's form (from
`iso_ts`), which high-volume paths make without a datetime."""


def fact_id(customer: str, kind: str, *source_key: str) -> str:
    """The activity_id of one fact: `<kind>:<32 hex>`, a hash of the customer (so one
    customer's ids never collide with, or reveal, another's), the kind and the source key.
    Matches the queue's id pattern `[A-Za-z0-9_.:-]{1,128}`."""
    if len(source_key) == 1:
        return _id(customer, kind, source_key[0])  # the Rust capture paths' own function
    if not source_key or not all(source_key):
        raise ValueError(f"a {kind} fact needs a non-empty source key")
    # The JSON array of the three is what is hashed: ids already stored depend on it.
    digest = hashlib.blake2b(orjson.dumps((customer, kind, *source_key)), digest_size=16)
    return kind + ":" + digest.hexdigest()


def iso_ts(ts: dt.datetime) -> str:
    """The queue's own timestamp form (UTC, milliseconds, `Z`); a naive time is UTC.
    `isoformat` rather than `strftime`: it is several times faster, and this runs per fact."""
    if ts.tzinfo is not None and ts.tzinfo is not dt.UTC:
        ts = ts.astimezone(dt.UTC)
    return ts.isoformat(timespec="milliseconds")[:23] + "Z"


def event(
    activity: str,
    *,
    activity_id: str,
    customer: str,
    source: Source,
    ts: Stamp,
    session_id: str | None,
    features: dict[str, Any],
) -> dict[str, Any]:
    """A queue event: `None` features are left out; `source` goes into feature_json and
    `_source` (the load's precedence reads `_source`)."""
    feature_json = {k: v for k, v in features.items() if v is not None}
    return _event(activity, activity_id, customer, source, ts, session_id, feature_json)


def _event(
    activity: str,
    activity_id: str,
    customer: str,
    source: Source,
    ts: Stamp,
    session_id: str | None,
    feature_json: dict[str, Any],
) -> dict[str, Any]:
    """`event` of features without `None`s, positionally: the builders run once per fact."""
    feature_json["source"] = source
    out = {
        "activity_id": activity_id,
        "ts": ts if isinstance(ts, str) else iso_ts(ts),
        "activity": activity,
        "customer": customer,
        "feature_json": feature_json,
        "_source": source,
    }
    if session_id is not None:
        feature_json["session_id"] = session_id
        out["_session_id"] = session_id
    return out


def _with(feature_json: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Adds the extra features that are not `None` (the builders' own come first)."""
    for k, v in extra.items():
        if v is not None:
            feature_json[k] = v
    return feature_json


def asked_question(
    *,
    customer: str,
    source: Source,
    ts: Stamp,
    prompt_id: str,
    session_id: str | None,
    prompt_length: int | None,
    prompt: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A user prompt; pass `prompt` only when content capture is on."""
    features = _with({}, {"prompt_length": prompt_length, "prompt": prompt})
    activity_id = _id(customer, ASKED_QUESTION, prompt_id)
    return _event(ASKED_QUESTION, activity_id, customer, source, ts, session_id, _with(features, extra))


def called_model(
    *,
    customer: str,
    source: Source,
    ts: Stamp,
    request_id: str,
    session_id: str | None,
    model: str | None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    cache_creation_input_tokens: int | None = None,
    cache_read_input_tokens: int | None = None,
    cost_usd: float | None = None,
    agent: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One model API response, keyed by its request id; `agent` names a subagent's call."""
    features = _with(
        {},
        {
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_creation_input_tokens,
            "cache_read_input_tokens": cache_read_input_tokens,
            "cost_usd": cost_usd,
            "request_id": request_id,
            "agent": agent,
        },
    )
    activity_id = _id(customer, CALLED_MODEL, request_id)
    return _event(CALLED_MODEL, activity_id, customer, source, ts, session_id, _with(features, extra))


def called_tool(
    *,
    customer: str,
    source: Source,
    ts: Stamp,
    tool_use_id: str,
    session_id: str | None,
    tool: str | None,
    outcome: str,
    latency_ms: float | None = None,
    mcp_server: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One tool call, keyed by its tool-use id; `outcome` is `ok` or the error."""
    features = _with(
        {},
        {
            "tool": tool,
            "latency_ms": latency_ms,
            "outcome": outcome,
            "mcp_server": mcp_server,
            "tool_use_id": tool_use_id,
        },
    )
    activity_id = _id(customer, CALLED_TOOL, tool_use_id)
    return _event(CALLED_TOOL, activity_id, customer, source, ts, session_id, _with(features, extra))
