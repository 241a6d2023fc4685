"""The Snowflake form of a query written for DuckDB.

Every SafeSQL template (and the `dataset` template's generated SQL) is written once, for
DuckDB. Its Snowflake form is sqlglot's transpilation plus the rewrites below, for what a
plain transpilation gets wrong; they are the only difference between the two:

- JSON: ``feature_json->>'key'`` (and ``json_extract_string(feature_json, ?)``) is
  ``feature_json['key']::VARCHAR``: a JSON null is SQL NULL, a string its text, any other
  value its JSON text, as in DuckDB; a dot is part of the key, never a path step. A bound
  key (a dataset's feature) is named in the text, once it matches the feature key pattern
  (which admits no quote): Snowflake's ``GET(v, ?)`` of a bound key is correct too, but
  fakesnow, which the tests run, casts it to its JSON text.
- ``TRY_CAST`` stays ``TRY_CAST`` of a VARCHAR (sqlglot prints ``CAST`` when it cannot
  tell that the value is text, and one non-numeric value then failed the whole query), so
  a value that does not convert is NULL on both warehouses.
- A struct used as a join key (``struct_pack``) is its JSON text
  (``TO_JSON(OBJECT_CONSTRUCT_KEEP_NULL(...))``): Snowflake partitions and joins on text.
- A timestamp as text (``CAST(CAST(x AS TIMESTAMP) AS VARCHAR)``, the dataset's way of
  saying it) prints as DuckDB prints it, with TO_CHAR.
- A series of timestamps (``unnest(generate_series(first, last, INTERVAL n UNIT))``, the
  dataset's time spine) is ``DATEADD`` over ``FLATTEN(ARRAY_GENERATE_RANGE(...))``.
- A running ``string_agg`` (Snowflake's LISTAGG takes no window frame) is
  ``ARRAY_TO_STRING`` of the same frame's ``ARRAY_AGG ... WITHIN GROUP``.

Values stay bound. A rewrite may move a placeholder (sqlglot writes ``sum(x) FILTER (WHERE
c)`` as ``SUM(IFF(c, x, NULL))``), so placeholders are named while the statement is
rewritten and the values are put in the order of the new text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import sqlglot
from sqlglot import expressions as exp

from activitybi.query.dataset import FEATURE_KEY

_VARCHAR = exp.DataType.build("VARCHAR")


_MARK = "activitybi_p"
"""The name each placeholder carries while the statement is rewritten (``:activitybi_p3``)."""


def to_snowflake(sql: str, params: Sequence[object]) -> tuple[str, list[object]]:
    """The Snowflake form of one DuckDB statement (``?`` placeholders), and its parameters:
    the same values, in the order of the new text's placeholders (a rewrite may move one),
    less the feature keys the text now names."""
    text, place, keys = _rewritten(sql)
    if len(place) != len(params):
        raise ValueError(f"the statement has {len(place)} placeholders for {len(params)} values")
    values: list[object] = []

    def bind(m: re.Match[str]) -> str:
        value = params[place[m[1]]]
        if m[1] not in keys:
            values.append(value)
            return "?"
        if not (isinstance(value, str) and FEATURE_KEY.fullmatch(value)):
            raise ValueError(f"not a feature key: {value!r}")
        return f"'{value}'"  # the pattern admits no quote

    return re.sub(rf":({_MARK}\d+)\b", bind, text), values


@lru_cache(maxsize=256)
def _rewritten(sql: str) -> tuple[str, dict[str, int], frozenset[str]]:
    """The Snowflake text with named placeholders, the place of each name among the
    statement's ``?``, and the names that hold a JSON key. Cached: a template, or a dataset
    spec's shape, always gives the same text."""
    trees = sqlglot.parse(sql, read="duckdb")
    if len(trees) != 1 or trees[0] is None:
        raise ValueError("expected exactly one statement")
    tree = trees[0]
    for i, placeholder in enumerate(tree.find_all(exp.Placeholder, bfs=False)):
        placeholder.set("this", f"{_MARK}{i}")
    # The order in which DuckDB's text reads them is the order of the values.
    place = {name: k for k, name in enumerate(re.findall(rf"\$({_MARK}\d+)\b", tree.sql(dialect="duckdb")))}
    keys: set[str] = set()

    def json_text(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.JSONExtractScalar):
            return node
        path = node.expression
        if isinstance(path, exp.Placeholder):
            keys.add(path.name)
            key: exp.Expr = path
        elif (
            isinstance(path, exp.JSONPath)
            and len(path.expressions) == 2
            and isinstance(path.expressions[1], exp.JSONPathKey)
        ):
            key = exp.Literal.string(str(path.expressions[1].this))
        else:
            raise ValueError(f"only a top-level key can be read from JSON, not {path.sql()}")
        return exp.Cast(this=exp.Bracket(this=node.this, expressions=[key]), to=_VARCHAR.copy())

    for rewrite in (json_text, *_REWRITES):  # inner nodes first: a rewritten node's children are not visited
        tree = tree.transform(rewrite, copy=False)
    for select in list(tree.find_all(exp.Select)):
        _spine(select)
    return tree.sql(dialect="snowflake"), place, frozenset(keys)


def _try_cast(node: exp.Expr) -> exp.Expr:
    """Made explicit rather than left to sqlglot's type inference."""
    if not isinstance(node, exp.TryCast):
        return node
    value = node.this
    if not (isinstance(value, exp.Cast) and value.is_type(*exp.DataType.TEXT_TYPES)):
        value = exp.Cast(this=value, to=_VARCHAR.copy())
    return exp.TryCast(this=value, to=node.args["to"], requires_string=True)


_TIMESTAMP_TEXT = sqlglot.parse_one(
    "CASE WHEN _x = DATE_TRUNC('SECOND', _x) THEN TO_CHAR(_x, 'YYYY-MM-DD HH24:MI:SS') "
    "ELSE REGEXP_REPLACE(TO_CHAR(_x, 'YYYY-MM-DD HH24:MI:SS.FF6'), '0+$', '') END",
    read="snowflake",
)
"""DuckDB's text of a timestamp (a fraction of a second without its trailing zeros, none
for a whole second) in Snowflake. (REGEXP_REPLACE, not RTRIM(s, '0'): fakesnow ignores
RTRIM's characters.)"""


def _timestamp_text(node: exp.Expr) -> exp.Expr:
    """``CAST(CAST(x AS TIMESTAMP) AS VARCHAR)`` (the dataset's text of a timestamp) as
    DuckDB prints it: Snowflake's own text of a TIMESTAMP_NTZ has three decimals."""
    if not (
        isinstance(node, exp.Cast)
        and node.is_type(*exp.DataType.TEXT_TYPES)
        and isinstance(node.this, exp.Cast)
        and node.this.is_type(exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPNTZ)
    ):
        return node
    ts = node.this
    return _TIMESTAMP_TEXT.transform(
        lambda n: ts.copy() if isinstance(n, exp.Column) and n.name == "_x" else n
    )


def _struct_key(node: exp.Expr) -> exp.Expr:
    """``struct_pack(e := a, m0 := b)`` as ``TO_JSON(OBJECT_CONSTRUCT_KEEP_NULL('e', a, 'm0', b))``."""
    if not isinstance(node, exp.Struct):
        return node
    pairs: list[exp.Expr] = []
    for item in node.expressions:
        if not isinstance(item, exp.PropertyEQ):
            raise ValueError(f"unsupported struct member {item.sql()}")
        pairs += [exp.Literal.string(item.this.name), item.expression]
    return exp.func("TO_JSON", exp.Anonymous(this="OBJECT_CONSTRUCT_KEEP_NULL", expressions=pairs))


def _running_listagg(window: exp.Expr) -> exp.Expr:
    """``string_agg(text, d ORDER BY v) OVER w`` as ``ARRAY_TO_STRING(ARRAY_AGG(text)
    WITHIN GROUP (ORDER BY v) OVER w, d)``, NULL when the frame holds no value."""
    if not (isinstance(window, exp.Window) and isinstance(window.this, exp.GroupConcat)):
        return window
    concat = window.this
    value, order = concat.this, None
    if isinstance(value, exp.Order):
        value, order = value.this, value
    agg: exp.Expr = exp.ArrayAgg(this=value.copy())
    if order is not None:
        agg = exp.WithinGroup(
            this=agg, expression=exp.Order(expressions=[o.copy() for o in order.expressions])
        )
    over = window.copy()
    over.set("this", agg)
    counted = window.copy()
    counted.set("this", exp.Count(this=value.copy()))
    joined = exp.Anonymous(this="ARRAY_TO_STRING", expressions=[over, concat.args["separator"]])
    return exp.Case(ifs=[exp.If(this=exp.GT(this=counted, expression=exp.Literal.number(0)), true=joined)])


_REWRITES = (_try_cast, _timestamp_text, _struct_key, _running_listagg)

_STEPS = {"DAY": ("DAY", 1), "WEEK": ("DAY", 7), "MONTH": ("MONTH", 1), "YEAR": ("YEAR", 1)}


def _spine(select: exp.Select) -> None:
    """``unnest(generate_series(a, b, INTERVAL n UNIT)) AS ts`` in ``select`` becomes
    ``DATEADD(unit, g.index * k, a) AS ts`` with ``g`` the rows of
    ``FLATTEN(ARRAY_GENERATE_RANGE(0, DATEDIFF(unit, a, b) / k + 1))``."""
    for projection in select.expressions:
        explode = projection.this if isinstance(projection, exp.Alias) else projection
        if not (isinstance(explode, exp.Explode) and isinstance(explode.this, exp.GenerateSeries)):
            continue
        series = explode.this
        step = series.args["step"]
        if not isinstance(step, exp.Interval):
            raise ValueError(f"unsupported series step {step.sql()}")
        unit, per = _STEPS[step.text("unit").upper()]
        k = int(step.this.name) * per
        start, end = series.args["start"], series.args["end"]
        diff = exp.DateDiff(
            this=end.copy(), expression=start.copy(), unit=exp.var(unit), date_part_boundary=True
        )
        n = exp.cast(exp.func("FLOOR", exp.Div(this=diff, expression=exp.Literal.number(k))), "INT")
        rows = exp.func(
            "ARRAY_GENERATE_RANGE", exp.Literal.number(0), exp.Add(this=n, expression=exp.Literal.number(1))
        )
        at = exp.func(
            "DATEADD",
            exp.var(unit),
            exp.Mul(this=exp.column("index", "_g"), expression=exp.Literal.number(k)),
            start.copy(),
        )
        explode.replace(at)
        flatten = sqlglot.parse_one("TABLE(FLATTEN(INPUT => x)) AS _g", read="snowflake")
        flatten.find(exp.Column).replace(rows)  # type: ignore[union-attr]
        select.join(flatten, join_type="CROSS", copy=False)
