"""Dashboards and alerts as code (ops/): the rules pass promtool, their unit tests fire and
stay quiet where they should, and a real Prometheus scraping a real server and owner finds
every metric the dashboard and the rules name."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml

from tests.mcp_clients import EXE, HttpServer, free_port, http_session, server_env

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "ops" / "prometheus" / "tests.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "activitybi.json"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
METRIC = re.compile(r"\bactivitybi_[a-z0-9_]+\b")


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is missing: install Debian's prometheus package (scripts/test.sh does)")
    return found


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _exprs(node: Any) -> Iterator[str]:
    """Every PromQL expression in the dashboard: targets, annotations, template queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def referenced_metrics() -> set[str]:
    names = {m for rule in _rules() for m in METRIC.findall(rule["expr"])}
    names |= {m for e in _exprs(json.loads(DASHBOARD.read_text())) for m in METRIC.findall(e)}
    return names


def test_promtool_checks_the_rules() -> None:
    out = subprocess.run([_tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    out = subprocess.run(
        [_tool("promtool"), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_tested_firing_and_quiet_and_has_a_runbook() -> None:
    """Each alert has a unit test where it fires and series (or a time) where it must not."""
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    runbooks = RUNBOOKS.read_text()
    for rule in _rules():
        name = rule["alert"]
        fired, quiet = False, False
        for test in tests:
            for case in test.get("alert_rule_test", []):
                if case["alertname"] != name:
                    continue
                expected = case.get("exp_alerts") or []
                fired |= bool(expected)
                quiet |= not expected or len(test["input_series"]) > len(expected)
        assert fired and quiet, f"{name}: needs a test where it fires and one where it does not"
        assert f"## {name}" in runbooks, f"{name} has no section in docs/runbooks.md"
        assert rule["annotations"]["runbook"] == f"docs/runbooks.md#{name.lower()}"


def test_the_dashboard_is_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "activitybi"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert proc.poll() is None, f"{what} exited with {proc.returncode}"
            time.sleep(0.1)
    raise AssertionError(f"{what} did not listen on {port}")


@pytest.mark.slow
def test_prometheus_scrapes_every_metric_the_dashboard_and_rules_name(_home: Path, tmp_path: Path) -> None:
    prometheus = _tool("prometheus")
    needed = referenced_metrics()
    assert len(needed) >= 10, needed
    procs: list[subprocess.Popen[bytes]] = []
    server: HttpServer | None = None
    try:
        # The owner first, with its metrics port: the server's supervisor then finds the
        # queue owned and starts none of its own.
        owner_port = free_port()
        _home.mkdir(parents=True, exist_ok=True)
        owner = subprocess.Popen(
            [EXE, "upload", "--follow", "--quiet", "--metrics-port", str(owner_port)],
            env=server_env(_home),
            stderr=subprocess.DEVNULL,
        )
        procs.append(owner)
        _wait_port(owner_port, owner, "the owner")
        dead_redis = free_port()  # nothing listens: the breaker opens and says so
        server = HttpServer(
            _home,
            {"tok": "ops@x.io"},
            env={"ACTIVITYBI_OPERATOR_TOKEN": "op", "REDIS_URL": f"redis://127.0.0.1:{dead_redis}"},
        )

        async def calls() -> None:
            async with http_session(server.url, "tok") as s:
                await s.call_tool("log_event", {"activity": "asked_question"})
                await s.call_tool("log_event", {"activity": "Not A Name"})  # an error
                await s.call_tool("get_context", {})

        anyio.run(calls)

        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {
                            "job_name": "activitybi-server",
                            "metrics_path": "/metrics",
                            "bearer_token": "op",
                            "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}],
                        },
                        {
                            "job_name": "activitybi-owner",
                            "static_configs": [{"targets": [f"127.0.0.1:{owner_port}"]}],
                        },
                    ],
                }
            )
        )
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(prom)
        _wait_port(prom_port, prom, "prometheus")
        api = f"http://127.0.0.1:{prom_port}/api/v1"

        deadline = time.monotonic() + 60
        while True:
            targets = httpx2.get(f"{api}/targets").json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
            names = set(httpx2.get(f"{api}/label/__name__/values").json()["data"])
            both_up = health == {"activitybi-server": ("up", ""), "activitybi-owner": ("up", "")}
            if both_up and not needed - names:
                break
            assert time.monotonic() < deadline, f"missing {sorted(needed - names)}; targets {health}"
            time.sleep(0.5)
        for name in sorted(needed):  # each is a live series of one of the two jobs
            result = httpx2.get(f"{api}/query", params={"query": name}).json()["data"]["result"]
            assert result, name
            assert {r["metric"]["job"] for r in result} <= {"activitybi-server", "activitybi-owner"}
        breaker = httpx2.get(f"{api}/query", params={"query": "activitybi_redis_breaker_open"}).json()
        assert breaker["data"]["result"][0]["value"][1] == "1"
        groups = httpx2.get(f"{api}/rules").json()["data"]["groups"]
        loaded = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        assert set(loaded) == {r["alert"] for r in _rules()}
        assert set(loaded.values()) <= {"ok", "unknown"}, loaded  # unknown: not evaluated yet
    finally:
        if server is not None:
            server.stop()
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=15)
