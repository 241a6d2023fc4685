"""The live page of `activitybi serve --http` in headless Chromium: signed in by a token
exchanged for a cookie, no console errors, the figures of `activitybi report --json`,
updated in place as events are loaded, and one customer's cookie never shows another's."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from activitybi import Queue
from activitybi.reporting.live import COOKIE, CSP
from tests.redis_server import free_port
from tests.test_report import Chromium

TOKENS = {"tok-alice": "alice@a.io", "tok-bob": "bob<i>@b.io"}
OPERATOR = "tok-operator"
SERVE = [sys.executable, "-m", "activitybi", "serve", "--http"]
VOLATILE = ("generated_at", "health", "note", "source", "main")


def _events(home: Path, customer: str, n: int, activity: str) -> None:
    """Appends `n` events and seals their segment, so the server's owner loads them."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with Queue(str(home / "queue")) as q:
        for i in range(n):
            ts = (now - dt.timedelta(seconds=n - i)).isoformat(timespec="milliseconds") + "Z"
            q.append({"activity": activity, "customer": customer, "ts": ts, "_session_id": f"s-{customer}"})


class Server:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        tokens = home.parent / "tokens.json"
        tokens.write_bytes(orjson.dumps(TOKENS))
        self.proc = subprocess.Popen(
            [*SERVE, "--port", str(self.port), "--tokens", str(tokens)],
            env=env,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx2.get(self.base + "/", timeout=1)
                return
            except httpx2.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"the server did not start: {err}") from None
                time.sleep(0.2)

    def report(self, token: str, customer: str | None = None) -> dict[str, Any]:
        params = {"customer": customer} if customer else {}
        r = httpx2.get(
            self.base + "/report.json", params=params, headers={"authorization": f"Bearer {token}"}
        )
        r.raise_for_status()
        return orjson.loads(r.content)  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def env(_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ACTIVITYBI_HOME": str(_home),
        "ACTIVITYBI_OPERATOR_TOKEN": OPERATOR,
        "ACTIVITYBI_LIVE_REFRESH": "0.5",
    }


@pytest.fixture
def server(_home: Path, env: dict[str, str]) -> Iterator[Server]:
    _home.mkdir(parents=True, exist_ok=True)
    _events(_home, "alice@a.io", 5, "asked_question")
    _events(_home, "bob<i>@b.io", 7, "opened_secret_<b>bob</b>_file")
    s = Server(_home, env)
    try:
        _until(lambda: s.report("tok-alice").get("totals", {}).get("events") == 5)
        _until(lambda: s.report("tok-bob").get("totals", {}).get("events") == 7)
        yield s
    finally:
        s.stop()


def _until(ok: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def _same_origin_problems(problems: list[str], base: str) -> list[str]:
    """Chromium.load counts every request but the first as a problem: the redirect to the
    page and the page's polling of its own origin are expected."""
    return [p for p in problems if not p.startswith(f"request: {base}/")]


def _cli_report(env: dict[str, str], customer: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "activitybi", "report", "--json", "--customer", customer],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    return orjson.loads(done.stdout)  # type: ignore[no-any-return]


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in VOLATILE}


@pytest.mark.chromium
@pytest.mark.slow
def test_live_page_signs_in_shows_the_report_and_updates(
    server: Server, _home: Path, env: dict[str, str], tmp_path: Path
) -> None:
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        session, problems = browser.load(f"{server.base}/?token=tok-alice")
        assert _same_origin_problems(problems, server.base) == []
        # the token is gone from the address bar, and the cookie is not readable by script
        assert browser.evaluate(session, "location.href") == server.base + "/"
        assert browser.evaluate(session, "document.cookie") == ""
        assert browser.evaluate(session, "document.querySelector('script').src") == ""

        fetched = browser.call(
            "Runtime.evaluate",
            {
                "expression": "fetch('/report.json?customer=bob%3Ci%3E%40b.io').then(r => r.text())",
                "awaitPromise": True,
                "returnByValue": True,
            },
            session=session,
        )["result"]["value"]
        mine = orjson.loads(fetched)
        assert mine["customer"] == "alice@a.io"  # asking for bob's rows gives alice's own
        assert "bob" not in fetched
        cli = _cli_report(env, "alice@a.io")
        assert _figures(mine) == _figures(cli)

        text = browser.evaluate(session, "document.body.innerText")
        assert "bob" not in text
        kpi = "document.querySelector('.kpi b').textContent"
        assert browser.evaluate(session, kpi) == f"{cli['totals']['events']:,}"

        _events(_home, "alice@a.io", 4, "asked_question")  # loaded by the server's owner
        _until(lambda: browser.evaluate(session, kpi) == "9", timeout=60)
        assert _figures(_cli_report(env, "alice@a.io"))["totals"]["events"] == 9
        assert "reconnecting" not in browser.evaluate(session, "document.getElementById('live').textContent")
        assert (
            _same_origin_problems(
                [
                    f"{e['method']}: {e['params']}"
                    for e in browser.events
                    if e["method"] in ("Runtime.exceptionThrown", "Log.entryAdded")
                ],
                server.base,
            )
            == []
        )
    finally:
        browser.close()


@pytest.mark.chromium
@pytest.mark.slow
def test_the_operator_sees_every_customer_escaped(server: Server, tmp_path: Path) -> None:
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        session, problems = browser.load(f"{server.base}/?token={OPERATOR}")
        assert _same_origin_problems(problems, server.base) == []
        links = browser.evaluate(session, "[...document.querySelectorAll('main a')].map(a => a.textContent)")
        assert links == ["bob<i>@b.io"]  # alice is shown; bob is one click away, as text
        assert browser.evaluate(session, "document.querySelectorAll('main i').length") == 0
        session, problems = browser.load(f"{server.base}/?customer=bob%3Ci%3E%40b.io")
        assert _same_origin_problems(problems, server.base) == []
        assert browser.evaluate(session, "document.querySelector('.kpi b').textContent") == "7"
        assert "opened_secret_<b>bob</b>_file" in browser.evaluate(session, "document.body.innerText")
        assert browser.evaluate(session, "document.querySelectorAll('main b b').length") == 0
    finally:
        browser.close()


def test_tokens_cookies_and_headers(server: Server) -> None:
    r = httpx2.get(server.base + "/?token=tok-bob", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "tok-bob" not in cookie
    sid = r.cookies[COOKIE]
    page = httpx2.get(server.base + "/", cookies={COOKIE: sid})
    assert page.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "http" not in CSP
    assert "alice" not in page.text and "bob&lt;i&gt;@b.io" in page.text
    assert httpx2.get(server.base + "/report.json", cookies={COOKIE: "forged"}).status_code == 401
    assert httpx2.get(server.base + "/?token=nope", follow_redirects=False).status_code == 401
    login = httpx2.post(server.base + "/login", data={"token": "tok-alice"}, follow_redirects=False)
    assert login.status_code == 303 and COOKIE in login.cookies
    cross = httpx2.post(
        server.base + "/login", data={"token": "tok-alice"}, headers={"origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    assert server.report(OPERATOR, "bob<i>@b.io")["totals"]["events"] == 7
    assert server.report(OPERATOR, "nobody")["customer"] == "alice@a.io"  # only known customers


def test_ui_serves_the_page_on_loopback_with_a_one_time_token(server: Server, env: dict[str, str]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "activitybi", "ui", "--no-open", "--port", str(port), "--all"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(": ", 1)[1].strip()
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        _until(lambda: _answers(url))
        first = httpx2.get(url, follow_redirects=False)
        assert first.status_code == 303
        page = httpx2.get(f"http://127.0.0.1:{port}/", cookies={COOKIE: first.cookies[COOKIE]})
        assert page.status_code == 200 and "activitybi report" in page.text
        assert httpx2.get(url, follow_redirects=False).status_code == 401  # spent
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        httpx2.get(url.split("?")[0] + "report.json")
    except httpx2.HTTPError:
        return False
    return True
