"""What `serve --http` holds against a hostile client, below the tools.

- `SessionGuard` (ASGI): a request that would open a session (a POST to the MCP endpoint
  without `mcp-session-id`) spends the customer's `initialize` budget, and is refused (429)
  while the customer holds `ACTIVITYBI_SESSIONS_PER_CUSTOMER` live sessions: one customer
  can no longer fill the SDK's global session table and lock everyone else out.
- `guarded_protocol` (uvicorn's HTTP protocol, on the socket): a connection must start its
  request, and send its headers and body, within `ACTIVITYBI_HTTP_REQUEST_TIMEOUT`, or it is
  closed, as it is when its headers pass `MAX_HEADER_BYTES`; a client address holds at most
  `ACTIVITYBI_HTTP_CONNECTIONS_PER_CLIENT` open connections (further ones are closed
  at once). Idle keep-alive connections close after uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from mcp.server.auth.provider import AccessToken, principal_components
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from activitybi import config
from activitybi.serve import sdk
from activitybi.serve.ratelimit import RateLimited

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_HEADER_BYTES = 64 * 1024
"""A request line and headers longer than this close the connection."""


class SessionGuard:
    """ASGI app: `SessionGuard(app, session_manager, rt, tokens)` in front of the MCP app."""

    def __init__(self, app: Any, manager: Any, rt: Any, tokens: dict[str, str], path: str = "/mcp") -> None:
        self.app = app
        self.manager = manager
        self.rt = rt
        self.tokens = tokens
        self.path = path
        self.cap = config.settings().sessions_per_customer
        self.stateless: bool = manager.stateless

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        opens = scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path
        if self.stateless or not opens:
            await self.app(scope, receive, send)
            return
        auth = None
        for k, v in scope["headers"]:
            if k == b"mcp-session-id":
                await self.app(scope, receive, send)  # a request of an open session
                return
            if k == b"authorization" and auth is None:
                auth = v.decode("latin-1")
        customer = self.tokens.get(auth[7:]) if auth and auth[:7].lower() == "bearer " else None
        if customer is None:  # the SDK answers 401
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(customer)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        message, retry_after = refusal
        body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}})
        headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", str(max(1, round(retry_after))).encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, customer: str) -> tuple[str, float] | None:
        """(why, seconds to wait) when this customer may not open a session now."""
        try:
            self.rt.limits.check("initialize", customer)
        except RateLimited as e:
            return str(e), e.retry_after
        access = AccessToken(token="", client_id=customer, scopes=[], subject=customer)
        client_id, issuer, subject = principal_components(access)
        owner = {"client_id": client_id, "issuer": issuer, "subject": subject}
        if sdk.sessions_owned_by(self.manager, owner) >= self.cap:
            return (
                f"session limit: this user holds {self.cap} open sessions; end one (DELETE) or "
                "wait for an idle one to expire",
                60.0,
            )
        return None


def connections_per_client() -> int:
    """The setting, else a quarter of this process's descriptor limit (16 to 4096)."""
    explicit = config.settings().http_connections_per_client
    if explicit:
        return explicit
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(4096, max(16, soft // 4))


def guarded_protocol(request_timeout: float, per_client: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a request deadline and a per-address cap."""
    open_by_address: Counter[str] = Counter()

    class GuardedProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _address: str | None = None
        _header_bytes = 0
        _headers_done = False

        _completed = 0

        def data_received(self, data: bytes) -> None:
            before = self._completed
            super().data_received(data)
            if not self._headers_done and self._completed == before:  # all of `data` was headers
                self._header_bytes += len(data)
                if self._header_bytes > MAX_HEADER_BYTES:
                    self.transport.close()

        def on_headers_complete(self) -> None:
            self._headers_done = True
            super().on_headers_complete()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            self._address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            open_by_address[self._address] += 1
            if open_by_address[self._address] > per_client:
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._address is not None:
                open_by_address[self._address] -= 1
                if open_by_address[self._address] <= 0:
                    del open_by_address[self._address]
                self._address = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()
            self._headers_done, self._header_bytes = False, 0
            self._completed += 1

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(request_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol
