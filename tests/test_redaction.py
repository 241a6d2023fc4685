"""Redaction before enqueue: a corpus of fake secrets and personal data, one value of each
kind the detectors claim, written through every entry point (log_event and log_events of
a real stdio server, the Claude Code hook with content capture on, Queue.append of dicts
and of bytes), then uploaded: no file under the home and no metrics page holds any of
them afterwards, read as raw bytes; hashed e-mail addresses join across events. Then the
properties of the redactor (hypothesis) and the policy file's checks.

Every value is fake and well-formed (test card numbers, AWS's documented example key, made-up
tokens of the documented shapes); the token prefixes are split in the source so that no
secret scanner mistakes this file for a leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import duckdb
import httpx2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from activitybi import Queue, config, privacy, secret
from activitybi._core import REDACTION_KINDS, Redactor
from tests.mcp_clients import EXE, free_port, server_env, text

CUSTOMER = "ana@example.com"
EMAIL = "Zoe.Hidden-Person@example.org"

CORPUS: dict[str, str] = {
    "aws_key": "AKIA" + "IOSFODNN7EXAMPLE",
    "anthropic_key": "sk-" + "ant-api03-" + "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lz" * 3 + "AA",
    "openai_key": "sk-" + "proj-" + "Tq3Vn8Lm2Rx7Bc4Yw9Ks6Hd1Fg5Jp0Za",
    "github_token": "gh" + "p_" + "R4nd0mT0k3nF0rT3st1ngOnlyAbCdEfGh123",
    "gitlab_token": "gl" + "pat-" + "Fake7Token9ForTests4U",
    "slack_token": "xo" + "xb-" + "1029384756-5647382910-QwErTyUiOpAsDf",
    "google_api_key": "AI" + "za" + "SyFakeKey0123456789abcdefghijklmnopq",
    "stripe_key": "sk" + "_live_" + "51FakeStripeKey0987654321",
    "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvFakeKeyBodyLineOneQwErTy\n"
    "MIIEvFakeKeyBodyLineTwoAsDfGh\n-----END PRIVATE KEY-----",
    "jwt": "ey" + "JhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ6b2UtdGVzdC1zdWJqZWN0In0.QmFrZVNpZ25hdHVyZUZvclRlc3Rz",
    "password": "postgres://shop:Hunter2Fake!Pass@db.internal:5432/shop",
    "card": "4111 1111 1111 1111",
    "email": EMAIL,
    "ipv4": "203.0.113.77",
    "ipv6": "2001:db8:85a3::8a2e:370:7334",
}
"""One value of each kind (`rule` is the policy's own)."""

NEEDLES: dict[str, bytes] = {
    kind: (
        b"MIIEvFakeKeyBody"
        if kind == "private_key"
        else b"Hunter2Fake"
        if kind == "password"
        else b"4111111111111111"
        if kind == "card"
        else value.encode()
    )
    for kind, value in CORPUS.items()
}
"""What must never be found, as raw bytes (the card also with its spaces, below)."""


def prompt() -> str:
    return "help me with this: " + " ; ".join(CORPUS.values())


def all_needles() -> list[bytes]:
    return [
        *NEEDLES.values(),
        b"4111 1111 1111 1111",
        EMAIL.lower().encode(),
        b"MIIEvFakeKeyBodyLineTwo",
        CORPUS["anthropic_key"][:30].encode(),
    ]


def files_containing(home: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(home)}: {n!r}" for n in needles if n in data]
    return found


def test_corpus_covers_every_kind() -> None:
    assert set(CORPUS) | {"rule"} == set(REDACTION_KINDS)
    red = Redactor("", bytes(range(32)))
    for kind, value in CORPUS.items():
        out = json.loads(red.redact(json.dumps({"activity": "x", "feature_json": {"v": f"a {value} b"}})))
        assert NEEDLES[kind].decode() not in out["feature_json"]["v"], kind
        assert red.counts()[kind] >= 1, kind


# --- every entry point, then upload: nothing is left anywhere --------------------------------


async def through_the_server(home: Path, metrics_port: int) -> tuple[str, str]:
    params = StdioServerParameters(
        command=EXE,
        args=["serve", "--metrics-port", str(metrics_port)],
        env=server_env(home, ACTIVITYBI_CUSTOMER=CUSTOMER),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        one = await s.call_tool(
            "log_event",
            {
                "activity": "asked_question",
                "feature_json": {"prompt": prompt(), "contact": EMAIL, "nested": [{"k": CORPUS["aws_key"]}]},
                "anonymous_customer_id": CORPUS["ipv4"],
            },
        )
        assert not one.is_error, text(one)
        many = await s.call_tool(
            "log_events",
            {
                "events": [
                    {"activity": "pasted_secret", "feature_json": {k: v for k, v in CORPUS.items()}},
                    {"activity": "mentioned_person", "feature_json": {"who": EMAIL.upper()}},
                ]
            },
        )
        assert not many.is_error, text(many)
        page = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        await s.call_tool("get_context", {})
        return page, text(one)


HOOK_PAYLOAD = {
    "session_id": "3f1c2a4e-redaction-test",
    "transcript_path": "/nowhere/x.jsonl",
    "cwd": "/home/ana/shop",
    "hook_event_name": "UserPromptSubmit",
    "prompt": prompt(),
}


def hook(home: Path, stdin: bytes = orjson.dumps(HOOK_PAYLOAD)) -> None:
    out = subprocess.run(
        [EXE, "hook"],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={
            **os.environ,
            "ACTIVITYBI_HOME": str(home),
            "ACTIVITYBI_CUSTOMER": CUSTOMER,
            "ACTIVITYBI_CAPTURE_CONTENT": "1",
        },
    )
    assert (out.returncode, out.stdout) == (0, b""), out.stderr


def warehouse_rows(home: Path) -> list[tuple[str, Any]]:
    con = duckdb.connect(str(config.Home(home).warehouse), read_only=True)
    try:
        rows = con.execute("select activity, feature_json from claude_stream order by activity").fetchall()
    finally:
        con.close()
    return [(a, orjson.loads(f) if isinstance(f, str) else f) for a, f in rows]


@pytest.mark.slow
def test_no_value_of_the_corpus_survives_any_entry_point(_home: Path) -> None:
    port = free_port()
    page, _ = anyio.run(through_the_server, _home, port)
    hook(_home)
    hook(_home, b"not JSON at all: " + prompt().encode())  # quarantined, redacted
    hook(_home, b"\xff\xfe binary " + prompt().encode())  # not UTF-8 either
    quarantined = config.Home(_home).capture_quarantine.read_bytes()
    assert quarantined.count(b"\n") == 2 and b"[REDACTED:aws_key]" in quarantined
    marker = "kept-marker-7c1e5d"  # a control: the same searches do find what is kept
    with privacy.open_queue(config.Home(_home).queue) as q:
        q.append(
            {"activity": "pasted_secret", "customer": CUSTOMER, "feature_json": {"p": prompt(), "m": marker}}
        )
        escaped = (
            json.dumps(  # JSON escapes must not hide anything from the detectors
                {
                    "activity": "pasted_secret",
                    "customer": CUSTOMER,
                    "feature_json": {"p": prompt(), "e": EMAIL},
                },
                ensure_ascii=True,
            )
            .replace("@", "\\u0040")
            .replace("/", "\\/")
        )
        q.append(escaped.encode())
        q.append_many([{"activity": "contacted_person", "customer": CUSTOMER, "feature_json": {"to": EMAIL}}])
        counts = q.stats()["redactions"]
    assert counts["email"] >= 3 and counts["aws_key"] >= 2 and counts["card"] >= 2, counts
    up = subprocess.run(
        [EXE, "upload", "--once", "--quiet"],
        capture_output=True,
        timeout=120,
        env=server_env(_home),
    )
    assert up.returncode == 0, up.stderr

    rows = warehouse_rows(_home)
    acts = [a for a, _ in rows]
    assert acts.count("pasted_secret") == 3 and "asked_question" in acts and "contacted_person" in acts
    assert files_containing(_home, [marker.encode(), CUSTOMER.encode()]), "the control is found"
    assert files_containing(_home, all_needles()) == []
    for needle in all_needles():
        assert needle.decode() not in page
    assert 'activitybi_redactions_total{kind="aws_key"}' in page
    assert 'activitybi_redactions_total{kind="email"} 0.0' not in page

    # Hashed e-mail addresses join: one token, whatever the entry point and the case.
    token = privacy.build("", "default", secret.key(_home)).token(EMAIL.lower())
    assert token == secret.keyed_hash(EMAIL.lower(), _home)[: len(token)]
    blob = orjson.dumps([f for _, f in rows]).decode()
    assert blob.count(token) >= 6, blob
    by_act = {a: f for a, f in rows}
    assert by_act["contacted_person"]["to"] == token
    assert by_act["mentioned_person"]["who"] == token
    assert [f["contact"] for a, f in rows if a == "asked_question" and "contact" in f] == [token]
    hooked = [f for a, f in rows if a == "asked_question" and "contact" not in f]
    assert len(hooked) == 1 and token in orjson.dumps(hooked).decode()  # the captured prompt


def test_customer_is_kept_and_counts_add_up(tmp_path: Path) -> None:
    red = privacy.redactor()
    with Queue(str(tmp_path / "q"), redactor=red) as q:
        assert q.redactor is red
        q.append({"activity": "x", "customer": EMAIL, "feature_json": {"to": EMAIL, "n": 1}})
        q.append({"activity": "x", "customer": EMAIL, "feature_json": {"n": 2}})
        s = q.stats()
    assert s["redactions"]["email"] == 1 and sum(s["redactions"].values()) == 1
    data = b"".join(p.read_bytes() for p in (tmp_path / "q").glob("*.ndjson*"))
    assert data.count(EMAIL.encode()) == 2  # the customer, twice; feature_json.to hashed
    with Queue(str(tmp_path / "plain")) as plain:
        assert plain.redactor is None and set(plain.stats()["redactions"]) == set(REDACTION_KINDS)


# --- the policy file --------------------------------------------------------------------------


def cli(*args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "activitybi", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[default]\nemail = "hash"\nphone = "mask"\n', ["line 3", "phone"]),
        ('[default]\nsecret = "scramble"\n', ["line 2", "scramble", "keep"]),
        ('[[rule]]\npath = "customer"\naction = "hash"\n', ["line 2", "customer"]),
        ('[[rule]]\npath = "feature_json.x"\naction = "drop"\ncolour = "red"\n', ["colour"]),
        ('[[rule]]\naction = "drop"\n', ["path"]),
        ("version = 2\n", ["line 1", "version"]),
        ("[default\n", ["line 1"]),
    ],
)
def test_policy_check_names_the_line_and_the_key(tmp_path: Path, body: str, expected: list[str]) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(body)
    out = cli("policy", "check", str(path))
    err = out.stderr.decode()
    assert out.returncode != 0 and str(path) in err, err
    for word in expected:
        assert word in err, (word, err)


def test_policy_file_rules_and_policy_test(tmp_path: Path, _home: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'version = 1\n[default]\nip = "keep"\njwt = "drop"\n\n'
        '[[rule]]\nactivity = "asked_*"\npath = "feature_json.prompt"\naction = "drop"\n\n'
        '[[rule]]\npath = "feature_json.debug"\naction = "keep"\n\n'
        '[[rule]]\npath = "feature_json.user.*"\naction = "hash"\n'
    )
    assert cli("policy", "check", str(path)).returncode == 0
    event = {
        "activity": "asked_question",
        "customer": CUSTOMER,
        "feature_json": {
            "prompt": "secret stuff",
            "ip": CORPUS["ipv4"],
            "tok": CORPUS["jwt"],
            "debug": {"k": CORPUS["aws_key"]},
            "user": {"name": "Zoe", "age": 41},
        },
    }
    out = cli("policy", "test", "--policy", str(path), stdin=orjson.dumps(event))
    assert out.returncode == 0, out.stderr
    got = orjson.loads(out.stdout)
    fj = got["feature_json"]
    assert "prompt" not in fj and "tok" not in fj
    assert fj["ip"] == CORPUS["ipv4"] and fj["debug"] == {"k": CORPUS["aws_key"]}
    assert fj["user"]["name"].startswith("hmac:") and fj["user"]["age"].startswith("hmac:")
    assert got["customer"] == CUSTOMER
    assert b"rule 3" in out.stderr and b"jwt 1" in out.stderr
    # ACTIVITYBI_POLICY is what every queue of the process uses; a missing one is an error.
    q = tmp_path / "q"
    code = (
        "from activitybi import privacy; q = privacy.open_queue(__import__('sys').argv[1]); "
        "q.append({'activity': 'asked_question', 'customer': 'c', 'feature_json': {'prompt': 'x'}}); "
        "print(q.stats()['redactions']['rule'])"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(q)],
        capture_output=True,
        text=True,
        env={**os.environ, "ACTIVITYBI_POLICY": str(path)},
        check=True,
    )
    assert run.stdout.strip() == "1"
    with pytest.raises(privacy.PolicyError, match="does not exist"):
        privacy.read_policy(tmp_path / "nope.toml")


def test_home_policy_toml_is_used_when_present(_home: Path) -> None:
    _home.mkdir(parents=True, exist_ok=True)
    config.Home(_home).policy.write_text('[default]\nemail = "mask"\n')
    red = privacy.redactor()
    out = orjson.loads(red.redact(orjson.dumps({"activity": "x", "feature_json": {"e": EMAIL}}).decode()))
    assert out["feature_json"]["e"] == "[REDACTED:email]"


# --- properties -------------------------------------------------------------------------------

KEY = bytes(range(32))
RED = Redactor("", KEY)
KEEPING = Redactor('[[rule]]\npath = "feature_json.kept"\naction = "keep"\n', KEY)

pieces = st.sampled_from([*CORPUS.values(), EMAIL.lower(), "x", " ", "@", "::", "1.2.3", "é✓", '"\\'])
texts = st.one_of(st.text(max_size=40), st.lists(pieces, max_size=5).map(" ".join))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), pieces), inner, max_size=4),
    ),
    max_leaves=20,
)


def event_of(features: Any, kept: Any) -> dict[str, Any]:
    return {"activity": "asked_question", "customer": EMAIL, "feature_json": {"v": features, "kept": kept}}


def non_strings(v: Any) -> list[Any]:
    if isinstance(v, dict):
        return [x for k in v for x in non_strings(v[k])]
    if isinstance(v, list):
        return [x for item in v for x in non_strings(item)]
    return [] if isinstance(v, str) else [v]


@settings(max_examples=300, deadline=None)
@given(values, values)
def test_redaction_is_valid_json_keeps_what_is_kept_and_is_deterministic(features: Any, kept: Any) -> None:
    raw = json.dumps(event_of(features, kept))
    out = KEEPING.redact(raw)
    got = json.loads(out)  # always valid JSON
    assert KEEPING.redact(raw) == out  # same input, same output
    assert got["customer"] == EMAIL and got["activity"] == "asked_question"
    assert got["feature_json"]["kept"] == json.loads(json.dumps(kept))  # a keep rule keeps it all
    if "v" in got["feature_json"]:  # dropped only by a detector's drop (none in this policy)
        assert non_strings(got["feature_json"]["v"]) == non_strings(json.loads(json.dumps(features)))
    for needle in NEEDLES.values():
        assert needle.decode() not in json.dumps(got["feature_json"]["v"], ensure_ascii=False)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_text_without_anything_to_find_is_left_alone_and_queue_paths_agree(s: str) -> None:
    raw = json.dumps({"activity": "x", "feature_json": {"s": s}})
    out = json.loads(RED.redact(raw))
    if out != json.loads(raw):  # when it changes, it is because a detector found something
        assert "[REDACTED:" in out["feature_json"]["s"] or "hmac:" in out["feature_json"]["s"]


def test_dict_and_bytes_appends_write_the_same_redaction(tmp_path: Path) -> None:
    red = Redactor("", KEY)
    event = {
        "activity": "x",
        "activity_id": "fixed-id",
        "ts": "2026-01-01T00:00:00.000Z",
        "customer": CUSTOMER,
        "feature_json": {"p": prompt()},
    }
    with Queue(str(tmp_path / "a"), redactor=red) as a, Queue(str(tmp_path / "b"), redactor=red) as b:
        a.append(event)
        b.append(orjson.dumps(event))
    lines = []
    for d in ("a", "b"):
        [seg] = list((tmp_path / d).glob("*.ndjson*"))
        line = orjson.loads(seg.read_bytes().splitlines()[0])
        line.pop("_crc32c", None)
        lines.append(line)
    assert lines[0] == lines[1] == orjson.loads(red.redact(orjson.dumps(event).decode()))
