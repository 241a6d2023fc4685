"""The registry of named query templates.

A template has a description, typed parameters (type, range, pattern, default) and SQL
written here, for DuckDB, with named placeholders. Values are always bound by the driver,
never formatted into the text. The customer is bound too, as `$customer`, from the
connection: every template filters on it, and no parameter can name another customer.

These templates are the only source of every figure a person sees (`activitybi report`,
its HTML page, cards), so the report and the model's own queries can never disagree.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

_PLACEHOLDER = re.compile(r"\$([a-z_]+)")
"""A named value in a template's SQL (`$since`); bound, never formatted."""


class TemplateError(ValueError):
    """A template that does not exist, or parameters it does not take."""


class Everyone:
    """The scope of a reader who holds the whole warehouse already (the local report,
    which opens the DuckDB file itself): the customer filter reads TRUE. Tickets never
    carry it, since their customer is the connection's identity, always a `str`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EVERYONE"


EVERYONE = Everyone()
Scope = str | Everyone


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str  # "date" | "int" | "str" | "json"
    description: str
    default: Any = None
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    max_length: int = 200

    def check(self, value: Any) -> Any:
        """The value, typed, or TemplateError saying what is wrong with it."""
        where = f"parameter '{self.name}'"
        if self.type == "date":
            if not isinstance(value, str):
                raise TemplateError(f"{where} must be a date string YYYY-MM-DD")
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise TemplateError(f"{where} must be a date YYYY-MM-DD, not {value[:40]!r}") from None
        if self.type == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise TemplateError(f"{where} must be an integer")
            if self.minimum is not None and value < self.minimum:
                raise TemplateError(f"{where} must be at least {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise TemplateError(f"{where} must be at most {self.maximum}")
            return value
        if self.type == "str":
            if not isinstance(value, str):
                raise TemplateError(f"{where} must be a string")
            if len(value) > self.max_length:
                raise TemplateError(f"{where} is longer than {self.max_length} characters")
            if self.pattern and not re.fullmatch(self.pattern, value):
                raise TemplateError(f"{where} must match {self.pattern}")
            return value
        if self.type == "json":
            if not isinstance(value, dict):
                raise TemplateError(f"{where} must be a JSON object")
            return value
        raise AssertionError(self.type)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "description": self.description,
            "required": self.required,
        }
        for key in ("default", "minimum", "maximum", "pattern"):
            if (v := getattr(self, key)) is not None:
                out[key] = v() if callable(v) else v
        if isinstance(out.get("default"), dt.date):
            out["default"] = out["default"].isoformat()
        return out


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    description: str
    params: tuple[Param, ...]
    sql: str = ""
    build: Callable[[dict[str, Any], str], tuple[str, list[Any]]] | None = field(default=None, compare=False)

    def bind(self, raw: Mapping[str, Any], customer: Scope) -> tuple[str, list[Any]]:
        """(SQL text with `?` placeholders, bound values) for these parameters and this
        customer (or `EVERYONE`): positional, as both DuckDB and Snowflake's connector bind them."""
        values = check_params(self, raw)
        sql = self.sql
        if isinstance(customer, Everyone):
            sql = sql.replace(MINE, "TRUE").replace(MY_ATOMS, "TRUE")
            if self.build is not None or "$customer" in sql:  # fail closed
                raise TemplateError(f"template '{self.name}' is read one customer at a time")
        elif self.build is not None:
            return self.build(values, customer)
        named = {**values, "customer": customer}
        return _PLACEHOLDER.sub("?", sql), [named[n] for n in _PLACEHOLDER.findall(sql)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "params": [p.describe() for p in self.params],
        }


def check_params(template: Template, raw: Mapping[str, Any]) -> dict[str, Any]:
    known = {p.name for p in template.params}
    extra = sorted(set(raw) - known)
    if extra:
        raise TemplateError(
            f"template '{template.name}' takes no parameter {', '.join(map(repr, extra))}"
            f" (it takes: {', '.join(sorted(known)) or 'none'})"
        )
    values: dict[str, Any] = {}
    for p in template.params:
        if p.name in raw and raw[p.name] is not None:
            values[p.name] = p.check(raw[p.name])
        elif p.required:
            raise TemplateError(f"template '{template.name}' needs parameter '{p.name}'")
        else:
            values[p.name] = p.default() if callable(p.default) else p.default
    return values


def params_hash(template: str, params: Mapping[str, Any]) -> str:
    """A stable hash of what was asked (for the audit log and the provenance of insights)."""
    canonical = orjson.dumps(
        {"template": template, "params": params}, option=orjson.OPT_SORT_KEYS, default=str
    )
    return hashlib.sha256(canonical).hexdigest()


def _days_ago(days: int) -> Callable[[], dt.date]:
    return lambda: dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)


SINCE = Param("since", "date", "First day included (UTC).", default=_days_ago(30))
LIMIT = Param("limit", "int", "Most rows returned.", default=100, minimum=1, maximum=10_000)
_BUCKETS = ("second", "minute", "hour", "day", "week", "month")
BUCKET = Param("bucket", "str", "Width of a time bucket.", default="day", pattern="|".join(_BUCKETS))
_BUCKET_START = (
    "CASE $bucket " + " ".join(f"WHEN '{u}' THEN date_trunc('{u}', ts)" for u in _BUCKETS) + " END"
)
"""The start of `ts`'s bucket: the unit is bound, and Snowflake truncates only to a
constant unit, so each allowed unit is a branch."""
MINE = "(customer = $customer OR (customer IS NULL AND anonymous_customer_id = $customer))"
"""`coalesce(customer, anonymous_customer_id) = $customer`, written so that DuckDB pushes it
into the table scan: a customer's query then reads its own rows' other columns, not every
customer's (at 10,000,000 events, 25x faster for a typical customer; docs/benchmarks.md)."""
MY_ATOMS = "customer_id = $customer"
FAILED = "(feature_json->>'outcome' IS NOT NULL AND feature_json->>'outcome' <> 'ok')"
"""A tool call that failed: its outcome is known and is not `ok`. A call whose source did
not know the outcome (a hook that saw only the start) is not counted as an error."""
_LATENCY = "TRY_CAST(feature_json->>'latency_ms' AS DOUBLE)"
_HAS_MODEL = "(feature_json->>'model' IS NOT NULL AND activity <> 'recorded_metric')"
"""A model call: an event carrying a model's figures (`called_model`, or an exchange the
model logged itself). A recorded metric names a model too, but it is a daily total."""
_SPEND = ",\n       ".join(
    [
        *(
            f"coalesce(sum(TRY_CAST(feature_json->>'{k}' AS BIGINT)), 0) AS {k}"
            for k in (
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            )
        ),
        "coalesce(round(sum(TRY_CAST(feature_json->>'cost_usd' AS DOUBLE)), 6), 0) AS cost_usd",
    ]
)
"""Tokens (input, output, cache write, cache read) and cost of the model calls in a group."""


def _tool_stats(name: str, key_sql: str, key: str, description: str) -> Template:
    """Tool calls grouped by `key_sql`: count, p50/p95 latency in ms, errors, error rate."""
    return Template(
        name,
        f"{description} An error is a call whose outcome is known and is not 'ok'.",
        (SINCE,),
        f"""SELECT {key_sql} AS {key}, count(*) AS calls,
       round(quantile_cont({_LATENCY}, 0.5), 3) AS p50_ms,
       round(quantile_cont({_LATENCY}, 0.95), 3) AS p95_ms,
       count(*) FILTER (WHERE {FAILED}) AS errors,
       round(avg(CASE WHEN {FAILED} THEN 1 ELSE 0 END), 4) AS error_rate
FROM claude_stream WHERE {MINE} AND activity = 'called_tool' AND ts >= $since
GROUP BY 1 ORDER BY calls DESC, {key}""",
    )


def _spend(name: str, key_sql: str, key: str, description: str, *extra: Param) -> Template:
    """Model calls (events carrying feature_json.model) grouped by `key_sql` and by
    subagent, so that a subagent's spend stays apart from the main thread's."""
    limit = " LIMIT $limit" if LIMIT in extra else ""
    return Template(
        name,
        f"{description} Model calls are events with feature_json.model (called_model, not "
        "recorded_metric); "
        "`agent` is feature_json.agent for a subagent's calls, null for the main thread.",
        (SINCE, *extra),
        f"""SELECT {key_sql} AS {key}, feature_json->>'agent' AS agent, count(*) AS exchanges,
       {_SPEND}
FROM claude_stream WHERE {MINE} AND ts >= $since AND {_HAS_MODEL}
GROUP BY 1, 2 ORDER BY cost_usd DESC, {key}, agent NULLS FIRST{limit}""",
    )


def _dataset(values: dict[str, Any], customer: str) -> tuple[str, list[Any]]:
    from activitybi.query.dataset import build_dataset_sql

    try:
        return build_dataset_sql(values["spec"], customer)
    except ValueError as e:
        raise TemplateError(f"parameter 'spec': {e}") from None


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "overview",
            "Totals: events, customers, sessions, first and last event, tool calls and "
            "errors, tokens and cost of model calls, ingestion lag p50/p95 (ms from `ts` to "
            "loaded), and when the newest of these rows was loaded.",
            (SINCE,),
            f"""SELECT count(*) AS events,
       count(DISTINCT coalesce(customer, anonymous_customer_id)) AS customers,
       count(DISTINCT _session_id) AS sessions, min(ts) AS first_at, max(ts) AS last_at,
       count(*) FILTER (WHERE activity = 'called_tool') AS tool_calls,
       count(*) FILTER (WHERE activity = 'called_tool' AND {FAILED}) AS tool_errors,
       count(*) FILTER (WHERE {_HAS_MODEL}) AS exchanges,
       coalesce(round(sum(TRY_CAST(feature_json->>'cost_usd' AS DOUBLE))
                FILTER (WHERE {_HAS_MODEL}), 6), 0) AS cost_usd,
       coalesce(sum(TRY_CAST(feature_json->>'input_tokens' AS BIGINT))
                FILTER (WHERE {_HAS_MODEL}), 0) AS input_tokens,
       coalesce(sum(TRY_CAST(feature_json->>'output_tokens' AS BIGINT))
                FILTER (WHERE {_HAS_MODEL}), 0) AS output_tokens,
       round(quantile_cont(date_diff('millisecond', ts, _ingested_at), 0.5), 1) AS lag_p50_ms,
       round(quantile_cont(date_diff('millisecond', ts, _ingested_at), 0.95), 1) AS lag_p95_ms,
       max(_ingested_at) AS last_loaded_at
FROM claude_stream WHERE {MINE} AND ts >= $since""",
        ),
        Template(
            "activity_counts",
            "Events per activity since a date, with the customers who did it and the first "
            "and last time each happened.",
            (SINCE,),
            f"""SELECT activity, count(*) AS events,
       count(DISTINCT coalesce(customer, anonymous_customer_id)) AS customers,
       min(ts) AS first_at, max(ts) AS last_at
FROM claude_stream WHERE {MINE} AND ts >= $since
GROUP BY activity ORDER BY events DESC, activity""",
        ),
        Template(
            "activity_over_time",
            "Events and tool calls per time bucket (second, minute, hour, day, week, month; "
            "UTC). Empty buckets are absent.",
            (SINCE, BUCKET),
            f"""SELECT {_BUCKET_START} AS at, count(*) AS events,
       count(*) FILTER (WHERE activity = 'called_tool') AS tool_calls
FROM claude_stream WHERE {MINE} AND ts >= $since
GROUP BY 1 ORDER BY 1""",
        ),
        Template(
            "usage_by_day",
            "Events, sessions and distinct activities per day.",
            (SINCE,),
            f"""SELECT CAST(ts AS DATE) AS day, count(*) AS events,
       count(DISTINCT _session_id) AS sessions, count(DISTINCT activity) AS activities
FROM claude_stream WHERE {MINE} AND ts >= $since
GROUP BY day ORDER BY day""",
        ),
        _tool_stats(
            "tool_latency",
            "coalesce(feature_json->>'tool', '?')",
            "tool",
            "Tool calls by tool: count, p50/p95 latency in ms, errors, error rate.",
        ),
        _tool_stats(
            "tool_calls_by_server",
            "feature_json->>'mcp_server'",
            "mcp_server",
            "Tool calls by MCP server (feature_json.mcp_server; null for calls not made "
            "through an MCP server): count, p50/p95 latency in ms, errors, error rate.",
        ),
        Template(
            "sessions",
            "Sessions, newest first: customer, source (the least, if several), start, end, "
            "events, questions, tool calls, model calls, tokens and cost.",
            (SINCE, LIMIT),
            f"""SELECT _session_id AS session_id,
       min(coalesce(customer, anonymous_customer_id)) AS customer,
       min(_source) AS source, min(ts) AS started_at, max(ts) AS ended_at,
       count(*) AS events, count(*) FILTER (WHERE activity = 'asked_question') AS questions,
       count(*) FILTER (WHERE activity = 'called_tool') AS tool_calls,
       count(*) FILTER (WHERE {_HAS_MODEL}) AS exchanges,
       coalesce(sum(TRY_CAST(feature_json->>'input_tokens' AS BIGINT))
                FILTER (WHERE {_HAS_MODEL}), 0) AS input_tokens,
       coalesce(sum(TRY_CAST(feature_json->>'output_tokens' AS BIGINT))
                FILTER (WHERE {_HAS_MODEL}), 0) AS output_tokens,
       coalesce(round(sum(TRY_CAST(feature_json->>'cost_usd' AS DOUBLE))
                FILTER (WHERE {_HAS_MODEL}), 6), 0) AS cost_usd
FROM claude_stream WHERE {MINE} AND ts >= $since AND _session_id IS NOT NULL
GROUP BY _session_id ORDER BY started_at DESC, session_id LIMIT $limit""",
        ),
        _spend("cost_by_model", "feature_json->>'model'", "model", "Tokens and cost by model."),
        _spend(
            "cost_by_project",
            "feature_json->>'project'",
            "project",
            "Tokens and cost by project (feature_json.project, e.g. Claude Code's working "
            "directory; null when unknown).",
        ),
        _spend(
            "cost_by_session",
            "_session_id",
            "session_id",
            "Tokens and cost by session, costliest first.",
            LIMIT,
        ),
        Template(
            "prompts_by_day",
            "User prompts (asked_question) per day: prompts, sessions, mean and longest "
            "prompt length in characters (feature_json.prompt_length).",
            (SINCE,),
            f"""SELECT CAST(ts AS DATE) AS day, count(*) AS prompts,
       count(DISTINCT coalesce(feature_json->>'session_id', _session_id)) AS sessions,
       round(avg(TRY_CAST(feature_json->>'prompt_length' AS DOUBLE)), 1) AS mean_prompt_length,
       max(TRY_CAST(feature_json->>'prompt_length' AS BIGINT)) AS longest_prompt_length
FROM claude_stream WHERE {MINE} AND activity = 'asked_question' AND ts >= $since
GROUP BY day ORDER BY day""",
        ),
        Template(
            "events_by_source",
            "Events by the path they came in on: feature_json.source (mcp, proxy, hook, "
            "otel, transcript) when the event says, else the `_source` column (the "
            "server's transport).",
            (SINCE,),
            f"""SELECT coalesce(feature_json->>'source', _source, '?') AS source, count(*) AS events,
       count(DISTINCT activity) AS activities, min(ts) AS first_at, max(ts) AS last_at
FROM claude_stream WHERE {MINE} AND ts >= $since
GROUP BY 1 ORDER BY events DESC, source""",
        ),
        Template(
            "metrics_by_day",
            "Claude Code metrics by day, from `recorded_metric` events. Shape of their "
            "feature_json: {name: the metric (e.g. claude_code.cost.usage, "
            "claude_code.token.usage, claude_code.lines_of_code.count, "
            "claude_code.commit.count, claude_code.pull_request.count, "
            "claude_code.active_time.total), value: a number, the amount for that day "
            "(a delta: cumulative series are converted before they are recorded), unit?: "
            "e.g. USD, tokens, s, model?: for cost and tokens, type?: the metric's kind "
            "attribute (input, output, cacheRead, cacheCreation; added, removed), day: "
            "YYYY-MM-DD (UTC) the value belongs to; else the event's ts}. Values are "
            "summed per day, name, model, type and unit.",
            (SINCE,),
            f"""SELECT coalesce(TRY_CAST(feature_json->>'day' AS DATE), CAST(ts AS DATE)) AS day,
       feature_json->>'name' AS name, feature_json->>'model' AS model,
       feature_json->>'type' AS type, feature_json->>'unit' AS unit,
       sum(TRY_CAST(feature_json->>'value' AS DOUBLE)) AS value, count(*) AS points
FROM claude_stream WHERE {MINE} AND activity = 'recorded_metric' AND ts >= $since
GROUP BY 1, 2, 3, 4, 5 ORDER BY day, name, model NULLS FIRST, type NULLS FIRST, unit""",
        ),
        Template(
            "recent_insights",
            "The newest insights learned (log_insight), newest first.",
            (SINCE, LIMIT),
            f"""SELECT ts, customer_id AS customer, subject, metric, value, provenance_query_hash
FROM insight_atoms WHERE {MY_ATOMS} AND ts >= $since
ORDER BY ts DESC, atom_id DESC LIMIT $limit""",
        ),
        Template(
            "insight_history",
            "Every value an insight took, newest first.",
            (
                Param("subject", "str", "The insight's subject.", required=True),
                Param("metric", "str", "The insight's metric.", required=True),
                SINCE,
                LIMIT,
            ),
            f"""SELECT ts, value, provenance_query_hash, atom_id
FROM insight_atoms WHERE {MY_ATOMS} AND subject = $subject AND metric = $metric
  AND ts >= $since
ORDER BY ts DESC, atom_id LIMIT $limit""",
        ),
        Template(
            "dataset",
            "ActivitySchema v2.0 dataset: a cohort activity with appended activities by "
            "relationship (first_ever, last_ever, nth_ever, first_before, last_before, nth_before, "
            "first_after, last_after, nth_after, first_in_between, last_in_between, nth_in_between, "
            "aggregate_all_ever, aggregate_before, aggregate_after, aggregate_in_between). Cohort rows "
            "are never dropped or duplicated by an append.",
            (
                Param(
                    "spec",
                    "json",
                    "{cohort: {activity, occurrence: all|first|last|nth, nth?, filters, "
                    "columns}, appends: [{activity, relationship, nth?, filters, columns}]}",
                    required=True,
                ),
            ),
            build=_dataset,
        ),
    )
}


def for_warehouse(sql: str, values: Sequence[Any], kind: str) -> tuple[str, list[Any]]:
    """A bound template (written once, for DuckDB) as the warehouse `kind` runs it:
    `activitybi.query.dialect` gives its Snowflake form, whose values stay bound too."""
    if kind == "duckdb":
        return sql, list(values)
    if kind != "snowflake":
        raise ValueError(f"no SQL dialect for warehouse {kind!r}")
    from activitybi.query.dialect import to_snowflake  # lazy: only Snowflake needs sqlglot

    return to_snowflake(sql, values)


def get(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(
            f"no template '{name}'; the templates are: {', '.join(sorted(TEMPLATES))}"
        ) from None
