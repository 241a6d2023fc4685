"""The OTLP receiver's pieces, in process: cumulative series, body limits (event names:
`rust/otlp.rs`'s tests)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from activitybi.capture.otlp import SERIES_TTL_NS, OtlpError, SeriesState, body_bytes


def test_cumulative_series_become_increases(tmp_path: Path) -> None:
    """Resets, re-sent and late points, and the file surviving a restart."""
    path = tmp_path / "series.json"
    s = SeriesState(path)
    assert s.delta("k", 1, 10, 5.0) == 5.0  # a new series counts from zero
    assert s.delta("k", 1, 20, 7.5) == 2.5
    assert s.delta("k", 1, 20, 7.5) is None  # re-sent
    assert s.delta("k", 1, 15, 6.0) is None  # late
    assert s.delta("k", 1, 30, 1.0) == 1.0  # smaller: the counter was reset
    assert s.delta("k", 2, 5, 3.0) == 3.0  # a new start time: a new series
    s.save(now_ns=5)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = SeriesState(path)
    assert again.delta("k", 2, 6, 4.0) == 1.0
    again.save(now_ns=6 + SERIES_TTL_NS + 1)  # silent for longer than the TTL: forgotten
    assert SeriesState(path).series == {}


def test_body_limits_hold_before_and_after_gzip() -> None:
    assert body_bytes(gzip.compress(b"x" * 100), "gzip", 100) == b"x" * 100
    for body, encoding, status in (
        (b"x" * 101, "", 413),
        (gzip.compress(b"x" * 101), "gzip", 413),
        (gzip.compress(b"x" * 50)[:-4], "gzip", 400),
        (b"x", "deflate", 415),
    ):
        with pytest.raises(OtlpError) as e:
            body_bytes(body, encoding, 100)
        assert e.value.status == status
