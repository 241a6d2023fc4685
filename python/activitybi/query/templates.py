"""The registry of named query templates.

A template has a description, typed parameters (type, range, pattern, default) and SQL
written here, for DuckDB, with named placeholders. Values are always bound by the driver,
never formatted into the text. The customer is bound too, as `$customer`, from the
connection: every template filters on it, and no parameter can name another customer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

_PLACEHOLDER = re.compile(r"\$([a-z_]+)")
"""A named value in a template's SQL (`$since`); bound, never formatted."""


class TemplateError(ValueError):
    """A template that does not exist, or parameters it does not take."""


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

    def bind(self, raw: Mapping[str, Any], customer: str) -> tuple[str, list[Any]]:
        """(SQL text with `?` placeholders, bound values) for these parameters and this
        customer: positional, as both DuckDB and Snowflake's connector bind them."""
        values = check_params(self, raw)
        if self.build is not None:
            return self.build(values, customer)
        named = {**values, "customer": customer}
        return _PLACEHOLDER.sub("?", self.sql), [named[n] for n in _PLACEHOLDER.findall(self.sql)]

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
MINE = "coalesce(customer, anonymous_customer_id) = $customer"


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
            "activity_counts",
            "Events per activity since a date, with the first and last time each happened.",
            (SINCE,),
            f"""SELECT activity, count(*) AS events, min(ts) AS first_at, max(ts) AS last_at
FROM claude_stream WHERE {MINE} AND ts >= $since
GROUP BY activity ORDER BY events DESC, activity""",
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
        Template(
            "tool_latency",
            "Tool calls by tool: count, p50/p95 latency in ms, error rate.",
            (SINCE,),
            f"""SELECT feature_json->>'tool' AS tool, count(*) AS calls,
       round(quantile_cont(TRY_CAST(feature_json->>'latency_ms' AS DOUBLE), 0.5), 3) AS p50_ms,
       round(quantile_cont(TRY_CAST(feature_json->>'latency_ms' AS DOUBLE), 0.95), 3) AS p95_ms,
       round(avg(CASE WHEN feature_json->>'outcome' = 'ok' THEN 0 ELSE 1 END), 4) AS error_rate
FROM claude_stream WHERE {MINE} AND activity = 'called_tool' AND ts >= $since
GROUP BY tool ORDER BY calls DESC, tool""",
        ),
        Template(
            "sessions",
            "Sessions, newest first: start, end, events, tool calls.",
            (SINCE, LIMIT),
            f"""SELECT _session_id AS session_id, min(ts) AS started_at, max(ts) AS ended_at,
       count(*) AS events, count(*) FILTER (WHERE activity = 'called_tool') AS tool_calls
FROM claude_stream WHERE {MINE} AND ts >= $since AND _session_id IS NOT NULL
GROUP BY _session_id ORDER BY started_at DESC, session_id LIMIT $limit""",
        ),
        Template(
            "cost_by_model",
            "Exchanges, tokens and cost by model (feature_json model, input_tokens, "
            "output_tokens, cost_usd).",
            (SINCE,),
            f"""SELECT feature_json->>'model' AS model, count(*) AS exchanges,
       sum(TRY_CAST(feature_json->>'input_tokens' AS BIGINT)) AS input_tokens,
       sum(TRY_CAST(feature_json->>'output_tokens' AS BIGINT)) AS output_tokens,
       round(sum(TRY_CAST(feature_json->>'cost_usd' AS DOUBLE)), 6) AS cost_usd
FROM claude_stream WHERE {MINE} AND ts >= $since AND feature_json->>'model' IS NOT NULL
GROUP BY model ORDER BY cost_usd DESC NULLS LAST, model""",
        ),
        Template(
            "cost_by_session",
            "Tokens and cost by session, costliest first.",
            (SINCE, LIMIT),
            f"""SELECT _session_id AS session_id, count(*) AS exchanges,
       sum(TRY_CAST(feature_json->>'input_tokens' AS BIGINT)) AS input_tokens,
       sum(TRY_CAST(feature_json->>'output_tokens' AS BIGINT)) AS output_tokens,
       round(sum(TRY_CAST(feature_json->>'cost_usd' AS DOUBLE)), 6) AS cost_usd
FROM claude_stream WHERE {MINE} AND ts >= $since AND feature_json->>'cost_usd' IS NOT NULL
GROUP BY session_id ORDER BY cost_usd DESC NULLS LAST, session_id LIMIT $limit""",
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
            """SELECT ts, value, provenance_query_hash, atom_id
FROM insight_atoms WHERE customer_id = $customer AND subject = $subject AND metric = $metric
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


def for_warehouse(sql: str, kind: str) -> str:
    """Templates are written once, for DuckDB; Snowflake runs sqlglot's transpilation
    (placeholders stay `?`, values stay bound)."""
    if kind == "duckdb":
        return sql
    import sqlglot

    return str(sqlglot.transpile(sql, read="duckdb", write=kind)[0])


def get(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(
            f"no template '{name}'; the templates are: {', '.join(sorted(TEMPLATES))}"
        ) from None
