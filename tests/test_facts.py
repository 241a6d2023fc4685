"""The capture vocabulary: deterministic, per-customer ids the queue accepts."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path

import orjson
import pytest

from activitybi import Queue
from activitybi.capture import facts
from activitybi.events import ID_PATTERN, from_event

TS = dt.datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def test_fact_id_is_deterministic_per_customer_and_kind() -> None:
    a = facts.fact_id("alice", facts.CALLED_MODEL, "req_1")
    assert a == facts.fact_id("alice", facts.CALLED_MODEL, "req_1")
    assert a != facts.fact_id("bob", facts.CALLED_MODEL, "req_1")
    assert a != facts.fact_id("alice", facts.CALLED_TOOL, "req_1")
    # The key parts are not simply concatenated: ("a", "bc") differs from ("ab", "c").
    assert facts.fact_id("c", "k", "a", "bc") != facts.fact_id("c", "k", "ab", "c")
    assert re.match(ID_PATTERN, a)


def test_fact_id_hashes_the_json_array_ids_already_stored_depend_on() -> None:
    """One key part goes to the Rust core's function, several are hashed in Python: both
    must be the blake2b-128 of the array as orjson writes it, escapes and all."""
    awkward = ["req_1", 'é ✓ "q" \\ \u2028', "\x00\x08\t\n\x0b\x0c\r\x1f\x7f </>", "😀"]
    for customer in ("alice", 'ana "x"\n', ""):
        for key in awkward:
            array = orjson.dumps([customer, facts.CALLED_TOOL, key])
            expected = hashlib.blake2b(array, digest_size=16).hexdigest()
            assert facts.fact_id(customer, facts.CALLED_TOOL, key) == f"called_tool:{expected}"
        two = hashlib.blake2b(orjson.dumps([customer, "k", "a", "b"]), digest_size=16).hexdigest()
        assert facts.fact_id(customer, "k", "a", "b") == f"k:{two}"
    for bad in ((), ("",), ("a", "")):
        with pytest.raises(ValueError, match="non-empty source key"):
            facts.fact_id("alice", "k", *bad)


def test_builders_give_loadable_events(tmp_path: Path) -> None:
    model = facts.called_model(
        customer="alice",
        source="otel",
        ts=TS,
        request_id="req_1",
        session_id="s1",
        model="claude-sonnet-4-5",
        input_tokens=10,
        output_tokens=5,
        cost_usd=0.01,
    )
    tool = facts.called_tool(
        customer="alice", source="hook", ts=TS, tool_use_id="tu_1", session_id="s1", tool="Bash", outcome="ok"
    )
    prompt = facts.asked_question(
        customer="alice", source="transcript", ts=TS, prompt_id="p1", session_id="s1", prompt_length=12
    )
    row = from_event(model)
    assert row.ts == dt.datetime(2026, 11, 1, 12, 0, 0, 123000)
    assert row._source == "otel" and row.feature_json is not None
    assert row.feature_json["source"] == "otel" and row.feature_json["request_id"] == "req_1"
    assert "agent" not in row.feature_json
    assert from_event(tool).feature_json == {
        "tool": "Bash",
        "outcome": "ok",
        "tool_use_id": "tu_1",
        "source": "hook",
        "session_id": "s1",
    }
    with Queue(str(tmp_path / "q")) as q:
        assert q.append_many([model, tool, prompt]) == [
            model["activity_id"],
            tool["activity_id"],
            prompt["activity_id"],
        ]
