"""A lean ASGI front for the MCP streamable-HTTP app: it answers the hot request, a
handshake-era `tools/call` POST, itself, and hands every other request to the SDK's app
unchanged.

The SDK's transport spends most of a tool call's CPU on its plumbing: Starlette's
middleware and request objects, a memory-object stream pair and a task per request, a
JSON-RPC dispatcher, pydantic models of every message going in and out. The front keeps
what decides the answer and drops the plumbing:

- the same checks, from the same settings: the bearer token (the same token table as the
  SDK's verifier), the Host/Origin allow-lists, Content-Type and Accept, the body size
  limit, the protocol version header (a 2026-07-28 request goes to the SDK), and in
  stateful mode the session: it must be one the SDK's session manager holds, opened by
  the same principal, not terminated or expired, and its `initialize` must have
  succeeded (the front reads the negotiated version from the SDK's own answer);
- the SDK's own code for the answer: the per-version request validation, `Tool.run`
  (the tool's strict argument model, the same error texts), the SDK's error mapping and
  logging, the per-version result sieve (`ServerRunner._serialize`) and pydantic's JSON
  encoder, so the body is byte for byte what the SDK sends;
- what the server's MCP middleware does for a call: the OpenTelemetry span, the auth
  contextvar the tools read the customer from, and `Runtime.calls.record` as
  `server.ToolCallLogger` logs it; the session's idle timer is held and restarted as the
  SDK's transport does.

Whenever a request is anything else, or any check fails, it goes to the SDK's app (with its
body replayed), which then answers exactly as it would have: 401, 404, 406, 413, 421,
initialize, notifications, GET/DELETE, resources, tools/list, `server/discover`, anything
unknown. If the server carries MCP middleware the front does not know, or the app is not in
JSON-response mode, the front turns itself off and says why (`FastFront.disabled`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pydantic_core
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, principal_components
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.shared.exceptions import MCPError
from mcp_types import DEFAULT_NEGOTIATED_VERSION, CallToolResult, ErrorData, TextContent
from mcp_types import methods as _methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from activitybi.serve import sdk

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger(__name__)
sdk_log = logging.getLogger("mcp.server.mcpserver.server")  # where the SDK logs tool failures

_JSON = b"application/json"
_KNOWN_MIDDLEWARE = {
    "mcp.server._otel.OpenTelemetryMiddleware",  # mirrored: the same span
    "mcp.server.request_state.RequestStateBoundary",  # acts only on `requestState`, never fast-pathed
    "activitybi.serve.app.ToolCallLogger",  # mirrored: Runtime.calls.record
}
_HANDSHAKE_VERSIONS = frozenset(HANDSHAKE_PROTOCOL_VERSIONS)


class FastFront:
    """ASGI app: `FastFront(sdk_app, server, rt, tokens)` in place of `sdk_app`.

    `sdk_app` is what `server.streamable_http_app(json_response=True, ...)` returned,
    `server` the MCPServer, `rt` the Runtime whose `calls.record` logs each call, and
    `tokens` the bearer token → customer table the SDK's verifier answers from.
    """

    def __init__(self, sdk_app: Any, server: Any, rt: Any, tokens: dict[str, str]) -> None:
        self.sdk_app = sdk_app
        self.server = server
        self.rt = rt
        self.fast_calls = 0
        self.delegated = 0
        self._tokens = tokens  # the very table the SDK's verifier reads, so a change reaches both
        self._users: dict[str, tuple[AuthenticatedUser, Any, str]] = {}
        self._sessions: dict[str, str] = {}  # session id -> protocol version its initialize negotiated
        self._path: str | None = None
        self.disabled = self._why_not()
        if self.disabled:
            log.warning("fast HTTP path off, every request goes to the SDK: %s", self.disabled)
            return
        manager = server.session_manager
        self._manager = manager
        self._stateless: bool = manager.stateless
        self._max_body: int = manager.max_request_body_size
        security = manager.security_settings
        self._check_hosts = security is not None and security.enable_dns_rebinding_protection
        self._allowed_hosts = list(security.allowed_hosts) if self._check_hosts else []
        self._allowed_origins = list(security.allowed_origins) if self._check_hosts else []
        self._tools: dict[str, Any] = {}
        for tool in sdk.tools(server):
            if tool.is_async and tool.context_kwarg is None and not tool.resolved_params:
                self._tools[tool.name] = tool
        self._serialize = sdk.result_serializer(server)
        self._otel = sdk.has_otel_middleware(server)

    # --- set-up ---------------------------------------------------------------------------

    def _why_not(self) -> str | None:
        """Why the fast path cannot stand in for this app, or None when it can."""
        for m in sdk.lowlevel(self.server).middleware:
            name = f"{type(m).__module__}.{type(m).__qualname__}"
            if name not in _KNOWN_MIDDLEWARE:
                return f"MCP middleware {name} would be skipped"
        if sdk.has_extensions(self.server):
            return "the server has extensions"
        try:
            manager = self.server.session_manager
        except Exception:
            return "the server has no streamable-HTTP session manager"
        if not manager.json_response:
            return "the app answers with SSE (json_response=False)"
        if manager.event_store is not None:
            return "the app has an event store"
        from mcp.server.auth.middleware.bearer_auth import RequireAuthMiddleware
        from mcp.server.streamable_http_manager import StreamableHTTPASGIApp

        for route in getattr(self.sdk_app, "routes", ()):
            endpoint = getattr(route, "endpoint", None)
            if isinstance(endpoint, RequireAuthMiddleware) and isinstance(
                endpoint.app, StreamableHTTPASGIApp
            ):
                if endpoint.required_scopes:
                    return "the endpoint requires scopes"
                self._path = route.path
        if self._path is None:
            return "no bearer-authenticated MCP route in the app"
        kinds = [m.cls.__name__ for m in getattr(self.sdk_app, "user_middleware", [])]
        if kinds != ["AuthenticationMiddleware", "AuthContextMiddleware"]:
            return f"unexpected Starlette middleware {kinds}"
        return None

    # --- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.disabled
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or _route_path(scope) != self._path
        ):
            await self.sdk_app(scope, receive, send)
            return
        auth = ctype = accept = sid = pv = host = origin = length = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v if auth is None else auth
            elif k == b"content-type":
                ctype = v if ctype is None else ctype
            elif k == b"accept":
                accept = v if accept is None else accept
            elif k == b"mcp-session-id":
                sid = v if sid is None else sid
            elif k == b"mcp-protocol-version":
                pv = v if pv is None else pv
            elif k == b"host":
                host = v if host is None else host
            elif k == b"origin":
                origin = v if origin is None else origin
            elif k == b"content-length":
                length = v if length is None else length
        user = self._user(auth)
        if user is None or not self._headers_ok(ctype, accept, pv, host, origin, length):
            await self._delegate(scope, receive, send, sid)
            return
        version, transport = None, None
        if self._stateless:
            version = pv.decode("latin-1") if pv is not None else DEFAULT_NEGOTIATED_VERSION
        elif sid is not None:
            session_id = sid.decode("latin-1")
            transport, version = self._session(session_id, user[1])
        if version is None:
            await self._delegate(scope, receive, send, sid)
            return
        messages: list[Message] = []
        body = await self._read_body(receive, messages)
        call = None if body is None else self._parse_call(body, version)
        if call is None:
            await self._delegate(scope, _replay(messages, receive), send, sid, body)
            return
        await self._call(scope, send, call, version, user, sid, transport)

    def _user(self, auth: bytes | None) -> tuple[AuthenticatedUser, Any, str] | None:
        """(the authenticated user, the session owner it makes, its customer) for the bearer
        token, read from the header as the SDK's BearerAuthBackend reads it; None when the
        SDK would refuse it."""
        if auth is None:
            return None
        value = auth.decode("latin-1")
        if not value.lower().startswith("bearer "):
            return None
        token = value[7:]
        customer = self._tokens.get(token)
        if customer is None:
            return None
        user = self._users.get(token)
        if user is None or user[2] != customer:
            access = AccessToken(token=token, client_id=customer, scopes=[], subject=customer)
            client_id, issuer, subject = principal_components(access)
            owner = {"client_id": client_id, "issuer": issuer, "subject": subject}
            user = self._users[token] = (AuthenticatedUser(access), owner, customer)
        return user

    def _headers_ok(
        self,
        ctype: bytes | None,
        accept: bytes | None,
        pv: bytes | None,
        host: bytes | None,
        origin: bytes | None,
        length: bytes | None,
    ) -> bool:
        if pv is not None and pv.decode("latin-1") not in _HANDSHAKE_VERSIONS:
            return False  # a 2026-07-28 request (or a bad version): the SDK's modern entry
        if ctype is None:
            return False
        text = ctype.decode("latin-1")
        if not text.lower().startswith("application/json"):  # TransportSecurityMiddleware
            return False
        if "application/json" not in (part.strip() for part in text.split(";")[0].split(",")):
            return False  # StreamableHTTPServerTransport._check_content_type
        if not _accepts_json(accept):
            return False
        if self._check_hosts:
            if host is None or not _allowed(host.decode("latin-1"), self._allowed_hosts):
                return False
            if origin and not _allowed(origin.decode("latin-1"), self._allowed_origins):
                return False
        if length is not None:
            try:
                if int(length) > self._max_body:
                    return False
            except ValueError:
                pass
        return True

    def _session(self, session_id: str, owner: Any) -> tuple[Any, str | None]:
        """The SDK's transport of a live, initialized session of this principal and its
        negotiated protocol version; (None, None) when the SDK must answer."""
        version = self._sessions.get(session_id)
        if version is None:
            return None, None
        transport = sdk.live_sessions(self._manager).get(session_id)
        if transport is None:  # ended (DELETE, idle timeout, crash): the SDK answers 404
            self._sessions.pop(session_id, None)
            return None, None
        if sdk.session_owner(self._manager, session_id) != owner or transport.is_terminated:
            return None, None
        scope = transport.idle_scope
        if scope is not None and scope.cancel_called:
            return None, None
        return transport, version

    async def _read_body(self, receive: Receive, messages: list[Message]) -> bytes | None:
        """The whole body (None past the size limit or on a disconnect); every message
        read is kept in `messages` for the SDK to read again."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _parse_call(self, body: bytes, version: str) -> tuple[Any, Any, dict[str, Any]] | None:
        """(request id, tool, arguments) of a plain tools/call this front can answer."""
        try:
            msg = pydantic_core.from_json(body)
        except ValueError:
            return None
        if type(msg) is not dict or msg.get("method") != "tools/call" or msg.get("jsonrpc") != "2.0":
            return None
        if not msg.keys() <= {"jsonrpc", "id", "method", "params"}:
            return None
        rid = msg.get("id")
        if type(rid) is not int and type(rid) is not str:
            return None
        params = msg.get("params")
        if type(params) is not dict or not params.keys() <= {"name", "arguments"}:
            return None
        tool = self._tools.get(params.get("name"))  # type: ignore[arg-type]
        arguments = params.get("arguments")
        if tool is None or (arguments is not None and type(arguments) is not dict):
            return None
        try:
            _methods.validate_client_request("tools/call", version, params)
        except Exception:
            return None
        return rid, tool, arguments or {}

    async def _delegate(
        self, scope: Scope, receive: Receive, send: Send, sid: bytes | None, body: bytes | None = None
    ) -> None:
        """The SDK's app answers. In stateful mode an `initialize` it accepts opens (or
        renegotiates) a session the fast path may serve from then on."""
        self.delegated += 1
        if self._stateless or self.disabled or (sid is not None and not _is_initialize(body)):
            await self.sdk_app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body" and start.get("status") == 200:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self._opened(start, b"".join(chunks))
            await send(message)

        await self.sdk_app(scope, receive, watch)

    def _opened(self, start: Message, body: bytes) -> None:
        session_id = next(
            (v.decode("latin-1") for k, v in start.get("headers", ()) if k.lower() == b"mcp-session-id"), None
        )
        if session_id is None:
            return
        try:
            result = pydantic_core.from_json(body).get("result")
            version = result["protocolVersion"]
        except Exception:
            return  # not an accepted initialize: the SDK keeps answering for this session
        live = sdk.live_sessions(self._manager)
        if isinstance(version, str) and session_id in live:
            self._sessions[session_id] = version
            if len(self._sessions) > 2 * len(live) + 1024:
                self._sessions = {s: v for s, v in self._sessions.items() if s in live}

    # --- the call -------------------------------------------------------------------------

    async def _call(
        self,
        scope: Scope,
        send: Send,
        call: tuple[Any, Any, dict[str, Any]],
        version: str,
        user: tuple[AuthenticatedUser, Any, str],
        sid: bytes | None,
        transport: Any,
    ) -> None:
        rid, tool, arguments = call
        self.fast_calls += 1
        held = sdk.hold_session(transport)  # a request in flight holds the session, as in the SDK
        token = auth_context_var.set(user[0])
        try:
            start = time.perf_counter()
            if self._otel:  # OpenTelemetryMiddleware's span
                with sdk.otel_span(
                    name=f"tools/call {tool.name}",
                    kind=SpanKind.SERVER,
                    attributes={
                        "mcp.method.name": "tools/call",
                        "mcp.protocol.version": version,
                        "jsonrpc.request.id": str(rid),
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": tool.name,
                    },
                    context=None,
                    record_exception=False,
                    set_status_on_exception=False,
                ) as span:
                    payload, outcome, error = await self._run(tool, arguments, version, rid)
                    if outcome == "error" and "result" in payload:
                        span.set_attribute("error.type", "tool_error")
                        span.set_status(StatusCode.ERROR)
                    elif "error" in payload:
                        code = str(payload["error"]["code"])
                        span.set_attributes({"error.type": code, "rpc.response.status_code": code})
                        span.set_status(StatusCode.ERROR, payload["error"]["message"])
            else:
                payload, outcome, error = await self._run(tool, arguments, version, rid)
            latency_ms = (time.perf_counter() - start) * 1000
            body = pydantic_core.to_json(payload)
        finally:
            auth_context_var.reset(token)
            if held:
                sdk.release_session(transport)
        self.rt.calls.record(
            user[2], tool.name, latency_ms, outcome, error, sid.decode("latin-1") if sid is not None else None
        )
        headers = [(b"content-type", _JSON)]
        if transport is not None and sid is not None:
            headers.append((b"mcp-session-id", sid))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _run(
        self, tool: Any, arguments: dict[str, Any], version: str, rid: Any
    ) -> tuple[dict[str, Any], str, str | None]:
        """The JSON-RPC answer as the SDK builds it, and the call's outcome and error as
        ToolCallLogger records them."""
        try:
            try:
                result = await tool.run(arguments, None, convert_result=True)
            except MCPError:
                raise
            except Exception as exc:  # MCPServer._handle_call_tool
                if isinstance(exc, ToolError) and not isinstance(exc, UnexpectedToolError):
                    if isinstance(exc.__cause__, ValidationError):
                        errors = exc.__cause__.errors()
                        fields = sorted({".".join(str(p) for p in e["loc"]) for e in errors})
                        sdk_log.info("Tool %r rejected arguments: %r", tool.name, fields)
                    else:
                        sdk_log.info("Tool %r failed: %r", tool.name, str(exc))
                else:
                    sdk_log.exception("Tool %r raised an unexpected exception", tool.name)
                result = CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
            wire = self._serialize("tools/call", version, result)
        except Exception as exc:  # JSONRPCDispatcher's exception-to-wire boundary
            error = sdk.exception_to_error(exc)
            if error is None:
                log.exception("handler for 'tools/call' raised")
                error = ErrorData(code=0, message=str(exc))
            payload = {
                "jsonrpc": "2.0",
                "id": rid,
                "error": error.model_dump(by_alias=True, mode="json", exclude_unset=True),
            }
            return payload, "error", str(exc)[:300]
        if getattr(result, "is_error", False):
            content = getattr(result, "content", None) or [None]
            return (
                {"jsonrpc": "2.0", "id": rid, "result": wire},
                "error",
                str(getattr(content[0], "text", ""))[:300],
            )
        return {"jsonrpc": "2.0", "id": rid, "result": wire}, "ok", None


# --- helpers --------------------------------------------------------------------------------


def _route_path(scope: Scope) -> str:
    """The path Starlette's router matches (starlette._utils.get_route_path)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def _accepts_json(accept: bytes | None) -> bool:
    """streamable_http.check_accept_headers, JSON half."""
    if accept is None:
        return False
    for media in accept.decode("latin-1").split(","):
        kind = media.strip().split(";")[0].strip().lower()
        if kind in ("application/json", "application/*", "*/*"):
            return True
    return False


def _allowed(value: str, allowed: list[str]) -> bool:
    """TransportSecurityMiddleware's Host/Origin rule: exact, or `base:*` for any port."""
    if value in allowed:
        return True
    return any(a.endswith(":*") and value.startswith(a[:-2] + ":") for a in allowed)


def _is_initialize(body: bytes | None) -> bool:
    if body is None or b'"initialize"' not in body:
        return False
    try:
        msg = pydantic_core.from_json(body)
    except ValueError:
        return False
    return isinstance(msg, dict) and msg.get("method") == "initialize"


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives back what the front already read, then reads on."""
    pending = list(messages)

    async def again() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return again
