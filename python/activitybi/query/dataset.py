"""The ActivitySchema v2.0 *dataset* template: a cohort activity plus appended activities.

``build_dataset_sql(spec, customer)`` turns a validated :class:`DatasetSpec` into one DuckDB
statement and its bound parameters. The text only ever contains fixed SQL, stream column
names from a whitelist, generated names (``_a0``, ``_v1``), output aliases matching
``^[a-z][a-z0-9_]{0,62}$`` (double-quoted), and aggregate functions, casts and interval units
from whitelists. Every value -- the customer, activity names, feature paths, filter values,
``nth``, listagg delimiters -- is a ``?`` parameter. The same shape of spec therefore gives
byte-identical SQL, whatever the values. Every read of the stream is restricted to
``coalesce(customer, anonymous_customer_id) = ?`` (written ``customer = ? OR (customer IS
NULL AND anonymous_customer_id = ?)``, which DuckDB pushes into the table scan); the one
entry point without a customer, ``build_stream_dataset_sql``, is the operator's
``activitybi dataset`` command on the warehouse, and no tool reaches it.

Rules (those of ``shared/conformance/activityschema/README.md``; ``p`` = cohort row, ``j`` =
candidate row of the appended activity, same customer; ``p.next`` = the next occurrence of the
cohort activity):

- Occurrence order is ``(ts, activity_id)``. ``activity_occurrence`` and
  ``activity_repeated_at`` are computed in the query, *after* the activity's filters, so
  filters recompute them (cohort ``first`` with a filter = first matching row).
- Cohort: ``all``; ``first`` = occurrence 1; ``last`` = no next occurrence; ``nth`` =
  occurrence n; ``time_spine`` = one row per interval (day, week = ISO week from Monday,
  month, quarter, year) from the interval of the customer's first cohort event to the
  interval of the last one (``end_period=max``) or of now in UTC (``now``). A spine row has
  ``ts`` = interval start, ``p.next`` = next interval start, ``activity_occurrence`` = its
  index, and ``activity_id`` = md5 of ``activity|customer|ts``. Only ``ts, customer,
  anonymous_customer_id, activity, activity_id, activity_occurrence, activity_repeated_at``
  can be selected from a spine.
- Windows are strict on both sides: before ``j.ts < p.ts``, after ``j.ts > p.ts``, in between
  ``p.ts < j.ts`` and (``p.next`` is null or ``j.ts < p.next``). A row with the same ``ts`` as
  ``p`` is in no window (only ``*_ever`` sees it), so the cohort row never joins itself.
- first/last append = earliest/latest candidate by ``(ts, activity_id)``; ``nth_*`` = the n-th
  *overall* occurrence (after filters), kept only if it is inside the window. All columns of
  one append come from the same chosen row, and a NULL value is returned as NULL (not skipped:
  upstream skips it, and breaks equal timestamps by the value's text; we break them by
  ``activity_id``). No match gives NULL in every column.
- Aggregates over the window's rows (``aggregate_all_ever``: all the customer's rows).
  NULL values are ignored: ``count(col)`` counts non-null values, min/max/avg/sum skip NULLs.
  ``count``, ``count_distinct``, ``sum`` and ``sum_bool`` are 0, never NULL (also when every
  value is NULL). ``min``, ``max``, ``avg``, ``listagg``, ``listagg_distinct``,
  ``first_value``, ``last_value`` are NULL when there is no non-null value. ``is_null`` =
  no non-null value (true on no rows), ``not_null`` = at least one. ``first_value`` /
  ``last_value`` = the value of the earliest/latest row whose value is not NULL.
  ``listagg`` sorts values ascending (by typed value) and joins their text with the column's
  ``delimiter`` (default a newline, as upstream); ``listagg_distinct`` does so for distinct
  values. ``sum_bool`` counts true values of a boolean column.
- Cohort rows are never dropped or duplicated by an append: every append is a LEFT JOIN on a
  per-cohort-row (or per-customer) key that is unique on the right side. Output: one row per
  cohort row, ordered by cohort ``(ts, activity_id)``; cohort columns, then each append's.
- Features (``{"feature": key}``): top-level keys of ``feature_json`` matching
  ``^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`` (a dot is part of the key, not a path step), read
  with ``json_extract_string(feature_json, ?)`` (the bare key, bound) and TRY_CAST to the
  declared type: a missing key, JSON null or a value that does not convert is NULL.
  Timestamps are read as UTC wall-clock (a UTC offset in the text is dropped by DuckDB, so
  store UTC), and DuckDB's casts apply (an integer feature ``3.7`` reads as 4). On
  Snowflake (`activitybi.query.dialect`) the key is named in the text, which its pattern
  makes safe; every other value stays bound.
- Filters are row predicates, all of which must hold. Comparisons follow SQL: a row whose
  value is NULL satisfies only ``is_null`` (not ``!=``, not ``not_in``). Values are checked
  against the filter's type (a timestamp is an ISO-8601 text or a datetime; with an offset
  it is converted to UTC).
- Stream columns may be selected with their own type, or as ``string``; the derived
  ``activity_occurrence`` / ``activity_repeated_at`` can be selected but not filtered on.
- Time spine: the lower bound is strict too, so an event at exactly 00:00 of a period start
  falls in no period (as upstream).
- Relationship aliases: ``first_between``, ``last_between``, ``nth_between``,
  ``aggregate_between`` (= ``*_in_between``), ``aggregate_all`` / ``aggregate_ever``.
- Limits: 32 appends, 100 columns per activity, 32 filters, 1,000 ``in`` values, names up to
  255 characters, values up to 4,096, delimiters up to 64, customer up to 1,024. Strings
  must be valid UTF-8.
- Join conditions (``join``: ``[{"feature": "repo", "cohort_feature": "repository",
  "type": "string"}]``, up to 8): a candidate qualifies for a cohort row only when each of
  its features equals the cohort row's (``cohort_feature`` defaults to the same key), as
  typed values; a NULL or missing value matches nothing. Occurrences (``nth_*``, first,
  last) then count within the candidates of equal values, as a filter on the cohort row's
  value would. Feature paths follow the feature pattern and are bound. A time spine
  cohort has no features to join on.
- Cost: no relationship pairs cohort rows with candidates. Each sorts the cohort rows and
  the candidates together (``aggregate_before`` / ``aggregate_after`` as running windows),
  or picks one candidate per customer (the first or last one: the customer's min or max
  ts, then the smallest or largest ``activity_id`` at that ts, without sorting the
  candidates).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "AGGREGATIONS",
    "ALLOWED_TABLES",
    "RELATIONSHIPS",
    "RELATIONSHIP_ALIASES",
    "STREAM_COLUMNS",
    "Append",
    "Cohort",
    "Column",
    "DatasetSpec",
    "DatasetSpecError",
    "Filter",
    "JoinOn",
    "TimeSpine",
    "build_dataset_sql",
    "build_stream_dataset_sql",
]


class DatasetSpecError(ValueError):
    """A dataset spec (or customer, or table) that is refused; the message names the field."""


# --------------------------------------------------------------------------- whitelists

ALLOWED_TABLES = frozenset({"claude_stream"})

ColumnType = Literal["string", "integer", "float", "timestamp", "boolean"]
_SQL_TYPES: dict[str, str] = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "float": "DOUBLE",
    "timestamp": "TIMESTAMP",
    "boolean": "BOOLEAN",
}

#: Selectable columns and their own type (the two derived ones are computed in the query).
STREAM_COLUMNS: dict[str, str] = {
    "activity_id": "string",
    "ts": "timestamp",
    "customer": "string",
    "activity": "string",
    "anonymous_customer_id": "string",
    "feature_json": "string",
    "revenue_impact": "float",
    "link": "string",
    "_session_id": "string",
    "_source": "string",
    "_ingested_at": "timestamp",
    "activity_occurrence": "integer",
    "activity_repeated_at": "timestamp",
}
_DERIVED = {"activity_occurrence": "_occ", "activity_repeated_at": "_next"}
_PHYSICAL_COLUMNS = tuple(c for c in STREAM_COLUMNS if c not in _DERIVED)
_SPINE_COLUMNS = frozenset(
    {
        "ts",
        "customer",
        "anonymous_customer_id",
        "activity",
        "activity_id",
        "activity_occurrence",
        "activity_repeated_at",
    }
)

#: Other spellings accepted for a relationship (the corpus's case names use them).
RELATIONSHIP_ALIASES: dict[str, str] = {
    "first_between": "first_in_between",
    "last_between": "last_in_between",
    "nth_between": "nth_in_between",
    "aggregate_between": "aggregate_in_between",
    "aggregate_all": "aggregate_all_ever",
    "aggregate_ever": "aggregate_all_ever",
}
Relationship = Literal[
    "first_ever",
    "last_ever",
    "nth_ever",
    "first_before",
    "last_before",
    "nth_before",
    "first_after",
    "last_after",
    "nth_after",
    "first_in_between",
    "last_in_between",
    "nth_in_between",
    "aggregate_all_ever",
    "aggregate_before",
    "aggregate_after",
    "aggregate_in_between",
]
RELATIONSHIPS: tuple[str, ...] = get_args(Relationship)

Aggregation = Literal[
    "count",
    "count_distinct",
    "sum",
    "min",
    "max",
    "avg",
    "listagg",
    "listagg_distinct",
    "first_value",
    "last_value",
    "is_null",
    "not_null",
    "sum_bool",
]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
_ZERO_FILLED = frozenset({"count", "count_distinct", "sum", "sum_bool"})
_NUMERIC = frozenset({"integer", "float"})

Op = Literal["=", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "not_null"]
_COMPARISONS = frozenset({"=", "!=", "<", "<=", ">", ">="})

Interval = Literal["day", "week", "month", "quarter", "year"]
_INTERVALS: dict[str, tuple[str, str]] = {  # unit for date_trunc, step
    "day": ("day", "INTERVAL 1 DAY"),
    "week": ("week", "INTERVAL 7 DAY"),
    "month": ("month", "INTERVAL 1 MONTH"),
    "quarter": ("quarter", "INTERVAL 3 MONTH"),
    "year": ("year", "INTERVAL 1 YEAR"),
}

_ALIAS_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
FEATURE_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
"""A feature key: also safe as a string literal, which Snowflake's form of a dataset makes it."""
_MAX_NAME = 255
_MAX_VALUE = 4096
_MAX_CUSTOMER = 1024
_MAX_IN = 1000
_MAX_NTH = 2**31 - 1
_MIN_INT, _MAX_INT = -(2**63), 2**63 - 1


def _check_text(value: str, what: str, max_len: int) -> str:
    if len(value) > max_len:
        raise ValueError(f"{what} is longer than {max_len} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text") from None
    return value


def _normalize_value(type_: str, value: object, what: str) -> object:
    """One filter value, checked against its declared type; what is bound."""
    if value is None:
        raise ValueError(f"{what} must not be null (use op is_null / not_null)")
    if type_ == "string":
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string")
        return _check_text(value, what, _MAX_VALUE)
    if type_ == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{what} must be an integer")
        if not _MIN_INT <= value <= _MAX_INT:
            raise ValueError(f"{what} is out of the 64-bit integer range")
        return value
    if type_ == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{what} must be a number")
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(f"{what} must be a finite number")
        return f
    if type_ == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{what} must be true or false")
        return value
    if type_ == "timestamp":
        if isinstance(value, dt.datetime):
            ts = value
        elif isinstance(value, dt.date):
            ts = dt.datetime(value.year, value.month, value.day)
        elif isinstance(value, str):
            try:
                ts = dt.datetime.fromisoformat(_check_text(value, what, 64))
            except ValueError:
                raise ValueError(f"{what} must be an ISO-8601 timestamp") from None
        else:
            raise ValueError(f"{what} must be an ISO-8601 timestamp")
        if ts.tzinfo is not None:
            ts = ts.astimezone(dt.UTC).replace(tzinfo=None)
        return ts
    raise AssertionError(type_)  # pragma: no cover - guarded by the Literal


# --------------------------------------------------------------------------- the spec

ActivityName = Annotated[StrictStr, Field(min_length=1, max_length=_MAX_NAME)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_activity(v: str) -> str:
    return _check_text(v, "activity", _MAX_NAME)


def _check_feature(v: str | None) -> str | None:
    if v is not None and not FEATURE_KEY.fullmatch(v):
        raise ValueError("feature key must match ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    return v


def _check_column_name(v: str | None) -> str | None:
    if v is not None and v not in STREAM_COLUMNS:
        raise ValueError(f"column must be one of {', '.join(STREAM_COLUMNS)}")
    return v


def _check_source_type(column: str | None, type_: str) -> None:
    if column is not None:
        own = STREAM_COLUMNS[column]
        if type_ not in (own, "string"):
            raise ValueError(f"column {column} has type {own}: declare type {own} or string")


class Filter(_Model):
    """A row predicate ``<feature|column> <op> <value>`` on one activity."""

    feature: StrictStr | None = None
    column: StrictStr | None = None
    type: ColumnType = "string"
    op: Op
    value: Any = None

    @field_validator("feature")
    @classmethod
    def _v_feature(cls, v: str | None) -> str | None:
        return _check_feature(v)

    @field_validator("column")
    @classmethod
    def _v_column(cls, v: str | None) -> str | None:
        return _check_column_name(v)

    @model_validator(mode="after")
    def _check(self) -> Filter:
        if (self.feature is None) == (self.column is None):
            raise ValueError("a filter needs exactly one of 'feature' or 'column'")
        if self.column in _DERIVED:
            raise ValueError(f"cannot filter on {self.column}: filters recompute it")
        _check_source_type(self.column, self.type)
        self.bound_values()
        return self

    def bound_values(self) -> list[object]:
        """The values this filter binds (validated and normalised)."""
        if self.op in ("is_null", "not_null"):
            if self.value is not None:
                raise ValueError(f"op {self.op} takes no value")
            return []
        if self.op in ("in", "not_in"):
            if not isinstance(self.value, list | tuple) or not self.value:
                raise ValueError(f"op {self.op} needs a non-empty list value")
            if len(self.value) > _MAX_IN:
                raise ValueError(f"op {self.op} takes at most {_MAX_IN} values")
            return [_normalize_value(self.type, v, "filter value") for v in self.value]
        return [_normalize_value(self.type, self.value, "filter value")]


class Column(_Model):
    """An output column: a stream column or a feature, optionally aggregated."""

    column: StrictStr | None = None
    feature: StrictStr | None = None
    type: ColumnType = "string"
    as_: StrictStr = Field(alias="as")
    agg: Aggregation | None = None
    delimiter: StrictStr | None = None
    notes: StrictStr | None = None

    @field_validator("feature")
    @classmethod
    def _v_feature(cls, v: str | None) -> str | None:
        return _check_feature(v)

    @field_validator("column")
    @classmethod
    def _v_column(cls, v: str | None) -> str | None:
        return _check_column_name(v)

    @field_validator("as_")
    @classmethod
    def _alias(cls, v: str) -> str:
        if not _ALIAS_RE.fullmatch(v):
            raise ValueError("output name must match ^[a-z][a-z0-9_]{0,62}$")
        return v

    @model_validator(mode="after")
    def _check(self) -> Column:
        if (self.feature is None) == (self.column is None):
            raise ValueError("a column needs exactly one of 'feature' or 'column'")
        _check_source_type(self.column, self.type)
        if self.delimiter is not None:
            if self.agg not in ("listagg", "listagg_distinct"):
                raise ValueError("'delimiter' only applies to agg listagg / listagg_distinct")
            _check_text(self.delimiter, "delimiter", 64)
        if self.agg in ("sum", "avg") and self.type not in _NUMERIC:
            raise ValueError(f"agg {self.agg} needs type integer or float")
        if self.agg == "sum_bool" and self.type != "boolean":
            raise ValueError("agg sum_bool needs type boolean")
        return self


class TimeSpine(_Model):
    interval: Interval
    end_period: Literal["max", "now"] = "max"


class Cohort(_Model):
    """The primary activity: one output row per selected occurrence (or spine interval)."""

    activity: ActivityName
    occurrence: Literal["all", "first", "last", "nth", "time_spine"] = "all"
    nth: StrictInt | None = Field(default=None, ge=1, le=_MAX_NTH)
    time_spine: TimeSpine | None = None
    filters: list[Filter] = Field(default_factory=list, max_length=32)
    columns: list[Column] = Field(min_length=1, max_length=100)

    @field_validator("activity")
    @classmethod
    def _v_activity(cls, v: str) -> str:
        return _check_activity(v)

    @model_validator(mode="after")
    def _check(self) -> Cohort:
        if (self.occurrence == "nth") != (self.nth is not None):
            raise ValueError("'nth' is required with occurrence nth, and only then")
        if (self.occurrence == "time_spine") != (self.time_spine is not None):
            raise ValueError("'time_spine' is required with occurrence time_spine, and only then")
        for i, col in enumerate(self.columns):
            if col.agg is not None:
                raise ValueError(f"columns[{i}]: a cohort column takes no 'agg'")
            if self.occurrence == "time_spine" and col.column not in _SPINE_COLUMNS:
                raise ValueError(
                    f"columns[{i}]: a time spine row has only the columns "
                    + ", ".join(sorted(_SPINE_COLUMNS))
                )
        return self


class JoinOn(_Model):
    """A join condition: the appended row's ``feature`` equals the cohort row's
    ``cohort_feature`` (the same key when omitted), both read as ``type``."""

    feature: StrictStr
    cohort_feature: StrictStr | None = None
    type: ColumnType = "string"

    @field_validator("feature", "cohort_feature")
    @classmethod
    def _v_feature(cls, v: str | None) -> str | None:
        return _check_feature(v)


class Append(_Model):
    """An appended (or aggregated) activity joined to each cohort row by a relationship."""

    activity: ActivityName
    relationship: Relationship
    nth: StrictInt | None = Field(default=None, ge=1, le=_MAX_NTH)
    filters: list[Filter] = Field(default_factory=list, max_length=32)
    join: list[JoinOn] = Field(default_factory=list, max_length=8)
    columns: list[Column] = Field(min_length=1, max_length=100)
    notes: StrictStr | None = None

    @field_validator("activity")
    @classmethod
    def _v_activity(cls, v: str) -> str:
        return _check_activity(v)

    @field_validator("relationship", mode="before")
    @classmethod
    def _alias(cls, v: object) -> object:
        return RELATIONSHIP_ALIASES.get(v, v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> Append:
        is_nth = self.relationship.startswith("nth_")
        if is_nth != (self.nth is not None):
            raise ValueError("'nth' is required with an nth_* relationship, and only then")
        is_agg = self.relationship.startswith("aggregate_")
        for i, col in enumerate(self.columns):
            if is_agg and col.agg is None:
                raise ValueError(f"columns[{i}]: relationship {self.relationship} needs an 'agg'")
            if not is_agg and col.agg is not None:
                raise ValueError(f"columns[{i}]: 'agg' needs an aggregate_* relationship")
        return self


class DatasetSpec(_Model):
    """A cohort plus appends, as in the conformance manifest."""

    cohort: Cohort
    appends: list[Append] = Field(default_factory=list, max_length=32)
    notes: StrictStr | None = None

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if self.cohort.occurrence == "time_spine" and any(a.join for a in self.appends):
            raise ValueError("a time spine cohort has no features to join on")
        seen: set[str] = set()
        for col in [*self.cohort.columns, *(c for a in self.appends for c in a.columns)]:
            if col.as_ in seen:
                raise ValueError(f"output name {col.as_!r} is used twice")
            seen.add(col.as_)
        return self


# --------------------------------------------------------------------------- SQL fragments


class _Q(NamedTuple):
    """SQL text and its parameters, in the order of the text's ``?``."""

    text: str
    params: tuple[object, ...] = ()


def _cat(*parts: _Q | str) -> _Q:
    text: list[str] = []
    params: list[object] = []
    for p in parts:
        if isinstance(p, str):
            assert "?" not in p, "a placeholder must come with its value"
            text.append(p)
        else:
            text.append(p.text)
            params.extend(p.params)
    return _Q("".join(text), tuple(params))


def _join(sep: str, parts: Iterable[_Q | str]) -> _Q:
    out: list[_Q | str] = []
    for i, p in enumerate(parts):
        if i:
            out.append(sep)
        out.append(p)
    return _cat(*out)


def _bind(value: object) -> _Q:
    return _Q("?", (value,))


def _feature_expr(feature: str, type_: str, row: str) -> _Q:
    """The typed value of a feature of table alias ``row`` (the path is bound)."""
    extract = _cat(f"json_extract_string({row}.feature_json, ", _bind(feature), ")")
    if type_ == "string":
        return extract
    return _cat("TRY_CAST(", extract, f" AS {_SQL_TYPES[type_]})")


def _text(value: str, type_: str) -> str:
    """A value of ``type_`` as text. A timestamp is cast to TIMESTAMP first: a no-op for
    DuckDB that tells `activitybi.query.dialect` to print it as DuckDB does on Snowflake."""
    if type_ == "timestamp":
        return f"CAST(CAST({value} AS TIMESTAMP) AS VARCHAR)"
    return f"CAST({value} AS VARCHAR)"


def _source_expr(src: Column | Filter, row: str) -> _Q:
    """The typed value of a column or feature of table alias ``row``."""
    sql_type = _SQL_TYPES[src.type]
    if src.feature is not None:
        return _feature_expr(src.feature, src.type, row)
    assert src.column is not None
    name = _DERIVED.get(src.column, src.column)
    if src.column == "feature_json" or STREAM_COLUMNS[src.column] != src.type:
        if sql_type == "VARCHAR":
            return _Q(_text(f"{row}.{name}", STREAM_COLUMNS[src.column]))
        return _Q(f"CAST({row}.{name} AS {sql_type})")
    return _Q(f"{row}.{name}")


def _filter_expr(f: Filter, row: str) -> _Q:
    lhs = _source_expr(f, row)
    sql_type = _SQL_TYPES[f.type]
    values = f.bound_values()
    if f.op == "is_null":
        return _cat("(", lhs, " IS NULL)")
    if f.op == "not_null":
        return _cat("(", lhs, " IS NOT NULL)")
    if f.op in _COMPARISONS:
        return _cat("(", lhs, f" {f.op} CAST(", _bind(values[0]), f" AS {sql_type}))")
    items = _join(", ", (_cat("CAST(", _bind(v), f" AS {sql_type})") for v in values))
    return _cat("(", lhs, " NOT IN (" if f.op == "not_in" else " IN (", items, "))")


def _where(activity: str, filters: Sequence[Filter], row: str) -> _Q:
    return _join(
        " AND ", [_cat(f"{row}.activity = ", _bind(activity)), *(_filter_expr(f, row) for f in filters)]
    )


def _agg_expr(col: Column, v: str, occ: str, over: str = "") -> _Q:
    """The aggregate of value column ``v`` (``occ`` orders rows for first/last_value); with
    ``over`` (`` OVER w``) every aggregate call in it is a window function."""
    agg = col.agg
    if agg == "count":
        return _Q(f"count({v}){over}")
    if agg == "count_distinct":
        return _Q(f"count(DISTINCT {v}){over}")
    if agg in ("sum", "min", "max", "avg"):
        return _Q(f"{agg}({v}){over}")
    if agg == "sum_bool":
        return _Q(f"sum(CAST({v} AS INTEGER)){over}")
    if agg == "is_null":
        return _Q(f"(count({v}){over} = 0)")
    if agg == "not_null":
        return _Q(f"(count({v}){over} > 0)")
    if agg == "first_value":
        return _Q(f"arg_min({v}, CASE WHEN {v} IS NOT NULL THEN {occ} END){over}")
    if agg == "last_value":
        return _Q(f"arg_max({v}, CASE WHEN {v} IS NOT NULL THEN {occ} END){over}")
    delimiter = "\n" if col.delimiter is None else col.delimiter
    if agg == "listagg":
        return _cat(f"string_agg({_text(v, col.type)}, ", _bind(delimiter), f" ORDER BY {v}){over}")
    if agg == "listagg_distinct":
        return _cat(
            f"CASE WHEN count({v}){over} > 0 THEN "
            f"array_to_string(list_sort(list_distinct(list({v}){over})), ",
            _bind(delimiter),
            ") END",
        )
    raise AssertionError(agg)  # pragma: no cover - guarded by the Literal


def _window(relationship: str, j: str, c: str) -> str:
    """The candidate window of a relationship, for joined alias ``j`` and cohort alias ``c``."""
    if relationship.endswith("_ever"):
        return "TRUE"
    if relationship.endswith("_before"):
        return f"{j}.ts < {c}.ts"
    if relationship.endswith("_after"):
        return f"{j}.ts > {c}.ts"
    assert relationship.endswith("_in_between")
    return f"{j}.ts > {c}.ts AND ({c}._next IS NULL OR {j}.ts < {c}._next)"


_ORDER = "ORDER BY {r}.ts, {r}.activity_id"


def _cohort_ctes(cohort: Cohort) -> _Q:
    """CTEs ``_c0`` (filtered cohort activity) and ``_cohort`` (one row per cohort row)."""
    part = "PARTITION BY s._entity "
    c0 = _cat(
        "_c0 AS (SELECT s.*, row_number() OVER (",
        part,
        _ORDER.format(r="s"),
        ") AS _occ, lead(s.ts) OVER (",
        part,
        _ORDER.format(r="s"),
        ") AS _next FROM _s AS s WHERE ",
        _where(cohort.activity, cohort.filters, "s"),
        ")",
    )
    if cohort.occurrence != "time_spine":
        select = {
            "all": _Q("TRUE"),
            "first": _Q("c0._occ = 1"),
            "last": _Q("c0._next IS NULL"),
            "nth": _cat("c0._occ = ", _bind(cohort.nth)),
        }[cohort.occurrence]
        return _cat(
            c0,
            ",\n_cohort AS (SELECT c0.*, row_number() OVER (ORDER BY c0._entity, "
            "c0.ts, c0.activity_id) AS _row FROM _c0 AS c0 WHERE ",
            select,
            ")",
        )
    assert cohort.time_spine is not None
    unit, step = _INTERVALS[cohort.time_spine.interval]
    end = (
        "max(c0.ts)"
        if cohort.time_spine.end_period == "max"
        else "CAST(current_timestamp AT TIME ZONE 'UTC' AS TIMESTAMP)"
    )
    return _cat(
        c0,
        ",\n_bounds AS (SELECT c0._entity, max(c0.customer) AS customer, "
        "max(c0.anonymous_customer_id) AS anonymous_customer_id, max(c0.activity) AS activity, "
        f"date_trunc('{unit}', min(c0.ts)) AS _first, date_trunc('{unit}', {end}) AS _last "
        "FROM _c0 AS c0 GROUP BY c0._entity)",
        ",\n_spine AS (SELECT b._entity, b.customer, b.anonymous_customer_id, b.activity, "
        f"unnest(generate_series(b._first, b._last, {step})) AS ts FROM _bounds AS b)",
        ",\n_cohort AS (SELECT p._entity, p.customer, p.anonymous_customer_id, p.activity, p.ts, "
        f"md5(concat_ws('|', p.activity, p._entity, {_text('p.ts', 'timestamp')})) AS activity_id, "
        "row_number() OVER (PARTITION BY p._entity ORDER BY p.ts) AS _occ, "
        f"p.ts + {step} AS _next, "
        "row_number() OVER (ORDER BY p._entity, p.ts) AS _row FROM _spine AS p)",
    )


def _append_ctes(k: int, a: Append) -> tuple[_Q, list[_Q], str]:
    """CTEs of append ``k``, its output expressions, and its LEFT JOIN clause.

    ``_a{k}`` holds the appended activity's rows (after its filters) with their occurrence
    ``_occ`` and the typed values ``_v0..``. No relationship joins every cohort row to every
    candidate when it can be avoided (a customer may have many thousands of both): see the
    comments below. ``_j{k}`` has at most one row per join key, so the final LEFT JOIN never
    drops or duplicates a cohort row.
    """
    if a.relationship in _PICKED:
        return _picked_ctes(k, a)
    part = "PARTITION BY s._entity "
    # Values are read before the window sorts (so the sorts carry them, not feature_json),
    # but for the derived columns, which the windows compute.
    inner = _join(
        "",
        (
            _cat(", ", _source_expr(col, "s"), f" AS _v{i}")
            for i, col in enumerate(a.columns)
            if col.column not in _DERIVED
        ),
    )
    values = _join(
        ", ",
        (
            _cat(_source_expr(col, "f"), f" AS _v{i}") if col.column in _DERIVED else _Q(f"f._v{i}")
            for i, col in enumerate(a.columns)
        ),
    )
    nxt = (
        f", lead(s.ts) OVER ({part}{_ORDER.format(r='s')}) AS _next"
        if any(col.column == "activity_repeated_at" for col in a.columns)
        else ""
    )
    base = _cat(
        f"_a{k} AS (SELECT f._entity, f.ts, f.activity_id, f._occ, ",
        values,
        " FROM (SELECT s._entity, s.ts, s.activity_id",
        inner,
        ", row_number() OVER (",
        part,
        _ORDER.format(r="s"),
        f") AS _occ{nxt} FROM ",
        _candidates(a, "s"),
        ") AS f)",
    )
    cohort = f"_k{k}" if a.join else "_cohort"
    if a.join:
        base = _cat(base, _keyed_cohort(k, a))
    rel = a.relationship
    name = f"_j{k}"
    n = len(a.columns)
    vcols = ", ".join(f"a._v{i}" for i in range(n))
    nulls = ", ".join("NULL" for _ in range(n))
    by_row = f"LEFT JOIN {name} ON {name}._row = c._row"
    by_entity = f"LEFT JOIN {name} ON {name}._entity = c._entity"
    running_max = "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
    order = "ORDER BY u.ts, u._kind"

    if rel.startswith("aggregate_"):
        aggs = _join(
            ", ",
            (_cat(_agg_expr(col, f"a._v{i}", "a._occ"), f" AS _x{i}") for i, col in enumerate(a.columns)),
        )
        if rel == "aggregate_all_ever":
            cte = _cat(f",\n{name} AS (SELECT a._entity, ", aggs, f" FROM _a{k} AS a GROUP BY a._entity)")
            join = by_entity
            if a.join:
                cte, join = _per_row(k, cte, "TRUE")
        elif rel == "aggregate_in_between":
            # In-between windows are disjoint (each ends at the next occurrence), so a
            # candidate can only be in the window of the latest cohort row strictly before
            # it: candidates and cohort rows sorted together (a candidate first at an equal
            # ts), a running max of the cohort row number names it; the window is then tested.
            cte = _cat(
                f",\n_u{k} AS (SELECT a._entity, a.ts, 0 AS _kind, CAST(NULL AS BIGINT) AS _row, "
                f"a._occ, {vcols} FROM _a{k} AS a UNION ALL SELECT c._entity, c.ts, 1, c._row, "
                f"NULL, {nulls} FROM {cohort} AS c)"
                f",\n_o{k} AS (SELECT u.*, max(u._row) OVER (PARTITION BY u._entity {order} "
                f"{running_max}) AS _owner FROM _u{k} AS u)"
                f",\n{name} AS (SELECT c._row, ",
                aggs,
                f" FROM _o{k} AS a JOIN {cohort} AS c "
                f"ON c._row = a._owner WHERE a._kind = 0 AND {_window(rel, 'a', 'c')} "
                "GROUP BY c._row)",
            )
            join = by_row
        else:
            # aggregate_before / aggregate_after: cohort rows and candidates sorted together,
            # and running aggregates read at each cohort row: from the first row up to it
            # (before) or from it to the last row (after). At an equal ts the cohort row sorts
            # before the candidates (before) or after them (after), so the window stays
            # strict; cohort rows carry NULL values, which every aggregate skips.
            ckind, frame = (
                (0, "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW")
                if rel == "aggregate_before"
                else (1, "ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING")
            )
            running = _join(
                ", ",
                (
                    _cat(_agg_expr(col, f"u._v{i}", "u._occ", " OVER w"), f" AS _x{i}")
                    for i, col in enumerate(a.columns)
                ),
            )
            cte = _cat(
                f",\n_u{k} AS (SELECT a._entity, a.ts, {1 - ckind} AS _kind, "
                f"CAST(NULL AS BIGINT) AS _row, a._occ, {vcols} FROM _a{k} AS a "
                f"UNION ALL SELECT c._entity, c.ts, {ckind}, c._row, NULL, {nulls} FROM {cohort} AS c)"
                f",\n{name} AS (SELECT * FROM (SELECT u._row, ",
                running,
                f" FROM _u{k} AS u WINDOW w AS (PARTITION BY u._entity {order} {frame})) "
                "WHERE _row IS NOT NULL)",
            )
            join = by_row
        outs = []
        for i, col in enumerate(a.columns):
            x = f"{name}._x{i}"
            if col.agg in _ZERO_FILLED:
                outs.append(_Q(f"coalesce({x}, 0)"))
            elif col.agg == "is_null":
                outs.append(_Q(f"coalesce({x}, TRUE)"))
            elif col.agg == "not_null":
                outs.append(_Q(f"coalesce({x}, FALSE)"))
            else:
                outs.append(_Q(x))
        return _cat(base, cte), outs, join

    outs = [_Q(f"{name}._v{i}") for i in range(n)]
    if rel.startswith("nth_"):
        # The n-th candidate, one per customer (see _single_join).
        cte = _cat(
            f",\n{name} AS (SELECT a._entity, a.ts, {vcols} FROM _a{k} AS a WHERE a._occ = ",
            _bind(a.nth),
            ")",
        )
        cte, join = _single_join(k, a, cte)
        return _cat(base, cte), outs, join

    # first_after, first_in_between, last_before, last_in_between: cohort anchors and
    # candidates sorted together, and a running min/max of the candidates' occurrence picks
    # the earliest candidate after p.ts, or the latest one before p.ts (last_before) or before
    # p.next (last_in_between; the last of all when p.next is null). At an equal ts the anchor
    # sorts after the candidates (first_*) or before them (last_*): the window stays strict.
    # The window is then tested on the picked row.
    if rel.startswith("first_"):
        anchor, ckind, akind, is_open = "c.ts", 1, 0, "FALSE"
        pick = (
            f"min(u._aocc) OVER (PARTITION BY u._entity {order} "
            "ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)"
        )
    else:
        ckind, akind = 0, 1
        pick = (
            f"max(u._aocc) OVER (PARTITION BY u._entity {order} "
            "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
        )
        if rel == "last_before":
            anchor, is_open = "c.ts", "FALSE"
        else:
            anchor, is_open = "coalesce(c._next, c.ts)", "c._next IS NULL"
            whole = "max(u._aocc) OVER (PARTITION BY u._entity)"
            pick = f"CASE WHEN u._open THEN {whole} ELSE {pick} END"
    cte = _Q(
        f",\n_u{k} AS (SELECT c._entity, {anchor} AS ts, {ckind} AS _kind, c._row, "
        "c.ts AS _cts, c._next AS _cnext, CAST(NULL AS BIGINT) AS _aocc, "
        f"{is_open} AS _open FROM {cohort} AS c UNION ALL SELECT a._entity, a.ts, {akind}, NULL, "
        f"NULL, NULL, a._occ, FALSE FROM _a{k} AS a)"
        f",\n_p{k} AS (SELECT u._row, u._entity, u._cts AS ts, u._cnext AS _next, {pick} AS _pick "
        f"FROM _u{k} AS u)"
        f",\n{name} AS (SELECT p._row, {vcols} FROM _p{k} AS p JOIN _a{k} AS a "
        "ON a._entity = p._entity AND a._occ = p._pick "
        f"WHERE p._row IS NOT NULL AND {_window(rel, 'a', 'p')})"
    )
    return _cat(base, cte), outs, by_row


#: The relationships whose candidate is the customer's first or last one (if any candidate
#: is before p, the first of all is; the same for the last one after p).
_PICKED = frozenset({"first_ever", "first_before", "last_ever", "last_after"})


def _picked_ctes(k: int, a: Append) -> tuple[_Q, list[_Q], str]:
    """:func:`_append_ctes` for a relationship of :data:`_PICKED`: ``_j{k}`` is the first
    or last candidate per customer by ``(ts, activity_id)``, found without sorting the
    candidates: ``_m{k}`` has each customer's first (last) ts, and of the candidates at
    that ts (one, or a few ties) the smallest (largest) ``activity_id`` is the one. Plain
    aggregates and a join, which DuckDB and Snowflake both run as written. Its values are
    read from that one row. Its occurrence is 1 (first) or the count (last); its next one
    is the second smallest ts (first) or none (last)."""
    first = a.relationship.startswith("first_")
    read = {"activity_id"} | {"feature_json" for c in a.columns if c.feature is not None}
    read |= {c.column for c in a.columns if c.column is not None}
    stats = [f"{'min' if first else 'max'}(s.ts) AS ts"]
    if "activity_occurrence" in read:
        stats.append("1 AS _occ" if first else "count(*) AS _occ")
    if "activity_repeated_at" in read:
        # The second smallest ts is the second candidate's, whatever the order of ties. The
        # cast is for Snowflake, whose MIN_BY(.., 2) is an ARRAY of VARIANT values.
        second = "CAST(arg_min(s.ts, s.ts, 2)[2] AS TIMESTAMP)"
        stats.append(f"{second if first else 'CAST(NULL AS TIMESTAMP)'} AS _next")
    columns = "".join(f", s.{c}" for c in _PHYSICAL_COLUMNS if c in read and c != "ts")
    cte = _cat(
        f"_m{k} AS (SELECT s._entity, {', '.join(stats)} FROM ",
        _candidates(a, "s"),
        " GROUP BY s._entity)",
        f",\n_j{k} AS (SELECT f._entity, f.ts, ",
        _join(", ", (_cat(_source_expr(col, "f"), f" AS _v{i}") for i, col in enumerate(a.columns))),
        f" FROM (SELECT m.*{columns}, row_number() OVER (PARTITION BY m._entity ORDER BY "
        f"s.activity_id{'' if first else ' DESC'}) AS _r FROM _m{k} AS m JOIN (SELECT s.* FROM ",
        _candidates(a, "s"),
        ") AS s ON s._entity = m._entity AND s.ts = m.ts) AS f WHERE f._r = 1)",
    )
    if a.join:
        cte = _cat(cte, _keyed_cohort(k, a))
    cte, join = _single_join(k, a, cte)
    return cte, [_Q(f"_j{k}._v{i}") for i in range(len(a.columns))], join


def _single_join(k: int, a: Append, cte: _Q) -> tuple[_Q, str]:
    """The join of an append ``_j{k}`` with one candidate per customer (its ``_entity``):
    the relationship's window is tested on it in the join."""
    join = f"LEFT JOIN _j{k} ON _j{k}._entity = c._entity"
    if a.join:
        return _per_row(k, cte, _window(a.relationship, "e", "c"))
    if not a.relationship.endswith("_ever"):
        join += f" AND {_window(a.relationship, f'_j{k}', 'c')}"
    return cte, join


def _keyed_cohort(k: int, a: Append) -> _Q:
    """``_k{k}``: the cohort rows, ``_entity`` made the customer and the cohort's values of
    the append's join conditions together (a struct), as in :func:`_candidates`: every
    partition and join on ``_entity`` then holds them equal. A NULL value matches nothing."""
    keys = _join(
        ", ",
        (
            _cat(f"m{i} := ", _feature_expr(j.cohort_feature or j.feature, j.type, "c"))
            for i, j in enumerate(a.join)
        ),
    )
    return _cat(
        f",\n_k{k} AS (SELECT c.* REPLACE (struct_pack(e := c._entity, ",
        keys,
        ") AS _entity) FROM _cohort AS c)",
    )


def _candidates(a: Append, s: str) -> _Q:
    """FROM text of an append's rows (alias ``s``): its activity, after its filters, and
    with join conditions only rows whose joined values are all present, ``_entity`` made
    the customer and those values together."""
    where = _where(a.activity, a.filters, s)
    if not a.join:
        return _cat(f"_s AS {s} WHERE ", where)
    values = [_feature_expr(j.feature, j.type, s) for j in a.join]
    return _cat(
        f"(SELECT {s}.* REPLACE (struct_pack(e := {s}._entity, ",
        _join(", ", (_cat(f"m{i} := ", v) for i, v in enumerate(values))),
        f") AS _entity) FROM _s AS {s} WHERE ",
        where,
        *(_cat(" AND ", v, " IS NOT NULL") for v in values),
        f") AS {s}",
    )


def _per_row(k: int, cte: _Q, window: str) -> tuple[_Q, str]:
    """An append keyed by ``_entity`` (``_j{k}``, renamed ``_e{k}``) keyed by cohort row
    instead, through ``_k{k}`` whose ``_entity`` holds the joined values: the final join
    is on the cohort row, whose own ``_entity`` is only the customer."""
    renamed = _Q(cte.text.replace(f"_j{k} AS (", f"_e{k} AS (", 1), cte.params)
    return (
        _cat(
            renamed,
            f",\n_j{k} AS (SELECT c._row, e.* EXCLUDE (_entity) FROM _k{k} AS c JOIN _e{k} AS e "
            f"ON e._entity = c._entity AND {window})",
        ),
        f"LEFT JOIN _j{k} ON _j{k}._row = c._row",
    )


def _validate(spec: DatasetSpec | dict[str, Any]) -> DatasetSpec:
    # A DatasetSpec is validated again from its dump: model_construct() skips validation.
    raw = spec.model_dump(by_alias=True) if isinstance(spec, DatasetSpec) else spec
    if not isinstance(raw, dict):
        raise DatasetSpecError("dataset spec must be an object (a dict or a DatasetSpec)")
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err["loc"]) or "spec"
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}")
        raise DatasetSpecError("invalid dataset spec: " + "; ".join(problems)) from None


def build_dataset_sql(
    spec: DatasetSpec | dict[str, Any], customer: str, *, table: str = "claude_stream"
) -> tuple[str, list[object]]:
    """DuckDB SQL (``?`` placeholders) and its parameters for ``spec``, for one customer.

    Raises :class:`DatasetSpecError` (a ``ValueError``) naming the field at fault.
    """
    if not isinstance(customer, str) or not customer:
        raise DatasetSpecError("customer: must be a non-empty string")
    try:
        _check_text(customer, "customer", _MAX_CUSTOMER)
    except ValueError as e:
        raise DatasetSpecError(f"customer: {e}") from None
    mine = _cat(
        "WHERE (customer = ",
        _bind(customer),
        " OR (customer IS NULL AND anonymous_customer_id = ",
        _bind(customer),
        "))",
    )
    return _build(spec, mine, table)


def build_stream_dataset_sql(
    spec: DatasetSpec | dict[str, Any], *, table: str = "claude_stream"
) -> tuple[str, list[object]]:
    """The same dataset over every customer of the stream, in one statement (rows ordered
    by customer, then cohort ``(ts, activity_id)``). For an operator on the warehouse
    (``activitybi dataset``), never for a tool: over MCP a dataset is one customer's."""
    return _build(spec, _Q("WHERE coalesce(customer, anonymous_customer_id) IS NOT NULL"), table)


def _build(spec: DatasetSpec | dict[str, Any], where: _Q, table: str) -> tuple[str, list[object]]:
    if table not in ALLOWED_TABLES:
        raise DatasetSpecError(f"table: must be one of {', '.join(sorted(ALLOWED_TABLES))}")
    ds = _validate(spec)

    source = _cat(
        f"WITH _s AS (SELECT {', '.join(_PHYSICAL_COLUMNS)}, "
        f"coalesce(customer, anonymous_customer_id) AS _entity FROM {table} ",
        where,
        ")",
    )
    ctes: list[_Q | str] = [source, ",\n", _cohort_ctes(ds.cohort)]
    outputs: list[_Q] = []
    for col in ds.cohort.columns:
        outputs.append(_cat(_source_expr(col, "c"), f' AS "{col.as_}"'))
    joins: list[str] = []
    for k, a in enumerate(ds.appends):
        cte, outs, join = _append_ctes(k, a)
        ctes += [",\n", cte]
        outputs += [_cat(o, f' AS "{col.as_}"') for o, col in zip(outs, a.columns, strict=True)]
        joins.append(join)
    q = _cat(
        *ctes,
        "\nSELECT ",
        _join(", ", outputs),
        "\nFROM _cohort AS c",
        *(f"\n{j}" for j in joins),
        "\nORDER BY c._row",
    )
    assert q.text.count("?") == len(q.params)
    return q.text, list(q.params)
