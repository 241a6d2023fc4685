"""The live page: the report of one customer (any customer, for the operator), kept
current in place by a small inline script that polls `/report.json`.

A browser cannot send a bearer header when a page is first opened, so a token is exchanged
once (a login form's POST, or `/?token=`, answered by a redirect so that the token does not
stay in the address bar) for an opaque session id in an HttpOnly, SameSite=Strict cookie.
Every page carries a strict Content-Security-Policy: the one script and the one style
sheet are ours (allowed by their hashes), nothing is loaded from elsewhere, and every
customer value is escaped by `reporting.html`.

`serve --http` adds these routes to its app; `activitybi ui` serves them alone on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import anyio
import orjson

from activitybi import config
from activitybi.reporting import html as page_html
from activitybi.reporting.figures import local_report
from activitybi.reporting.source import WarehouseBusy

COOKIE = "activitybi_live"
LOGIN_BODY_CAP = 4096
CACHE_SECONDS = 60.0
"""Figures are computed again when the warehouse file changed (a load committed), else at
most once a minute: through the owner each computation is a dozen audited tickets, which
polling tabs must not multiply."""

SCRIPT = """(function(){
var every=1000*Number(document.querySelector('meta[name=activitybi-refresh]').content);
var box=document.getElementById('report'),state=document.getElementById('live');
function tick(){
 fetch('/report.json'+location.search,{credentials:'same-origin',cache:'no-store'})
 .then(function(r){return r.json();})
 .then(function(d){
  if(d.main!==undefined){box.innerHTML=d.main;}
  state.textContent=d.error?'live: '+d.error:'live, updated '+new Date().toLocaleTimeString();
 })
 .catch(function(){state.textContent='live: reconnecting';})
 .finally(function(){setTimeout(tick,every);});
}
setTimeout(tick,every);
})();"""
"""Swaps in the server's escaped HTML for the report (no customer value is built here)."""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(page_html.CSS)}; "
    "img-src data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}


@dataclass(frozen=True)
class Viewer:
    """Who a token or session shows the page to: one customer; the operator (any customer,
    chosen on the page); or, with neither, everyone on this machine (`activitybi ui --all`)."""

    customer: str | None
    operator: bool = False


class Sessions:
    """Opaque session ids → viewer, in this process's memory, each for a limited time."""

    def __init__(self, ttl_s: float, cap: int = 10_000) -> None:
        self.ttl_s, self.cap = ttl_s, cap
        self._by_id: dict[str, tuple[float, Viewer]] = {}
        self._lock = threading.Lock()

    def open(self, viewer: Viewer) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            if len(self._by_id) >= self.cap:
                self._by_id = {k: v for k, v in self._by_id.items() if v[0] > now}
                while len(self._by_id) >= self.cap:  # the oldest go first
                    del self._by_id[next(iter(self._by_id))]
            self._by_id[sid] = (now + self.ttl_s, viewer)
        return sid

    def get(self, sid: str | None) -> Viewer | None:
        if not sid:
            return None
        with self._lock:
            found = self._by_id.get(sid)
            if found is None or found[0] <= time.monotonic():
                self._by_id.pop(sid, None)
                return None
            return found[1]


class LivePage:
    """The live page's routes for a set of credentials (token → viewer)."""

    def __init__(
        self,
        credentials: dict[str, Viewer],
        *,
        customers: list[str] | None = None,
        one_time: bool = False,
        home: Path | None = None,
    ) -> None:
        settings = config.settings()
        self.credentials = credentials
        self.customers = sorted(set(customers or []))
        self.one_time = one_time  # `activitybi ui`: its token opens one session only
        self.home = home or config.home()
        self.refresh_s = settings.live_refresh_s
        self.sessions = Sessions(settings.live_session_hours * 3600)
        self._cache: dict[str | None, tuple[float, tuple[int, ...], dict[str, Any]]] = {}
        self._locks: dict[str | None, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    @classmethod
    def for_tokens(cls, tokens: dict[str, str], operator_token: str | None) -> LivePage:
        """`serve --http`: each customer's token shows that customer; the operator's, any."""
        credentials = {token: Viewer(customer) for token, customer in tokens.items()}
        if operator_token:
            credentials[operator_token] = Viewer(None, operator=True)
        return cls(credentials, customers=list(tokens.values()))

    def routes(self) -> list[tuple[str, list[str], Any]]:
        """(path, methods, endpoint) of each route, for `custom_route` or a Starlette app."""
        return [
            ("/", ["GET"], self.index),
            ("/login", ["POST"], self.login),
            ("/report.json", ["GET"], self.report_json),
        ]

    # -- who is asking -------------------------------------------------------------------

    def _exchange(self, token: str) -> Viewer | None:
        """The viewer of a token (compared in constant time), spent if it is one-time."""
        found = None
        for known, viewer in list(self.credentials.items()):
            if hmac.compare_digest(known.encode(), token.encode()):
                found = viewer
                if self.one_time:
                    self.credentials.pop(known, None)
        return found

    def _viewer(self, request: Any) -> Viewer | None:
        """The cookie's session, else a bearer header (scripts and tests)."""
        viewer = self.sessions.get(request.cookies.get(COOKIE))
        if viewer is not None:
            return viewer
        value: str = request.headers.get("authorization", "")
        if value[:7].lower() == "bearer " and not self.one_time:
            return self._exchange(value[7:])
        return None

    def _scope(self, viewer: Viewer, asked: str | None) -> str | None:
        """Whose figures: the viewer's customer; for the operator the one asked for (one
        of the known customers), else the first; None is everyone (`ui --all` only)."""
        if viewer.customer is not None or not viewer.operator:
            return viewer.customer
        if asked in self.customers:
            return asked
        return self.customers[0] if self.customers else ""

    # -- figures -------------------------------------------------------------------------

    def _compute(self, customer: str | None) -> dict[str, Any]:
        with self._locks_lock:
            lock = self._locks.setdefault(customer, threading.Lock())
        with lock:  # one build per scope at a time; the others take its result
            stamp = self._stamp()
            cached = self._cache.get(customer)
            if cached is not None and cached[1] == stamp and time.monotonic() - cached[0] < CACHE_SECONDS:
                return cached[2]
            try:
                report = local_report(self.home, customer=customer)
            except (WarehouseBusy, FileNotFoundError, RuntimeError) as e:
                report = {"error": str(e)}
            self._cache[customer] = (time.monotonic(), stamp, report)
            return report

    def _stamp(self) -> tuple[int, ...]:
        """Changes whenever a load commits: the DuckDB file's and its WAL's mtime and size."""
        path = config.Home(self.home).warehouse
        out: list[int] = []
        for p in (path, path.with_name(path.name + ".wal")):
            try:
                st = p.stat()
            except OSError:
                out += [0, 0]
            else:
                out += [st.st_mtime_ns, st.st_size]
        return tuple(out)

    async def _report(self, viewer: Viewer, asked: str | None) -> dict[str, Any]:
        scope = self._scope(viewer, asked)
        if scope == "":
            return {"error": "no customers are configured"}
        report = dict(await anyio.to_thread.run_sync(self._compute, scope))
        if viewer.customer is not None:  # paths, PIDs, other customers' tickets: operator only
            report.pop("health", None)
            if "error" in report:
                report["error"] = "the figures are not ready yet; retrying"
        return report

    @staticmethod
    def _main(report: dict[str, Any]) -> str:
        if "error" in report:
            return f'<p class="warn">{escape(report["error"])}</p>'
        return page_html.render_main(report)

    # -- routes --------------------------------------------------------------------------

    def _page(self, main: str, status: int = 200, *, live: bool = False) -> Any:
        from starlette.responses import HTMLResponse

        head = f'<meta name="activitybi-refresh" content="{self.refresh_s:g}">'
        script = f"<script>{SCRIPT}</script>" if live else ""
        body = page_html.page("activitybi live", main, head=head, body_end=script)
        return HTMLResponse(body, status_code=status, headers=HEADERS)

    def _login_page(self, message: str = "", status: int = 200) -> Any:
        note = f'<p class="warn">{escape(message)}</p>' if message else ""
        return self._page(
            "<h1>activitybi live</h1>"
            f'{note}<form method="post" action="/login"><p><label>Token '
            '<input type="password" name="token" autocomplete="off" required></label> '
            '<button type="submit">Open</button></p></form>',
            status,
        )

    def _set_cookie(self, response: Any, sid: str, *, secure: bool) -> None:
        response.set_cookie(
            COOKIE,
            sid,
            max_age=int(self.sessions.ttl_s),
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure,
        )

    def _signed_in(self, request: Any, viewer: Viewer) -> Any:
        """A redirect to the page (a URL without the token) that sets the session cookie."""
        from starlette.responses import RedirectResponse

        response = RedirectResponse("/", status_code=303, headers=HEADERS)
        self._set_cookie(response, self.sessions.open(viewer), secure=request.url.scheme == "https")
        return response

    async def index(self, request: Any) -> Any:
        token = request.query_params.get("token")
        if token is not None:
            viewer = self._exchange(token)
            if viewer is None:
                return self._login_page("that token is not valid", 401)
            return self._signed_in(request, viewer)
        viewer = self.sessions.get(request.cookies.get(COOKIE))
        if viewer is None:
            return self._login_page()
        asked = request.query_params.get("customer")
        report = await self._report(viewer, asked)
        frame = self._frame(viewer, self._scope(viewer, asked), self._main(report))
        return self._page(frame, live=True)

    def _frame(self, viewer: Viewer, scope: str | None, main: str) -> str:
        """The live status line, the operator's choice of customer, and the report."""
        nav = ""
        if viewer.operator:
            links = " · ".join(
                f"<b>{escape(c)}</b>"
                if c == scope
                else f'<a href="/?customer={escape(quote(c, safe=""))}">{escape(c)}</a>'
                for c in self.customers
            )
            nav = f'<p class="sub">customers: {links}</p>'
        return f'{nav}<p class="sub" id="live">live</p><div id="report">{main}</div>'

    async def login(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return PlainTextResponse("cross-origin login refused", status_code=403, headers=HEADERS)
        if int(request.headers.get("content-length") or 0) > LOGIN_BODY_CAP:
            return PlainTextResponse("too large", status_code=413, headers=HEADERS)
        body = (await request.body())[:LOGIN_BODY_CAP].decode(errors="replace")
        token = (parse_qs(body).get("token") or [""])[0]
        viewer = self._exchange(token) if token else None
        if viewer is None:
            return self._login_page("that token is not valid", 401)
        return self._signed_in(request, viewer)

    async def report_json(self, request: Any) -> Any:
        from starlette.responses import Response

        viewer = self._viewer(request)
        if viewer is None:
            return Response(b'{"error":"sign in first"}', 401, HEADERS, "application/json")
        report = await self._report(viewer, request.query_params.get("customer"))
        body = {"main": self._main(report), **report}
        return Response(orjson.dumps(body, default=str), 200, HEADERS, "application/json")
