"""Scale proof (issue 14): a warehouse of 10,000,000 events, then every template's p95.

Generates a realistic stream (sessions of prompts, model calls with tokens and cost, tool
calls with latency, outcome and MCP server, insights learned, daily Claude Code metrics),
spread over `--days` days, for `--customers` customers whose sizes are skewed, one of them
heavy (`--heavy` events, an automation running every day). The events are built by the
capture paths' own builders (`activitybi.capture.facts`) and appended, one day at a time
(streaming: memory stays flat), to a real queue; insights also go to the customers'
journals, as `log_insight` writes them. The owner then loads the queue the way it does
in production: `activitybi upload --once` in a process of its own (throughput, CPU time and
peak RSS measured on that process; DuckDB's `read_json` of the same lines is its baseline),
and the owner's context refresh writes the snapshots `get_context` reads.

Then, for the heavy customer and a typical one (the median size), every SafeSQL template
(with realistic parameters) and `get_context` (a cold build) is timed against a plain
DuckDB scan of the same columns of that customer's rows (the customer found by its key
column, the same `since` window, each column read with `min`: no JSON parsing, no
grouping). Runs alternate and the p95 of each counts; the ratio is template p95 / scan p95
(target <= 3x).

Run: python benches/scale.py [--events N] [--customers C] [--heavy H] [--days D] [--reps R]
     [--keep DIR [--reuse]]   (--reuse: time the queries again on the warehouse kept in DIR)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from activitybi import Queue, config, ulid
from activitybi.capture import facts
from activitybi.capture.otlp import RECORDED_METRIC
from activitybi.events import INSIGHT_ACTIVITY, LOADED_COLUMNS
from activitybi.memory.context import ContextService
from activitybi.memory.journal import MemoryJournal
from activitybi.query import templates
from activitybi.warehouse.duckdb import DuckDBWarehouse

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benches/: the loader's baseline

from load_throughput import read_json_once

HEAVY = "heavy-automation@scale.example"
NS = 1_000_000_000
EPOCH = dt.datetime(1970, 1, 1)
DAY_NS = 86_400 * NS
MODELS = (  # name, weight, US dollars per million input / output tokens
    ("claude-sonnet-4-5", 0.6, 3.0, 15.0),
    ("claude-haiku-4-5", 0.25, 1.0, 5.0),
    ("claude-opus-4-1", 0.15, 15.0, 75.0),
)
BUILTIN_TOOLS = ("Read", "Edit", "Bash", "Grep", "Glob", "Write", "TodoWrite", "WebFetch", "Task")
MCP_TOOLS = (  # (server, tool): what Claude Code names `mcp__<server>__<tool>`
    ("github", "search_code"),
    ("github", "create_pull_request"),
    ("linear", "list_issues"),
    ("postgres", "query"),
    ("activitybi", "get_context"),
    ("activitybi", "submit_query"),
)
ERRORS = ("error: timeout", "error: permission denied", "error: not found", "error: invalid arguments")
SUBJECTS = ("repo", "team", "deploy", "preferences", "budget", "oncall")
METRICS = ("weekly_cost_usd", "p95_build_s", "open_prs", "preferred_model", "language", "error_rate")

STREAM_COLUMNS = (*LOADED_COLUMNS, "_ingested_at")
ATOM_COLUMNS = ("atom_id", "customer_id", "subject", "metric", "value", "provenance_query_hash", "ts")


@dataclass
class Population:
    """Who the customers are, and how many events each has in all."""

    customers: list[str]
    totals: np.ndarray
    heavy: str
    typical: str


def population(events: int, customers: int, heavy: int, seed: int) -> Population:
    """`customers` customers, one heavy with `heavy` events; the rest share the others with
    lognormal sizes (a few large teams, many light users). `typical` is the median one."""
    if not 0 < heavy < events or customers < 2:
        raise ValueError("need 0 < --heavy < --events and --customers >= 2")
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.0, customers - 1)
    rest = np.floor(weights / weights.sum() * (events - heavy)).astype(np.int64)
    rest[np.argsort(-weights)[: events - heavy - int(rest.sum())]] += 1  # exactly `events`
    rest = np.maximum(rest, 1)
    rest[np.argmax(rest)] -= int(rest.sum()) - (events - heavy)
    names = [HEAVY] + [f"user{i:05d}@customer{i % 97:02d}.example" for i in range(customers - 1)]
    totals = np.concatenate([[heavy], rest])
    typical = names[1 + int(np.argsort(rest)[len(rest) // 2])]
    return Population(names, totals, HEAVY, typical)


def daily_quotas(pop: Population, days: int, seed: int) -> np.ndarray:
    """Events per (day, customer), summing exactly to each customer's total: people use it
    on some days only (weekends less), some joined late; the heavy customer runs daily."""
    rng = np.random.default_rng(seed + 1)
    n = len(pop.customers)
    weekday = np.array([0.35 if d % 7 in (5, 6) else 1.0 for d in range(days)])
    active_share = rng.uniform(0.15, 0.9, n)
    joined = np.where(rng.random(n) < 0.3, rng.integers(0, max(1, days * 2 // 3), n), 0)
    active = rng.random((days, n)) < active_share
    active &= np.arange(days)[:, None] >= joined[None, :]
    active[days - 1] |= ~active.any(axis=0)  # everyone has at least one day
    active[:, 0] = True  # the heavy customer
    weights = weekday[:, None] * active * rng.uniform(0.5, 1.5, (days, n))
    share = np.cumsum(weights, axis=0) / weights.sum(axis=0)
    cumulative = np.rint(share * pop.totals[None, :]).astype(np.int64)
    return np.diff(cumulative, axis=0, prepend=0)


@dataclass
class Profile:
    """What a customer's sessions look like."""

    model: str
    projects: tuple[str, ...]
    utc_offset_h: int


def _profile(rng: random.Random, i: int) -> Profile:
    model = rng.choices([m[0] for m in MODELS], [m[1] for m in MODELS])[0]
    projects = tuple(
        f"/home/dev{i}/src/{name}" for name in rng.sample(("web", "api", "infra", "ml", "docs"), 3)
    )
    return Profile(model, projects, rng.choice((-8, -5, 0, 1, 2, 5, 8, 9)))


def stamp(nanos: int) -> str:
    """The queue's timestamp text of a time in nanoseconds since the epoch."""
    return facts.iso_ts(EPOCH + dt.timedelta(microseconds=nanos // 1000))


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


_PRICES = {m[0]: (m[2], m[3]) for m in MODELS}


def _session(customer: str, profile: Profile, t: int, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """`n` events of one session starting at `t` (ns): turns of a prompt, then model calls
    and the tool calls they make, now and then an insight learned."""
    sid, project = _uid(rng), rng.choice(profile.projects)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        out.append(
            facts.asked_question(
                customer=customer,
                source="hook",
                ts=stamp(t),
                prompt_id=_uid(rng),
                session_id=sid,
                prompt_length=int(rng.lognormvariate(5.0, 1.0)) + 1,
                project=project,
            )
        )
        t += int(rng.uniform(0.5, 3.0) * NS)
        for _ in range(rng.randint(1, 5)):
            if len(out) >= n:
                break
            model = profile.model if rng.random() < 0.85 else rng.choice(MODELS)[0]
            inp, outp = int(rng.lognormvariate(8.0, 1.0)), int(rng.lognormvariate(5.5, 0.8))
            cached = int(inp * rng.uniform(0.0, 0.9))
            pin, pout = _PRICES[model]
            t += int(rng.lognormvariate(1.0, 0.6) * NS)
            out.append(
                facts.called_model(
                    customer=customer,
                    source="otel",
                    ts=stamp(t),
                    request_id=f"req_{rng.getrandbits(96):024x}",
                    session_id=sid,
                    model=model,
                    input_tokens=inp,
                    output_tokens=outp,
                    cache_read_input_tokens=cached,
                    cache_creation_input_tokens=int(inp * 0.05),
                    cost_usd=round((inp - cached) * pin / 1e6 + cached * pin / 1e7 + outp * pout / 1e6, 6),
                    agent="Explore" if rng.random() < 0.1 else None,
                    project=project,
                )
            )
            for _ in range(rng.choice((0, 1, 1, 2, 3))):
                if len(out) >= n:
                    break
                latency = round(rng.lognormvariate(4.0, 1.3), 3)
                mcp = rng.random() < 0.25
                server, tool = rng.choice(MCP_TOOLS) if mcp else (None, rng.choice(BUILTIN_TOOLS))
                t += int(latency * 1e6) + int(rng.uniform(0.05, 0.5) * NS)
                out.append(
                    facts.called_tool(
                        customer=customer,
                        source="mcp" if server == "activitybi" else "hook",
                        ts=stamp(t),
                        tool_use_id=f"toolu_{rng.getrandbits(96):024x}",
                        session_id=sid,
                        tool=f"mcp__{server}__{tool}" if server else tool,
                        outcome="ok" if rng.random() < 0.96 else rng.choice(ERRORS),
                        latency_ms=latency,
                        mcp_server=server,
                    )
                )
        if len(out) < n and rng.random() < 0.03:
            t += NS
            out.append(_insight(customer, sid, t, rng))
        t += int(rng.lognormvariate(3.5, 1.0) * NS)  # the person reads, thinks, types
    return out


def _insight(customer: str, sid: str, t: int, rng: random.Random) -> dict[str, Any]:
    """A `log_insight` event as the server writes it."""
    metric = rng.choice(METRICS)
    value: Any = (
        rng.choice(("python", "go", "sonnet", "rust"))
        if metric in ("language", "preferred_model")
        else (round(rng.uniform(0, 500), 2))
    )
    return {
        "activity": INSIGHT_ACTIVITY,
        "activity_id": ulid(),
        "ts": stamp(t),
        "customer": customer,
        "feature_json": {
            "subject": rng.choice(SUBJECTS),
            "metric": metric,
            "value": value,
            "provenance_query_hash": f"{rng.getrandbits(128):032x}",
        },
        "_session_id": sid,
        "_source": "mcp",
    }


def _metrics(customer: str, profile: Profile, day_ns: int, rng: random.Random) -> list[dict[str, Any]]:
    """The day's Claude Code metric points (OpenTelemetry deltas), as the receiver records them."""
    t = day_ns + DAY_NS - 60 * NS
    day = dt.datetime.fromtimestamp(day_ns / NS, dt.UTC).date().isoformat()
    points = (
        ("claude_code.cost.usage", "USD", profile.model, None, round(rng.uniform(0.1, 40.0), 4)),
        ("claude_code.token.usage", "tokens", profile.model, "input", rng.randint(10_000, 5_000_000)),
        ("claude_code.token.usage", "tokens", profile.model, "output", rng.randint(1_000, 300_000)),
        ("claude_code.lines_of_code.count", "count", None, "added", rng.randint(0, 2_000)),
        ("claude_code.lines_of_code.count", "count", None, "removed", rng.randint(0, 800)),
    )
    out = []
    for i, (name, unit, model, kind, value) in enumerate(points):
        series = f"{name}|{model}|{kind}"
        out.append(
            facts.event(
                RECORDED_METRIC,
                activity_id=facts.fact_id(customer, RECORDED_METRIC, series, str(t + i)),
                customer=customer,
                source="otel",
                ts=stamp(t + i * 1_000_000),
                session_id=None,
                features={
                    "name": name,
                    "value": value,
                    "unit": unit,
                    "day": day,
                    "temporality": "delta",
                    "model": model,
                    "type": kind,
                },
            )
        )
    return out


def stream(pop: Population, days: int, end: dt.datetime, seed: int) -> Iterator[list[dict[str, Any]]]:
    """The events, one day at a time (each day's in ts order), ending the day before `end`."""
    quotas = daily_quotas(pop, days, seed)
    rng = random.Random(seed)
    profiles: dict[int, Profile] = {}
    first_day = int((end - dt.timedelta(days=days)).timestamp()) * NS
    for d in range(days):
        day_ns = first_day + d * DAY_NS
        events: list[dict[str, Any]] = []
        for c in np.flatnonzero(quotas[d]):
            customer, q = pop.customers[c], int(quotas[d, c])
            profile = profiles.get(c) or profiles.setdefault(c, _profile(rng, int(c)))
            if q >= 20:
                events += _metrics(customer, profile, day_ns, rng)
                q -= 5
            while q > 0:
                size = min(q, max(2, int(rng.expovariate(1 / 40))))
                local_h = rng.gauss(14, 3) if c else rng.uniform(0, 23.5)  # the automation runs all day
                start = day_ns + int(((local_h - profile.utc_offset_h) % 23.5) * 3600 * NS)
                events += _session(customer, profile, start, size, rng)
                q -= size
        events.sort(key=lambda e: e["ts"])
        yield events


@dataclass
class Filled:
    events: int = 0
    seconds: float = 0.0
    activities: Counter[str] = field(default_factory=Counter)


def fill(home: Path, pop: Population, days: int, end: dt.datetime, seed: int) -> Filled:
    """Appends the stream to `home`'s queue, and each insight to its customer's journal."""
    journal = MemoryJournal(config.Home(home).memory)
    done = Filled()
    t = time.perf_counter()
    with Queue(str(config.Home(home).queue), max_pending=int(pop.totals.sum()) + 1) as q:
        for events in stream(pop, days, end, seed):
            for i in range(0, len(events), 10_000):
                q.append_many(events[i : i + 10_000])
            for e in events:
                done.activities[e["activity"]] += 1
                if e["activity"] == INSIGHT_ACTIVITY:
                    who = e["customer"]
                    atom = {"atom_id": e["activity_id"], "customer_id": who, "ts": e["ts"][:-1]}
                    journal.append(who, {**atom, **e["feature_json"]})
            done.events += len(events)
    done.seconds = time.perf_counter() - t
    return done


@dataclass
class Owned:
    """One run of an owner's job in a process of its own."""

    seconds: float
    cpu: float  # user + system seconds
    peak_rss: int  # bytes


def run_owner(home: Path, args: list[str]) -> Owned:
    """`python ARGS` with `home` as ACTIVITYBI_HOME; wall and CPU time, peak RSS."""
    env = {**os.environ, config.HOME_ENV: str(home)}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"python {' '.join(args)[:80]} exited with {proc.returncode}")
    return Owned(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)


def upload(home: Path) -> Owned:
    """`activitybi upload --once`: the owner's drain of the whole queue."""
    return run_owner(home, ["-m", "activitybi", "upload", "--once", "--quiet"])


REFRESH = """
from activitybi import config
from activitybi.owner.loop import refresh_context
from activitybi.warehouse.duckdb import DuckDBWarehouse
wh = DuckDBWarehouse.open_default()
wh.con.execute("SET enable_progress_bar = false")
refresh_context(wh, config.Home.current().context)
wh.close()
"""


def refresh_context(home: Path) -> Owned:
    """The owner's periodic context refresh (context_cache, then the snapshots get_context
    reads), in a process of its own like the owner's."""
    return run_owner(home, ["-c", REFRESH])


def keep_segments(home: Path) -> list[str]:
    """Hard links to the queue's segments (the uploader deletes what it acknowledged), for
    the `read_json` baseline of the same lines."""
    raw = home / "raw"
    raw.mkdir()
    for segment in sorted(config.Home(home).queue.glob("*.ndjson")):
        os.link(segment, raw / segment.name)
    return sorted(str(p) for p in raw.glob("*.ndjson"))


@dataclass
class Case:
    """One template call, and the plain scan of the same columns it is measured against."""

    name: str
    sql: str
    values: list[Any]
    scan_sql: str
    scan_values: list[Any]


def dataset_spec() -> dict[str, Any]:
    """An analyst's question: each prompt, with the first model call after it (model,
    tokens) and the tool calls until the next prompt (how many, how many failed)."""
    return {
        "cohort": {
            "activity": "asked_question",
            "columns": [
                {"column": "activity_id", "as": "prompt"},
                {"column": "ts", "as": "at"},
                {"feature": "prompt_length", "type": "integer", "as": "prompt_length"},
            ],
        },
        "appends": [
            {
                "activity": "called_model",
                "relationship": "first_after",
                "columns": [
                    {"feature": "model", "type": "string", "as": "model"},
                    {"feature": "output_tokens", "type": "integer", "as": "output_tokens"},
                ],
            },
            {
                "activity": "called_tool",
                "relationship": "aggregate_in_between",
                "columns": [
                    {"feature": "latency_ms", "type": "float", "agg": "count", "as": "tool_calls"},
                    {"feature": "latency_ms", "type": "float", "agg": "sum", "as": "tool_ms"},
                ],
            },
        ],
    }


def params_for(name: str, insight: tuple[str, str], start: dt.date) -> dict[str, Any]:
    """Realistic parameters: each template's defaults (the last 30 days), the whole history
    of the customer's most frequent insight, an analyst's dataset."""
    if name == "insight_history":
        return {"subject": insight[0], "metric": insight[1], "since": start.isoformat()}
    if name == "dataset":
        return {"spec": dataset_spec()}
    return {}


def _columns(sql: str, table: tuple[str, ...]) -> list[str]:
    return [c for c in table if re.search(rf"\b{c}\b", sql)]


def case(name: str, customer: str, insight: tuple[str, str], start: dt.date) -> Case:
    """The template bound for `customer`, and a scan of the columns it reads: `min` of each
    over the same customer's rows in the same `since` window, the customer found by the
    table's key column (which DuckDB filters in the scan itself)."""
    template = templates.get(name)
    params = params_for(name, insight, start)
    sql, values = template.bind(params, customer)
    atoms = "insight_atoms" in sql
    table, where = ("insight_atoms", "customer_id = ?") if atoms else ("claude_stream", "_customer_key = ?")
    columns = _columns(sql, ATOM_COLUMNS if atoms else STREAM_COLUMNS)
    scan_values: list[Any] = [customer]
    if any(p.name == "since" for p in template.params):
        where += " AND ts >= ?"
        scan_values.append(templates.check_params(template, params)["since"])
    scan = f"SELECT {', '.join(f'min({c})' for c in columns)} FROM {table} WHERE {where}"
    return Case(name, sql, values, scan, scan_values)


def p95(samples: list[float]) -> float:
    return float(np.percentile(samples, 95))


@dataclass
class Timing:
    name: str
    ours: float  # p95 seconds
    scan: float
    rows: int

    @property
    def ratio(self) -> float:
        return self.ours / self.scan


def time_case(wh: DuckDBWarehouse, c: Case, reps: int) -> Timing:
    """p95 of the template and of its scan, alternating, after one untimed run of each."""
    rows = len(wh.execute(c.sql, c.values).rows)
    wh.execute(c.scan_sql, c.scan_values)
    ours, scan = [], []
    for _ in range(reps):
        t = time.perf_counter()
        wh.execute(c.sql, c.values)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        wh.execute(c.scan_sql, c.scan_values)
        scan.append(time.perf_counter() - t)
    return Timing(c.name, p95(ours), p95(scan), rows)


def time_context(home: Path, wh: DuckDBWarehouse, customer: str, reps: int) -> Timing:
    """get_context's cold build (no cache: journal folded, snapshot read) against a scan of
    the stream columns the context summarises, over its 30-day window."""
    h = config.Home(home)
    since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=30)
    scan = (
        "SELECT min(ts), min(activity), min(_session_id), min(feature_json) FROM claude_stream "
        "WHERE _customer_key = ? AND ts >= ?"
    )
    size = len(ContextService(MemoryJournal(h.memory), h.context).get(customer))
    wh.execute(scan, [customer, since])
    ours, base = [], []
    for _ in range(reps):
        service = ContextService(MemoryJournal(h.memory), h.context)
        t = time.perf_counter()
        service.get(customer)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        wh.execute(scan, [customer, since])
        base.append(time.perf_counter() - t)
    return Timing("get_context", p95(ours), p95(base), size)


def measure(home: Path, pop: Population, reps: int) -> dict[str, list[Timing]]:
    """Every template and get_context, for the heavy and the typical customer."""
    settings = config.settings()
    wh = DuckDBWarehouse(
        config.Home(home).warehouse,
        read_only=True,
        memory_limit=settings.query_memory_limit,
        threads=settings.query_threads,
    )
    wh.con.execute("SET enable_progress_bar = false")
    out: dict[str, list[Timing]] = {}
    try:
        first_day = wh.execute("SELECT min(ts)::DATE FROM claude_stream").rows[0][0]
        for customer in (pop.heavy, pop.typical):
            insight = wh.execute(  # the customer's most frequent insight, for insight_history
                "SELECT subject, metric FROM insight_atoms WHERE customer_id = ? "
                "GROUP BY ALL ORDER BY count(*) DESC, subject, metric LIMIT 1",
                [customer],
            ).rows or [("repo", "open_prs")]
            out[customer] = [
                time_case(wh, case(name, customer, tuple(insight[0]), first_day), reps)
                for name in templates.TEMPLATES
            ]
            out[customer].append(time_context(home, wh, customer, reps))
    finally:
        wh.close()
    return out


def report(timings: dict[str, list[Timing]], pop: Population) -> float:
    """Prints the table; returns the worst ratio."""
    heavy, typical = (timings[pop.heavy], timings[pop.typical])
    n_heavy, n_typical = (int(pop.totals[pop.customers.index(c)]) for c in (pop.heavy, pop.typical))
    print(
        f"\n{'':22} {'heavy (' + format(n_heavy, ',') + ' events)':>40} "
        f"{'typical (' + format(n_typical, ',') + ' events)':>40}"
    )
    columns = f"{'p95 ms':>9} {'scan ms':>9} {'ratio':>7} {'rows':>9}"
    print(f"{'template':22} {columns}   {columns}")
    worst = 0.0
    for h, t in zip(heavy, typical, strict=True):
        worst = max(worst, h.ratio, t.ratio)
        print(
            f"{h.name:22} {h.ours * 1e3:9.1f} {h.scan * 1e3:9.1f} {h.ratio:6.2f}x {h.rows:9,}   "
            f"{t.ours * 1e3:9.1f} {t.scan * 1e3:9.1f} {t.ratio:6.2f}x {t.rows:9,}"
        )
    over = [
        f"{x.name} ({who})" for who, xs in (("heavy", heavy), ("typical", typical)) for x in xs if x.ratio > 3
    ]
    print(f"worst ratio {worst:.2f}x; over 3x: {', '.join(over) or 'none'}")
    print("(get_context rows = bytes of its JSON)")
    return worst


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def build(home: Path, pop: Population, days: int, seed: int) -> None:
    """The warehouse as the owner builds it: the stream generated into the queue, uploaded
    (against DuckDB's own read_json of the same lines), the context refreshed."""
    end = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=1)
    filled = fill(home, pop, days, end, seed)
    print(
        f"generated {filled.events:,} events for {len(pop.customers):,} customers over {days} days "
        f"in {filled.seconds:.1f} s: "
        + ", ".join(f"{a} {n / filled.events:.1%}" for a, n in filled.activities.most_common())
    )
    segments = keep_segments(home)
    load = upload(home)
    size = config.Home(home).warehouse.stat().st_size
    print(
        f"load (activitybi upload --once, its own process): {load.seconds:.1f} s, "
        f"{filled.events / load.seconds:,.0f} events/s ({filled.events / load.cpu:,.0f} per CPU second), "
        f"owner peak RSS {load.peak_rss / 2**20:,.0f} MiB; "
        f"warehouse file {size / 2**30:.2f} GiB ({size / filled.events:.0f} bytes/event)"
    )
    wall, cpu = read_json_once(segments, home / "read_json.duckdb")
    print(
        f"  DuckDB's own read_json of the same lines: {filled.events / wall:,.0f} events/s "
        f"({filled.events / cpu:,.0f} per CPU second): the owner at {wall / load.seconds:.0%} of it "
        f"(CPU: {cpu / load.cpu:.0%})"
    )
    shutil.rmtree(home / "raw")
    (home / "read_json.duckdb").unlink()
    refresh = refresh_context(home)
    snapshots = len(os.listdir(config.Home(home).context))
    print(
        f"owner context refresh (context_cache + {snapshots:,} snapshots): "
        f"{refresh.seconds:.1f} s, peak RSS {refresh.peak_rss / 2**20:,.0f} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--heavy", type=int, default=1_000_000, help="the heavy customer's events")
    ap.add_argument("--days", type=int, default=180, help="the stream spans this many days, up to yesterday")
    ap.add_argument("--reps", type=int, default=20, help="timed runs of each query (p95 of them)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument(
        "--keep", type=Path, help="build the warehouse here and keep it (default: a temporary dir)"
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="time the queries only, on the warehouse a run with the same sizes and --keep built",
    )
    args = ap.parse_args()
    if args.reuse and args.keep is None:
        ap.error("--reuse needs --keep DIR")
    home = args.keep or Path(tempfile.mkdtemp(prefix="abi-scale-"))
    try:
        print(f"load average {load_average()}")
        pop = population(args.events, args.customers, args.heavy, args.seed)
        if not args.reuse:
            build(home, pop, args.days, args.seed)
        report(measure(home, pop, args.reps), pop)
        print(f"p95 of {args.reps} alternating runs each; load average {load_average()}")
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
