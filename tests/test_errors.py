"""Error tracking against a local Sentry endpoint: an unhandled error in the server, the
owner and the CLI each arrives as an envelope, with the release, and with no customer
event content (nor the token) anywhere in its bytes."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import orjson
import pytest

from activitybi import __version__
from activitybi.reporting.errors import REMOVED, scrub
from tests.redis_server import free_port

SECRET = "SECRET-PROMPT-7f3a"
BOOM = f"""
def boom(*args, **kwargs):
    event = {{"activity": "asked_question", "feature_json": {{"prompt": "{SECRET}"}}}}
    import logging
    logging.getLogger("activitybi.test").warning("about to load %s", event)
    raise ValueError(f"cannot load {{event}}")
"""


class Sentry:
    """A tiny HTTP server that takes envelopes at /api/<project>/envelope/."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        received = self.envelopes

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"] or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/api/42/envelope/":
                    received.append(body)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://public@127.0.0.1:{self.http.server_address[1]}/42"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, object]]:
        out = []
        for envelope in self.envelopes:
            lines = envelope.split(b"\n")
            for header, item in zip(lines[1::2], lines[2::2], strict=False):
                if orjson.loads(header).get("type") == "event":
                    out.append(orjson.loads(item))
        return out

    def wait(self, timeout: float = 30) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while not self.events():
            assert time.monotonic() < deadline, "no event arrived"
            time.sleep(0.1)
        return self.events()


@pytest.fixture
def sentry() -> Iterator[Sentry]:
    s = Sentry()
    yield s
    s.http.shutdown()


def _env(sentry: Sentry, home: Path) -> dict[str, str]:
    return {**os.environ, "SENTRY_DSN": sentry.dsn, "ACTIVITYBI_HOME": str(home)}


def _private(sentry: Sentry) -> None:
    raw = b"".join(sentry.envelopes)
    assert SECRET.encode() not in raw and b"tok-alice" not in raw and b"alice@a.io" not in raw


def _check(sentry: Sentry, process: str) -> None:
    events = sentry.wait()
    event = events[0]
    assert event["release"] == f"activitybi@{__version__}"
    assert event["tags"] == {"process": process}  # type: ignore[comparison-overlap]
    (exc,) = event["exception"]["values"]  # type: ignore[index]
    assert exc["type"] == "ValueError" and exc["value"] == REMOVED
    assert all("vars" not in f for f in exc["stacktrace"]["frames"])
    _private(sentry)


def test_an_error_in_the_cli_is_reported_without_event_content(sentry: Sentry, _home: Path) -> None:
    code = BOOM + (
        "import activitybi.reporting.figures as f; f.local_report = boom\n"
        "from activitybi.cli import main; main(['report', '--customer', 'alice@a.io'])"
    )
    done = subprocess.run([sys.executable, "-c", code], env=_env(sentry, _home), capture_output=True)
    assert done.returncode != 0 and b"ValueError" in done.stderr
    _check(sentry, "cli")


def test_an_error_in_the_owner_is_reported_without_event_content(sentry: Sentry, _home: Path) -> None:
    code = BOOM + (
        "import activitybi.owner.uploader as u; u.open_uploader = boom\n"
        "from activitybi.cli import main; main(['upload', '--once', '--quiet'])"
    )
    done = subprocess.run([sys.executable, "-c", code], env=_env(sentry, _home), capture_output=True)
    assert done.returncode != 0
    _check(sentry, "owner")


def test_an_error_in_the_server_is_reported_without_the_request(
    sentry: Sentry, _home: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok-alice": "alice@a.io"}))
    port = free_port()
    code = BOOM + (
        "import activitybi.reporting.live as live; live.local_report = boom\n"
        "from activitybi.cli import main\n"
        f"main(['serve', '--http', '--port', '{port}', '--tokens', '{tokens}'])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(sentry, _home), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx2.get(
                    f"http://127.0.0.1:{port}/report.json",
                    params={"customer": SECRET, "token": "tok-alice"},
                    headers={"authorization": "Bearer tok-alice", "x-note": SECRET},
                    timeout=5,
                )
                break
            except httpx2.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 500
        _check(sentry, "server")
        assert sentry.events()[0]["request"] == {
            "method": "GET",
            "url": f"http://127.0.0.1:{port}/report.json",
        }
    finally:
        proc.terminate()
        proc.wait(30)


def test_scrub_keeps_an_allowlist() -> None:
    event = {
        "level": "error",
        "extra": {"event": SECRET},
        "user": {"id": SECRET},
        "logentry": {"message": "loading %s", "params": [SECRET], "formatted": SECRET},
        "breadcrumbs": {"values": [{"category": "log", "message": SECRET, "data": {"x": SECRET}}]},
        "request": {"url": "http://h/p?token=t", "data": SECRET, "headers": {"x": SECRET}},
        "threads": {"values": [{"stacktrace": {"frames": [{"vars": {"e": SECRET}}]}}]},
    }
    assert SECRET not in orjson.dumps(scrub(event)).decode()
    assert scrub(event)["logentry"] == {"message": "loading %s"}


def test_without_the_extra_one_line_says_what_to_install(_home: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sentry_sdk.py").write_text("raise ImportError('no', name='sentry_sdk')\n")
    env = {
        **os.environ,
        "SENTRY_DSN": "http://public@127.0.0.1:9/42",
        "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "activitybi", "status"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: error tracking (SENTRY_DSN) needs the sentry extra: pip install 'activitybi[sentry]' "
        "(missing module sentry_sdk)"
    ]
