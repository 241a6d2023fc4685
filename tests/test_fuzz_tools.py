"""Fuzz every tool's arguments through one real `activitybi serve` (stdio, the SDK's client).

Hypothesis draws arguments of every type: plausible values, random JSON (nested objects,
unicode, huge strings, NaN-like strings, integers at and past the int64 edges), missing
keys and extra keys. One server process takes them all, held open by a blocking portal
(an event loop in a thread) so that each example is one synchronous call. It must never
crash, every answer must be a success or an `is_error` result with a message, a success
must be right for its arguments, and afterwards every row that reaches DuckDB must be
well-formed and nothing may be quarantined.

The budget is fixed: `ACTIVITYBI_FUZZ_EXAMPLES` examples per tool (300 by default).
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import duckdb
import orjson
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activitybi.query.templates import TEMPLATES
from tests import chaos_harness as ch

EXAMPLES = int(os.environ.get("ACTIVITYBI_FUZZ_EXAMPLES", "300"))
CUSTOMER = "fuzz@example.com"
ACTIVITY_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
STATUSES = {"queued", "running", "succeeded", "failed", "cancelled"}

pytestmark = pytest.mark.timeout(600)

# -- values ----------------------------------------------------------------------------

INT_EDGES = [
    0,
    -1,
    1,
    255,
    256,
    1023,
    1024,
    2**31 - 1,
    -(2**31),
    2**53,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    -(2**64),
    10**30,
    16 * 1024 * 1024,
    16 * 1024 * 1024 + 1,
]
FLOAT_EDGES = [
    0.0,
    -0.0,
    1e-308,
    5e-324,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    0.1,
    1e16,
    2.0**63,
    -(2.0**63),
]
WEIRD_STRINGS = [
    "",
    " ",
    "NaN",
    "nan",
    "-NaN",
    "Infinity",
    "-Infinity",
    "inf",
    "1e309",
    "-0",
    "0x1F",
    "null",
    "true",
    "None",
    "undefined",
    "\x00",
    "a\x00b",
    "\u2028\u2029",
    "\ufeff",
    "\U0010ffff",
    "👩‍👩‍👧‍👦",
    "مرحبا",
    "ﷺ",
    "e\u0301",
    "\\",
    '"',
    "\\u0000",
    "'; DROP TABLE claude_stream; --",
    "../../etc/passwd",
    '{"a": 1}',
    "[1, 2]",
    "2026-02-30",
    "0000-00-00",
    "9999-12-31",
    "-0001-01-01",
    "2026-01-01T00:00:00Z",
    "asked_question",
    "Asked_Question",
    "a_b",
    "a__b",
    "_a_b",
    "a_b_",
    "a-b",
    "x" * 129,
    "preferences",
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "01arz3ndektsv4rrffq69g5fav",
    "../tickets/x",
]


def huge_strings() -> st.SearchStrategy[str]:
    return st.builds(
        lambda unit, n: unit * n,
        st.sampled_from(["x", "é", "😀", "\x00", "\\", '"']),
        st.sampled_from([4097, 65_536, 300_000, 1_048_576, 1_100_000]),
    )


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(INT_EDGES),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(FLOAT_EDGES),
    st.text(max_size=40),
    st.sampled_from(WEIRD_STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)
json_objects = st.dictionaries(st.text(max_size=16) | st.sampled_from(WEIRD_STRINGS), json_values, max_size=6)


def nest(depth: int, leaf: Any = 1) -> Any:
    """`leaf` inside `depth` objects: {"a": {"a": ... leaf}}."""
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


deep_values = st.integers(1, 190).map(nest)
"""Nested as deep as the stdio transport parses (its JSON parser stops near 200 levels,
counting the JSON-RPC envelope; see test_deeply_nested_arguments_are_answered_over_stdio)."""


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each chosen with its weight. (Hypothesis draws small integers
    far more often than others, so a seeded random picks, to keep the proportions.)"""
    weights = [w for w, _ in choices]
    strategies = [s for _, s in choices]
    return st.randoms(use_true_random=True).flatmap(lambda r: r.choices(strategies, weights)[0])


def sometimes_huge(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `plausible`, sometimes any JSON value, rarely a huge string."""
    return weighted((16, plausible), (2, json_values), (1, huge_strings()), (1, deep_values))


EXTRA_KEYS = st.sampled_from(
    [
        "customer",
        "customer_id",
        "ts",
        "_session_id",
        "_source",
        "__proto__",
        "constructor",
        "",
        "activity_id ",
        "ACTIVITY",
        "params",
        "ticket",
    ]
)


@st.composite
def arguments(
    draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Each field present (plausible, random or huge) or missing; required ones are only
    sometimes missing; now and then an extra key."""
    rnd = draw(st.randoms(use_true_random=True))
    args: dict[str, Any] = {}
    for name, plausible in fields.items():
        absent = rnd.random() < (0.05 if name in required else 0.4)
        if not absent:
            args[name] = draw(sometimes_huge(plausible))
    if rnd.random() < 0.1:
        args.update(
            draw(st.dictionaries(EXTRA_KEYS | st.text(max_size=10), json_values, min_size=1, max_size=2))
        )
    return args


activity_names = weighted(
    (6, st.from_regex(r"[a-z][a-z0-9]{0,12}(_[a-z0-9]{1,8}){1,3}", fullmatch=True)),
    (1, st.sampled_from(WEIRD_STRINGS)),
    (1, st.text(max_size=30)),
)
ids = weighted(
    (4, st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True)), (1, st.sampled_from(WEIRD_STRINGS))
)
sizes = weighted((4, st.integers(-10, 20_000_000)), (1, st.sampled_from(INT_EDGES)))
numbers = weighted(
    (3, st.floats(allow_nan=False)), (2, st.integers()), (1, st.sampled_from(INT_EDGES + FLOAT_EDGES))
)


def template_params() -> st.SearchStrategy[dict[str, Any]]:
    """Parameters shaped like a real template's (right names, values of every type)."""
    per_type: dict[str, st.SearchStrategy[Any]] = {
        "date": st.dates().map(str) | st.sampled_from(WEIRD_STRINGS) | st.integers(),
        "int": st.integers(-5, 10_000) | st.sampled_from(INT_EDGES) | st.floats(),
        "str": st.text(max_size=250) | st.sampled_from(WEIRD_STRINGS),
        "json": json_objects
        | st.fixed_dictionaries(
            {
                "cohort": st.fixed_dictionaries(
                    {"activity": activity_names},
                    optional={
                        "occurrence": st.sampled_from(["all", "first", "last", "nth", "time_spine", "x"]),
                        "nth": st.integers(-2, 5) | st.sampled_from(INT_EDGES),
                        "filters": st.lists(json_objects, max_size=2),
                        "columns": st.lists(json_values, max_size=3),
                    },
                ),
                "appends": st.lists(
                    st.fixed_dictionaries(
                        {"activity": activity_names},
                        optional={
                            "relationship": st.sampled_from(
                                [
                                    "first_ever",
                                    "last_before",
                                    "nth_after",
                                    "aggregate_in_between",
                                    "first_in_between",
                                    "bogus",
                                ]
                            ),
                            "nth": st.integers(-2, 5),
                            "filters": st.lists(json_objects, max_size=2),
                            "columns": st.lists(json_values, max_size=3),
                        },
                    ),
                    max_size=3,
                ),
            }
        ),
    }
    by_template = [
        st.fixed_dictionaries({}, optional={p.name: per_type[p.type] for p in t.params})
        for t in TEMPLATES.values()
    ]
    return st.one_of(*by_template, json_objects)


TOOL_ARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "log_event": arguments(
        {
            "activity": activity_names,
            "feature_json": json_objects,
            "link": st.text(max_size=2100),
            "revenue_impact": numbers,
            "anonymous_customer_id": st.text(max_size=300),
            "activity_id": ids,
            "model": st.text(max_size=220),
            "input_tokens": sizes,
            "output_tokens": sizes,
            "cost_usd": numbers,
        },
        required=("activity",),
    ),
    "log_insight": arguments(
        {
            "subject": st.text(max_size=210) | st.just("preferences"),
            "metric": st.text(max_size=210),
            "value": weighted((3, scalars), (1, json_objects), (1, st.text(max_size=5000)), (1, json_values)),
            "provenance_query_hash": st.from_regex(r"[0-9a-fA-F]{0,130}", fullmatch=True)
            | st.text(max_size=20),
        },
        required=("subject", "metric", "value"),
    ),
    # The data path: arguments of the right shape, with any content.
    "log_event (well-typed)": st.fixed_dictionaries(
        {"activity": st.from_regex(r"[a-z][a-z0-9]{0,12}(_[a-z0-9]{1,8}){1,3}", fullmatch=True)},
        optional={
            "feature_json": json_objects,
            "link": st.text(max_size=300),
            "revenue_impact": st.floats(allow_nan=False, allow_infinity=False),
            "anonymous_customer_id": st.text(max_size=100),
            "activity_id": st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True),
            "model": st.text(max_size=100),
            "input_tokens": st.integers(0, 2**63 - 1),
            "output_tokens": st.integers(0, 2**63 - 1),
            "cost_usd": st.floats(min_value=0, allow_nan=False, allow_infinity=False),
        },
    ),
    "log_insight (well-typed)": st.fixed_dictionaries(
        {
            "subject": st.text(min_size=1, max_size=200),
            "metric": st.text(min_size=1, max_size=200),
            "value": weighted(
                (3, st.floats(allow_nan=False, allow_infinity=False)),
                (2, st.integers(-(2**63), 2**63 - 1)),
                (1, st.booleans()),
                (2, st.text(max_size=4096)),
                (2, json_objects),
            ),
        },
        optional={"provenance_query_hash": st.from_regex(r"[0-9a-f]{8,128}", fullmatch=True)},
    ),
    "get_context": arguments({"max_bytes": sizes}),
    "list_query_templates": arguments({}),
    "submit_query": arguments(
        {
            "template": weighted((5, st.sampled_from(sorted(TEMPLATES))), (1, st.text(max_size=120))),
            "params": template_params(),
            "byte_cap": sizes,
        },
        required=("template",),
    ),
}


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Plausible values for a JSON-schema property (for tools this file has no strategy of
    its own for: it fuzzes every tool the server lists)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of(*(from_schema(s) for s in schema["anyOf"]))
    kind = schema.get("type")
    if kind == "string":
        return st.text(max_size=schema.get("maxLength", 100) + 5) | st.sampled_from(WEIRD_STRINGS)
    if kind == "integer":
        return sizes
    if kind == "number":
        return numbers
    if kind == "boolean":
        return st.booleans()
    if kind == "object":
        return json_objects
    if kind == "null":
        return st.none()
    return json_values


def schema_arguments(
    schema: dict[str, Any],
    overrides: dict[str, st.SearchStrategy[Any]],
) -> st.SearchStrategy[dict[str, Any]]:
    props = schema.get("properties", {})
    fields = {
        name: overrides[name] if name in overrides else from_schema(prop) for name, prop in props.items()
    }
    return arguments(fields, required=tuple(schema.get("required", ())))


# -- the server ------------------------------------------------------------------------


@dataclass
class Fuzz:
    portal: BlockingPortal
    session: Any
    home: Path
    acked_events: dict[str, dict[str, Any]] = field(default_factory=dict)
    atoms: set[str] = field(default_factory=set)
    tickets: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def call(self, tool: str, args: dict[str, Any]) -> Any:
        async def go() -> Any:
            with anyio.fail_after(60):
                return await self.session.call_tool(tool, args)

        try:
            return self.portal.call(go)
        except TimeoutError:
            pytest.fail(f"{tool} did not answer within 60 s: {_short(args)}")
        except Exception as e:  # a protocol error or a dead server
            pytest.fail(
                f"{tool} raised {type(e).__name__} instead of answering: {e!s:.300} for {_short(args)}"
            )

    def check(self, tool: str, args: dict[str, Any]) -> None:
        """Calls the tool and checks that the answer is a right success or a clear error."""
        result = self.call(tool, args)
        content = result.content or []
        message = ch.text(result)
        assert content, f"{tool} answered nothing for {_short(args)}"
        if result.is_error:
            assert message.strip(), f"{tool} answered an error without a message for {_short(args)}"
            self.outcomes[f"{tool}: error"] += 1
            self.errors[f"{tool}: {_first_words(message)}"] += 1
            return
        self.outcomes[f"{tool}: ok"] += 1
        if tool == "log_event":
            assert ACTIVITY_NAME.fullmatch(args["activity"]), f"accepted activity {args['activity']!r}"
            expected = args.get("activity_id")
            assert message == expected if expected is not None else ULID.fullmatch(message), (
                f"log_event returned {message!r} for {_short(args)}"
            )
            self.acked_events[message] = args
        elif tool == "log_insight":
            assert ULID.fullmatch(message), message
            self.atoms.add(message)
        elif tool == "get_context":
            ctx = orjson.loads(message)
            assert isinstance(ctx, dict) and ctx["customer"] == CUSTOMER, message[:300]
            if args.get("max_bytes") is not None:
                assert len(message.encode()) <= args["max_bytes"], (len(message), args["max_bytes"])
        elif tool == "list_query_templates":
            assert {t["name"] for t in orjson.loads(message)} == set(TEMPLATES)
        elif tool == "submit_query":
            out = orjson.loads(message)
            assert out["status"] in STATUSES, message
            self.tickets.append(out["ticket"])
        elif tool in ("get_query_result", "cancel_query"):
            out = orjson.loads(message)
            assert out.get("ticket", out.get("ticket_id")) == args["ticket"], message[:300]
            if tool == "get_query_result":
                assert out["status"] in STATUSES, message[:300]


def _short(args: Any) -> str:
    text = repr(args)
    return text if len(text) < 400 else text[:400] + f"... ({len(text):,} chars)"


def _first_words(message: str) -> str:
    return re.sub(r"[0-9]+", "N", message.split("\n")[0])[:90]


@contextmanager
def fuzz_server(home: Path, errlog: Any) -> Iterator[Fuzz]:
    with start_blocking_portal() as portal:
        cm = ch.stdio_session(home, CUSTOMER, errlog=errlog)
        with portal.wrap_async_context_manager(cm) as session:
            yield Fuzz(portal, session, home)


def run_examples(tool: str, strategy: st.SearchStrategy[Any], test: Callable[[Any], None]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(strategy)
    def examples(value: Any) -> None:
        test(value)

    examples()


def test_fuzz_every_tool(tmp_path: Path) -> None:
    home = tmp_path / "home"
    errlog = open(tmp_path / "server.log", "w+")  # noqa: SIM115
    started = time.monotonic()
    with fuzz_server(home, errlog) as fz:
        (pid,) = ch.pids_of(home, " serve")
        schemas = {t.name: t.input_schema for t in fz.portal.call(fz.session.list_tools).tools}
        listed = set(schemas)
        for name, strategy in TOOL_ARGS.items():
            run_examples(name, strategy, functools.partial(fz.check, name.split(" ")[0]))
        # Tools that take a ticket: real ones (this customer's), made-up ones, anything.
        tickets = st.one_of(
            st.sampled_from(fz.tickets or ["none"]),
            st.from_regex(r"[0-9A-Z]{26}", fullmatch=True),
            st.sampled_from(WEIRD_STRINGS),
            st.text(max_size=70),
        )
        known = {name.split(" ")[0] for name in TOOL_ARGS}
        for tool in sorted(listed - known):
            run_examples(
                tool, schema_arguments(schemas[tool], {"ticket": tickets}), functools.partial(fz.check, tool)
            )
        # Every tool with any arguments at all, and unknown tools.
        anything = st.tuples(st.sampled_from([*sorted(listed), "no_such_tool", ""]), json_objects)
        run_examples("any", anything, lambda pair: fz.check(pair[0], pair[1]))
        # Still alive, and the same process.
        fz.portal.call(fz.session.send_ping)
        assert {t.name for t in fz.portal.call(fz.session.list_tools).tools} == listed
        assert ch.pids_of(home, " serve") == [pid], "the server process changed: it crashed"
        # Every valid ticket ends, with a reason when it failed.
        final = {}
        deadline = time.monotonic() + 60
        for ticket in fz.tickets:
            while True:
                out = orjson.loads(ch.text(fz.call("get_query_result", {"ticket": ticket})))
                if out["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            final[ticket] = out
        stuck = [t for t, o in final.items() if o["status"] not in ("succeeded", "failed", "cancelled")]
        if stuck:
            errlog.seek(0)
            pytest.fail(
                f"{len(stuck)} of {len(final)} tickets never finished: "
                f"{[final[t] for t in stuck[:2]]}\n{owner_stacks(home)}\n"
                f"server stderr:\n{errlog.read()[-5000:]}"
            )
        failed = [o for o in final.values() if o["status"] == "failed"]
        assert all(o.get("error") for o in failed), "a failed ticket has no reason"
    fuzz_seconds = time.monotonic() - started
    summary = upload(home)
    errlog.seek(0)
    server_log = errlog.read()
    errlog.close()
    rows = check_rows(home)
    stored = {aid for aid, *_ in rows}
    missing = [a for a in fz.acked_events if a not in stored]
    assert not missing, f"{len(missing)} acknowledged events are not in the warehouse: {missing[:5]}"
    assert fz.atoms <= stored, "acknowledged insights are missing from the warehouse"
    quarantine = home / "quarantine" / "uploader.jsonl"
    assert not quarantine.exists() or not quarantine.read_bytes().strip(), (
        "the uploader quarantined lines:\n" + quarantine.read_text()[:2000]
    )
    torn = list((home / "queue" / "quarantine").glob("*")) if (home / "queue" / "quarantine").exists() else []
    assert not torn, f"torn lines quarantined: {torn}"
    print(f"\n{sum(fz.outcomes.values()):,} calls in {fuzz_seconds:.1f} s; {summary}")
    print(
        f"{len(rows):,} rows checked; {len(fz.tickets)} tickets: "
        + ", ".join(f"{k} {v}" for k, v in Counter(o["status"] for o in final.values()).items())
    )
    for key, n in sorted(fz.outcomes.items()):
        print(f"  {key}: {n}")
    print("most common errors:")
    for key, n in fz.errors.most_common(25):
        print(f"  {n:5d}  {key}")
    tracebacks = server_log.count("Traceback")
    print(f"server stderr: {len(server_log):,} bytes, {tracebacks} tracebacks")
    # A tool that raises an unexpected exception answers only "Error executing tool X" and
    # leaves a traceback on stderr (the owner's go there too): each is a bug the fuzz found.
    raised = Counter(
        m.group(0)[:160]
        for m in re.finditer(r"^[A-Za-z_.]*(?:Error|Exception|Exit)\b.*$", server_log, re.MULTILINE)
    )
    assert not tracebacks, (
        f"{tracebacks} unexpected exceptions in the server or its owner: {dict(raised)}\n{server_log[-3000:]}"
    )


def owner_stacks(home: Path) -> str:
    """What the warehouse owner is doing (py-spy), to explain a hang."""
    import shutil
    import subprocess

    pids = ch.pids_of(home, "upload --follow")
    if not pids or not shutil.which("py-spy"):
        return f"owner pids {pids}"
    out = subprocess.run(
        ["py-spy", "dump", "--pid", str(pids[0])], capture_output=True, text=True, timeout=60
    )
    return f"owner {pids[0]}:\n{out.stdout[-6000:]}{out.stderr[-500:]}"


def upload(home: Path) -> str:
    return ch.upload_once(home)


def check_rows(home: Path) -> list[tuple[Any, ...]]:
    """Every row of claude_stream: activity verb_noun, an id, a ts, feature_json an object
    or NULL."""
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT activity_id, activity, ts, feature_json, customer FROM claude_stream"
        ).fetchall()
        bad_json = con.execute(
            "SELECT activity_id, feature_json FROM claude_stream WHERE feature_json IS NOT NULL AND "
            "(NOT json_valid(feature_json) OR json_type(feature_json) <> 'OBJECT')"
        ).fetchall()
    finally:
        con.close()
    assert rows, "nothing reached the warehouse"
    assert not bad_json, f"feature_json that is not a JSON object: {bad_json[:3]}"
    problems = []
    for aid, activity, ts, features, customer in rows:
        if not isinstance(aid, str) or not aid:
            problems.append(f"empty activity_id: {aid!r}")
        if not isinstance(activity, str) or not ACTIVITY_NAME.fullmatch(activity):
            problems.append(f"{aid}: activity {activity!r} is not verb_noun")
        if ts is None:
            problems.append(f"{aid}: ts is NULL")
        if features is not None and not isinstance(orjson.loads(features), dict):
            problems.append(f"{aid}: feature_json is not an object")
        if customer != CUSTOMER:
            problems.append(f"{aid}: customer {customer!r}, not the connection's")
    assert not problems, f"{len(problems)} malformed rows: {problems[:10]}"
    return rows


def test_a_result_past_int64_still_finishes_the_ticket(tmp_path: Path) -> None:
    home = tmp_path / "home"
    errlog = open(tmp_path / "server.log", "w+")  # noqa: SIM115

    async def run() -> list[str]:
        async with ch.stdio_session(home, CUSTOMER, errlog=errlog) as s:
            for _ in range(3):  # 3 * (2**63 - 1) > 2**64: past what JSON numbers carry here
                await s.call_tool(
                    "log_event",
                    {"activity": "asked_question", "model": "m", "input_tokens": 2**63 - 1, "cost_usd": 0.5},
                )
            await anyio.to_thread.run_sync(lambda: ch.wait_caught_up(home / "queue", 30))
            tickets = [
                orjson.loads(ch.text(await s.call_tool("submit_query", {"template": t})))["ticket"]
                for t in ("cost_by_model", "activity_counts")
            ]
            statuses: list[str] = []
            with anyio.move_on_after(10):
                while True:
                    statuses = [
                        orjson.loads(ch.text(await s.call_tool("get_query_result", {"ticket": t})))["status"]
                        for t in tickets
                    ]
                    if all(x in ("succeeded", "failed", "cancelled") for x in statuses):
                        break
                    await anyio.sleep(0.1)
            return statuses

    statuses = ch.run_async(run, 90)
    errlog.close()
    assert statuses[1] == "succeeded", statuses  # the ticket after it runs too
    assert statuses[0] in ("succeeded", "failed"), statuses  # the big one ends, either way


def test_deeply_nested_arguments_are_answered_over_stdio(tmp_path: Path) -> None:
    answers: list[str] = []

    async def run() -> None:
        async with ch.stdio_session(tmp_path / "home", CUSTOMER) as s:
            with anyio.move_on_after(10):
                try:
                    result = await s.call_tool(
                        "log_event", {"activity": "asked_question", "feature_json": nest(198)}
                    )
                    answers.append(ch.text(result) if result.is_error else "a success?")
                except Exception as e:  # a protocol error with a message is an answer too
                    answers.append(f"{type(e).__name__}: {e}")
            await s.send_ping()

    ch.run_async(run, 60)
    assert answers and answers[0], "no answer within 10 s"
