"""Faults against real processes, with short durations: nothing acknowledged is lost,
nothing is stored twice, and every fault ends in a recovery or a clear error.

The same faults, longer, print their figures in `benches/chaos.py`; the machinery is in
`tests/chaos_harness.py`. The disk faults mount a small tmpfs (or a loop-mounted ext4
image) and so need root with mount permission: without it they fail, saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import chaos_harness as ch
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(180)]


def check(outcome: ch.Outcome) -> ch.Outcome:
    report = "\n".join(
        [outcome.summary(), *(f"  - {n}" for n in outcome.notes), *(f"  ! {p}" for p in outcome.problems)]
    )
    print(report)
    assert outcome.ok, report
    assert outcome.acknowledged > 0 or outcome.fault.startswith("queue opened"), report
    assert outcome.found + outcome.quarantined + outcome.altered == outcome.acknowledged, report
    return outcome


def test_sigkill_http_server_during_load(tmp_path: Path) -> None:
    out = check(ch.fault_server_kill(tmp_path, transport="http", seconds=4, kills=2, clients=3))
    assert out.errors > 0  # the kills were felt: connections were lost and made again


def test_sigkill_stdio_server_during_load(tmp_path: Path) -> None:
    check(ch.fault_server_kill(tmp_path, transport="stdio", seconds=5, kills=1, clients=2))


def test_sigkill_uploader_mid_batch(tmp_path: Path) -> None:
    check(ch.fault_uploader_kill(tmp_path, kills=2, clients=2, burst=5000))


def test_redis_killed_and_restarted(tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    check(ch.fault_redis(tmp_path, redis_server, before=1.0, outage=1.5, after=3.0, clients=2))


def test_warehouse_unavailable_then_back(tmp_path: Path) -> None:
    check(ch.fault_warehouse_down(tmp_path, outage=3.0, clients=2))


def test_standalone_uploader_waits_for_busy_warehouse(tmp_path: Path) -> None:
    check(ch.fault_warehouse_down_standalone(tmp_path, outage=3.0, events=2000))


def test_disk_full_under_queue(tmp_path: Path) -> None:
    out = check(ch.fault_disk_full(tmp_path))
    assert out.errors >= 21


def test_queue_opened_on_full_disk_fails_clearly(tmp_path: Path) -> None:
    check(ch.fault_full_disk_at_start(tmp_path))


@pytest.mark.parametrize("mode", ["structural", "random"])
def test_flipped_bytes_in_sealed_segment(tmp_path: Path, mode: str) -> None:
    out = check(ch.fault_flipped_bytes(tmp_path, events=300, flips=12, mode=mode))
    if mode == "structural":
        assert out.quarantined == 12 and out.altered == 0
