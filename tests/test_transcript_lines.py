"""The transcript importer's lines, byte for byte: the Rust core (`_core.TranscriptImporter`)
must write what the Python fact builders (`activitybi.capture.facts`) give through
`Queue.append_many`, the path every other capture takes.

Each case is a few awkward lines and the facts they mean, written here by hand with the
builders; both go through a real queue and the queue's lines are compared as bytes.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from activitybi import Queue, QueueReader, Redactor
from activitybi.capture import facts, prices, transcripts
from activitybi.capture.common import PROMPT_CAP, prompt_id
from activitybi.config import Home

CUSTOMER = 'ana ✓ "q" \\ \x01\u2028'
SESSION = "s-1"
CWD = "/home/ana/shop"
SONNET = "claude-sonnet-4-5-20250929"
TS = "2026-11-02T10:00:00.000Z"
TABLE = prices.load()
Event = dict[str, Any]


def cost(model: str, i: int, o: int, w5: int, w1: int, r: int) -> float:
    """The price table's cost, worked out here from its rates."""
    name = model[model.find("claude") :] if "claude" in model else model
    key = max((k for k in TABLE.models if name.startswith(k)), key=len)
    p = TABLE.models[key]
    total = i * p.input + o * p.output + w5 * p.cache_write_5m + w1 * p.cache_write_1h + r * p.cache_read
    return round(total / 1_000_000, 9)


def line(kind: str, ts: Any = TS, **fields: Any) -> dict[str, Any]:
    base = {"type": kind, "sessionId": SESSION, "cwd": CWD, "timestamp": ts, "isSidechain": False}
    return {k: v for k, v in (base | fields).items() if v is not ...}


def assistant(
    req: Any, usage: Any, content: Any = None, *, msg: Any = "msg", model: Any = SONNET, **kw: Any
) -> dict[str, Any]:
    message = {"id": msg, "model": model, "role": "assistant", "content": content or [], "usage": usage}
    return line("assistant", requestId=req, message={k: v for k, v in message.items() if v is not ...}, **kw)


def user(content: Any, **kw: Any) -> dict[str, Any]:
    return line("user", message={"role": "user", "content": content}, **kw)


def usage(i: Any, o: Any, w: Any = 0, r: Any = 0, **extra: Any) -> dict[str, Any]:
    return {
        "input_tokens": i,
        "output_tokens": o,
        "cache_creation_input_tokens": w,
        "cache_read_input_tokens": r,
        **extra,
    }


def use(tool_id: Any, name: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": {"path": "a.py"}}


def result(tool_id: str, content: Any = "ok", **kw: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": content, **kw}


def model_fact(
    req: str,
    i: int,
    o: int,
    w: int = 0,
    r: int = 0,
    *,
    w1: int = 0,
    model: str | None = SONNET,
    ts: str = TS,
    msg: Any = "msg",
    agent: str | None = None,
    session: str = SESSION,
    project: str = CWD,
    priced: bool = True,
) -> Event:
    c = cost(model, i, o, max(w - w1, 0), w1, r) if priced and model else None
    return facts.called_model(
        customer=CUSTOMER,
        source="transcript",
        ts=ts,
        request_id=req,
        session_id=session,
        model=model,
        input_tokens=i,
        output_tokens=o,
        cache_creation_input_tokens=w,
        cache_read_input_tokens=r,
        cost_usd=c,
        agent=agent,
        cost_source=TABLE.cost_source if c is not None else None,
        message_id=msg,
        project=project,
    )


def tool_fact(
    tool_id: str,
    tool: str | None,
    outcome: str = "ok",
    *,
    ts: str = TS,
    latency: float | None = 0.0,
    error: str | None = None,
    agent: str | None = None,
    server: str | None = None,
    project: str = CWD,
) -> Event:
    return facts.called_tool(
        customer=CUSTOMER,
        source="transcript",
        ts=ts,
        tool_use_id=tool_id,
        session_id=SESSION,
        tool=tool,
        outcome=outcome,
        latency_ms=latency,
        mcp_server=server,
        error=error,
        agent=agent,
        project=project,
    )


def prompt_fact(
    text: str, n: int = 0, *, ts: str = TS, session: str = SESSION, project: str = CWD, content: bool = False
) -> Event:
    return facts.asked_question(
        customer=CUSTOMER,
        source="transcript",
        ts=ts,
        prompt_id=prompt_id(session, text, n),
        session_id=session,
        prompt_length=len(text),
        prompt=text[:PROMPT_CAP] if content else None,
        project=project,
    )


def encode(item: dict[str, Any] | bytes) -> bytes:
    return item if isinstance(item, bytes) else orjson.dumps(item) + b"\n"


def queue_lines(path: Path) -> list[bytes]:
    with QueueReader(str(path)) as reader:
        return reader.read(max_lines=100_000)[0]


def run(
    tmp_path: Path,
    items: list[dict[str, Any] | bytes],
    *,
    final: bool = False,
    content: bool = False,
    redactor: Redactor | None = None,
    name: str = "s-file",
) -> tuple[list[bytes], transcripts.Importer]:
    path = tmp_path / "projects" / "-home-ana-shop" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(map(encode, items)))
    os.utime(path, (0, 0))  # settled
    queue = Queue(str(tmp_path / "queue"), redactor=redactor)
    imp = transcripts.Importer(
        queue, customer=CUSTOMER, prices=TABLE, home=Home(tmp_path / "home"), content=content
    )
    imp.run([path], final=final)
    queue.close()
    return queue_lines(tmp_path / "queue"), imp


def expected(tmp_path: Path, events: list[Event], redactor: Redactor | None = None) -> list[bytes]:
    """The lines the builders' dicts make through `append_many`."""
    with Queue(str(tmp_path / "expected"), redactor=redactor) as queue:
        queue.append_many(events)
    return queue_lines(tmp_path / "expected")


SPLIT = {"cache_creation": {"ephemeral_1h_input_tokens": 600, "ephemeral_5m_input_tokens": 400}}

CASES: dict[str, tuple[list[dict[str, Any] | bytes], list[Event]]] = {
    "replays keep the largest, the first of equals, in line order": (
        [
            assistant("req_1", usage(10, 2, 1000)),
            assistant("req_1", usage(10, 150, 1000, 7, **SPLIT), [use("toolu_1", "Read")]),
            assistant("req_1", usage(10, 3, 1000)),
            user([result("toolu_1", "x" * 50)], ts="2026-11-02T10:00:01.234Z", toolUseResult={"t": 1}),
            assistant("req_2", usage(1, 1), msg="m2", ts="2026-11-02T10:00:02.000Z"),
            assistant("req_2", usage(2, 0), msg="m2b", ts="2026-11-02T10:00:03.000Z"),
        ],
        [
            tool_fact("toolu_1", "Read", latency=1234.0),
            model_fact("req_1", 10, 150, 1000, 7, w1=600),
            model_fact("req_2", 2, 0, msg="m2b", ts="2026-11-02T10:00:03.000Z"),
        ],
    ),
    "sidechains, a missing session and cwd, the request id from the message": (
        [
            assistant("req_s", usage(5, 6), isSidechain=True, agentId="agent-7"),
            assistant("req_t", usage(5, 6), isSidechain=1, agentId=""),
            assistant(..., usage(1, 1), msg="msg_only", sessionId=..., cwd=""),
            user("side prompt", isSidechain=True),
            assistant("", usage(1, 1), msg=""),
        ],
        [
            model_fact("req_s", 5, 6, agent="agent-7"),
            model_fact("req_t", 5, 6, agent="subagent"),
            model_fact("msg_only", 1, 1, msg="msg_only", session="s-file", project="-home-ana-shop"),
        ],
    ),
    "prices: a provider prefix, an unknown model, no model, odd token values": (
        [
            assistant("r1", usage(5, 6), model="us.anthropic.claude-opus-4-1-20250805-v1:0"),
            assistant("r2", usage(5, 6), model="gpt-weird"),
            assistant("r3", usage(5, 6), model=None),
            assistant("r4", usage(True, 7.0, -3, 18446744073709551615)),
            orjson.dumps(assistant("r5", usage(12345678901234567, "9", None, 0))).replace(
                b"12345678901234567",
                b"18446744073709551616",  # a float to orjson
            )
            + b"\n",
            assistant("r6", "not a dict"),
            assistant("r7", usage(1, 1), model="<synthetic>"),
            assistant("r8", usage(1, 1), isApiErrorMessage=True),
            assistant("r9", usage(1, 1), isApiErrorMessage=0, msg=12345),
            assistant("r10", usage(1, 1), msg={"a": [1, 2.50, 1e16, "é"], "b": None, "a2": -0}),
        ],
        [
            model_fact("r1", 5, 6, model="us.anthropic.claude-opus-4-1-20250805-v1:0"),
            model_fact("r2", 5, 6, model="gpt-weird", priced=False),
            model_fact("r3", 5, 6, model=None, priced=False),
            model_fact("r4", 0, 0, 0, 18446744073709551615),
            model_fact("r5", 0, 0),
            model_fact("r9", 1, 1, msg=12345),
            model_fact("r10", 1, 1, msg={"a": [1, 2.5, 1e16, "é"], "b": None, "a2": 0}),
        ],
    ),
    "prompts: repeats, text blocks, what is not a prompt": (
        [
            user('Fix the login ✓ “quoted” \\ "q"'),
            user('  Fix the login ✓ “quoted” \\ "q"\u3000\x1c'),
            user([{"type": "text", "text": "part one"}, {"type": "text", "text": "part two\x01"}, "junk"]),
            user("   "),
            user("<command-name>/clear</command-name>"),
            user("\u2003Caveat: generated"),
            user("[Request interrupted by user]"),
            user("meta", isMeta=True),
            user("meta zero", isMeta=0),
            user("meta empty", isMeta=""),
            user("meta list", isMeta=[0]),
            user("with a result field", toolUseResult=None),
            user(42),
        ],
        [
            prompt_fact('Fix the login ✓ “quoted” \\ "q"'),
            prompt_fact('  Fix the login ✓ “quoted” \\ "q"\u3000\x1c', 1),
            prompt_fact("part one\npart two\x01"),
            prompt_fact("meta zero"),
            prompt_fact("meta empty"),
        ],
    ),
    "timestamps: naive, offsets, other forms": (
        [
            user("naive", ts="2026-11-02T10:00:00.123456"),
            user("offset", ts="2026-11-02T11:00:00.5+01:00"),
            user("space and Z", ts="2026-11-02 10:00:00Z"),
            user("date only", ts="2026-11-02"),
            user("invalid date, Claude's form", ts="2026-02-30T10:00:00.000Z"),
            assistant("r1", usage(1, 1), [use("t1", "Edit")], ts="2026-11-02T10:00:00.250"),
            user([result("t1")], ts="2026-11-02T10:00:01.5"),
            assistant("r2", usage(1, 1), [use("t2", "mcp__srv__do")], ts="2026-11-02T12:00:00.1+02:00"),
            user([result("t2")], ts="2026-11-02T10:00:00.2Z"),
            assistant("r3", usage(1, 1), [use("t3", "mcp__")], ts="2026-11-02T10:00:05.000Z"),
            user([result("t3")], ts="2026-11-02T10:00:04.000Z"),
        ],
        [
            prompt_fact("naive", ts="2026-11-02T10:00:00.123Z"),
            prompt_fact("offset", ts="2026-11-02T10:00:00.500Z"),
            prompt_fact("space and Z", ts="2026-11-02T10:00:00.000Z"),
            prompt_fact("date only", ts="2026-11-02T00:00:00.000Z"),
            "now",  # type: ignore[dict-item]
            tool_fact("t1", "Edit", ts="2026-11-02T10:00:00.250Z", latency=1250.0),
            model_fact("r1", 1, 1, ts="2026-11-02T10:00:00.250Z"),
            tool_fact("t2", "mcp__srv__do", ts="2026-11-02T10:00:00.100Z", latency=100.0, server="srv"),
            model_fact("r2", 1, 1, ts="2026-11-02T10:00:00.100Z"),
            tool_fact("t3", "mcp__", ts="2026-11-02T10:00:05.000Z", latency=None),
            model_fact("r3", 1, 1, ts="2026-11-02T10:00:05.000Z"),
        ],
    ),
    "tool errors, unknown results, calls left open": (
        [
            assistant(
                "r1",
                usage(1, 1),
                [use("t1", "Bash"), use("t2", None), use(7, "X"), use("t3", "Grep"), "junk"],
            ),
            assistant("r2", usage(1, 1), [use("t1", "Bash2")]),
            user([result("t2", "boom " * 100, is_error=True), result("nope")]),
            user(
                [
                    result(
                        "t3",
                        [
                            {"type": "text", "text": "a"},
                            {"type": "image"},
                            {"type": "text", "text": 5},
                            {"type": "text", "text": None},
                            {"type": "text"},
                            {"type": "text", "text": 1.5},
                            {"type": "text", "text": [1, "é"]},
                            {"type": "text", "text": True},
                        ],
                        is_error=1,
                    ),
                ]
            ),
            assistant("r3", usage(1, 1), [use("t4", "Write")]),
            user([result("t4", [], is_error="yes")]),
        ],
        [
            model_fact("r1", 1, 1),
            tool_fact("t2", None, "error", error=("boom " * 100)[:300]),
            model_fact("r2", 1, 1),
            tool_fact("t3", "Grep", "error", error="a\n5\nNone\nNone\n1.5\n[1, 'é']\nTrue"),
            tool_fact("t4", "Write", "error", error="error"),
            model_fact("r3", 1, 1),
            tool_fact("t1", "Bash2", "no_result", latency=None),
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lines_as_the_builders_write_them(tmp_path: Path, case: str) -> None:
    items, facts_ = CASES[case]
    got, _ = run(tmp_path, items, final=True)
    now = [i for i, f in enumerate(facts_) if f == "now"]
    want = expected(tmp_path, [f for f in facts_ if f != "now"])
    for i in now:  # a line whose time is not a time: stamped now
        fact = orjson.loads(got.pop(i))
        assert dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(fact["ts"]) < dt.timedelta(minutes=5)
    assert got == want


def test_bad_lines_are_quarantined_and_a_torn_line_waits(tmp_path: Path) -> None:
    good = encode(user("hello"))
    items: list[dict[str, Any] | bytes] = [
        b"not json\n",
        b"[1, 2]\n",
        b"42\n",
        b"4.5\n",
        b"18446744073709551616\n",
        b'"s"\n',
        b"null\n",
        b"true\n",
        b"\n",
        b'{"type": "user", "x": "\xff"}\n',
        {"type": "summary"},
        {"type": "what-is-this"},
        {"type": "user", "message": "not an object"},
        good,
        orjson.dumps(user("torn"))[:30],
    ]
    got, imp = run(tmp_path, items)
    assert got == expected(tmp_path, [prompt_fact("hello")])
    data = b"".join(map(encode, items))
    starts = [sum(len(encode(x)) for x in items[:i]) for i in range(len(items))]
    assert imp._files[str(next((tmp_path / "projects").rglob("*.jsonl")))].offset == data.index(good) + len(
        good
    )
    records = [orjson.loads(x) for x in Home(tmp_path / "home").capture_quarantine.read_bytes().splitlines()]
    reasons = [r["reason"] for r in records]
    assert reasons[0].startswith("not JSON: ")
    assert reasons[1:8] == [
        f"not a JSON object but {t}" for t in ("list", "int", "float", "float", "str", "NoneType", "bool")
    ]
    assert reasons[8].startswith("not JSON: ") and reasons[9].startswith("not JSON: ")
    assert [r["offset"] for r in records] == starts[:10]
    assert records[9]["encoding"] == "utf-8-lossy" or records[9]["encoding"] == "base64"
    assert imp.stats.quarantined == 10 and imp.stats.lines == 14


def test_customer_and_keys_hash_as_python_does(tmp_path: Path) -> None:
    """The ids are made in Rust: awkward customers and keys give Python's `fact_id`."""
    keys = ['req ✓ "q" \\ \x00\x1f\x7f\u2028\U0001f600', "é" * 200, "<>&'/"]
    got, _ = run(tmp_path, [assistant(k, usage(1, 1)) for k in keys])
    ids = [orjson.loads(x)["activity_id"] for x in got]
    assert ids == [facts.fact_id(CUSTOMER, facts.CALLED_MODEL, k) for k in keys]


def test_content_capture_and_redaction(tmp_path: Path) -> None:
    """A prompt keeps its first PROMPT_CAP characters, and the queue's redactor applies."""
    redactor = Redactor("", b"k" * 32)
    text = "mail ana@example.com " + "é" * PROMPT_CAP
    got, _ = run(tmp_path, [user(text)], content=True, redactor=redactor)
    assert got == expected(tmp_path, [prompt_fact(text, content=True)], redactor=Redactor("", b"k" * 32))
    assert b"ana@example.com" not in got[0]


def test_a_pending_response_is_read_again_with_its_state(tmp_path: Path) -> None:
    """Not settled: the last response waits (its lines are read again) and its open tool
    call is kept in the state; later lines finish both."""
    path = tmp_path / "projects" / "p" / "s-file.jsonl"
    path.parent.mkdir(parents=True)
    first = [user("go"), assistant("r1", usage(1, 1), [use("t1", "Read")]), assistant("r1", usage(1, 5))]
    path.write_bytes(b"".join(map(encode, first)))
    home = Home(tmp_path / "home")
    with Queue(str(tmp_path / "queue")) as queue:
        transcripts.Importer(queue, customer=CUSTOMER, prices=TABLE, home=home).run([path])
    state = orjson.loads(home.transcript_state.read_bytes())["files"][str(path)]
    assert state["offset"] == len(encode(first[0]))
    assert state["tools"] == {
        "t1": {"tool": "Read", "ts": TS, "session": SESSION, "agent": None, "project": CWD}
    }
    with path.open("ab") as f:
        f.write(encode(user([result("t1")], ts="2026-11-02T10:00:00.007Z")))
    with Queue(str(tmp_path / "queue")) as queue:
        transcripts.Importer(queue, customer=CUSTOMER, prices=TABLE, home=home).run([path])
    want = [prompt_fact("go", project=CWD), tool_fact("t1", "Read", latency=7.0), model_fact("r1", 1, 5)]
    assert queue_lines(tmp_path / "queue") == expected(tmp_path, want)
    assert orjson.loads(home.transcript_state.read_bytes())["files"][str(path)]["tools"] == {}
