"""The MCP server's tools (logging, memory, SafeSQL queries, cards) and its `context://me`
resource over the mcp SDK, for one customer per connection (the stdio configuration, or
the bearer token over HTTP).

Tools answer from memory and the local queue only: no network on any tool's path. Every
tool call is itself logged as a `called_tool` activity (tool, latency, outcome, session).
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO, TypeVar, cast

import anyio
import orjson
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ConfigDict, Field

from activitybi import __version__, config, ulid
from activitybi.events import STEP_FIELDS, Step
from activitybi.query import templates
from activitybi.query.tickets import DEFAULT_BYTE_CAP, FINAL, Ticket, TooManyTickets
from activitybi.serve import sdk
from activitybi.serve.handshake import INSTRUCTIONS, SERVER_NAME, Handshake
from activitybi.serve.ratelimit import RateLimited
from activitybi.serve.runtime import Runtime

log = logging.getLogger(__name__)
HOOK_BODY_CAP = 4 * 1024 * 1024
"""Largest Claude Code hook event accepted over HTTP (a tool's response can be large)."""
F = TypeVar("F", bound=Callable[..., Any])


class ToolCallLogger:
    """Middleware that logs every tools/call, rejected arguments included."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        name = (ctx.params or {}).get("name")
        if name not in self.rt.calls.known:  # an unknown tool: answered, limited like a write
            try:
                self.rt.limits.check("unknown_tool", self.rt.customer())
            except (RateLimited, ToolError) as e:
                return {"content": [{"type": "text", "text": str(e)}], "isError": True}
        start = time.perf_counter()
        outcome, error = "ok", None
        try:
            result = await call_next(ctx)  # the wire form: a dict
            if isinstance(result, dict) and result.get("isError"):
                outcome = "error"
                content = result.get("content") or [{}]
                error = str(content[0].get("text", ""))[:300]
            return result
        except BaseException as e:
            outcome, error = "error", str(e)[:300]
            raise
        finally:
            self._log(ctx, (time.perf_counter() - start) * 1000, outcome, error)

    def _log(self, ctx: Any, latency_ms: float, outcome: str, error: str | None) -> None:
        params = ctx.params or {}
        request = getattr(ctx, "request", None)
        session = request.headers.get("mcp-session-id") if request is not None else None
        try:
            customer = self.rt.customer()
        except ToolError:
            return
        self.rt.calls.record(customer, str(params.get("name")), latency_ms, outcome, error, session)


def _takes_step(fn: F) -> F:
    """Gives ``fn(**fields)`` the signature of one step's fields, for the SDK to build the
    tool's argument model and schema from (the fields are declared once, in events.py)."""
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=kind,
                default=inspect.Parameter.empty if name == "activity" else None,
            )
            for name, kind in STEP_FIELDS.items()
        ],
        return_annotation=str,
    )
    return fn


def _forbid_extra_arguments(server: MCPServer) -> None:
    """An unknown argument is an error (the SDK ignores it by default), and so is a value
    of another type ("12" for an integer): the models validate strictly."""
    for tool in sdk.tools(server):
        loose = sdk.tool_argument_model(tool)

        class Strict(loose):  # type: ignore[valid-type, misc]
            model_config = ConfigDict(extra="forbid", strict=True)

        Strict.__name__ = loose.__name__
        sdk.set_tool_argument_model(tool, Strict)


def build(rt: Runtime, **server_options: Any) -> MCPServer:
    mcp = MCPServer(
        SERVER_NAME,
        instructions=INSTRUCTIONS,
        version=__version__,
        middleware=[ToolCallLogger(rt)],
        **server_options,
    )

    @mcp.tool(structured_output=False)
    @_takes_step
    async def log_event(**fields: Any) -> str:
        """Record one step of the conversation; returns its activity_id at once."""
        step = Step.model_construct(**fields)  # the SDK validated each field against STEP_FIELDS
        customer = rt.customer()
        rt.limit("log_event", customer)
        return rt.writer.append(step.event(customer, rt.session_id, rt.source))

    @mcp.tool(structured_output=False)
    async def log_events(
        events: Annotated[
            list[Step],
            Field(
                min_length=1, max_length=1000, description=("Up to 1000 steps, each as log_event takes it.")
            ),
        ],
    ) -> str:
        """Record many steps in one call (one write); returns their activity_ids as JSON."""
        customer = rt.customer()
        rt.limit("log_event", customer, len(events))
        try:
            ids = rt.writer.append_many([e.event(customer, rt.session_id, rt.source) for e in events])
        except ToolError:
            rt.limits.refund("log_event", customer, len(events))  # nothing was written
            raise
        return orjson.dumps(ids).decode()

    @mcp.tool(structured_output=False)
    async def log_insight(
        subject: Annotated[
            str,
            Field(
                min_length=1,
                max_length=200,
                description=("What the fact is about (a project, a habit; 'preferences' for preferences)."),
            ),
        ],
        metric: Annotated[str, Field(min_length=1, max_length=200, description="Which property.")],
        value: Annotated[
            float | int | bool | str | dict[str, Any],
            Field(description=("The value; numbers get min/max/avg over time in get_context.")),
        ],
        provenance_query_hash: Annotated[
            str | None,
            Field(
                pattern=r"^[0-9a-fA-F]{8,128}$",
                description=("Hash of the query the fact came from, if any."),
            ),
        ] = None,
    ) -> str:
        """Remember a durable fact about this user; returns its atom_id. The next
        get_context shows it, in this and every other session."""
        if isinstance(value, float) and value != value:
            raise ToolError("value must not be NaN")
        cap = config.settings().insight_max_bytes
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError as e:  # an integer past 64 bits, say
            raise ToolError(f"value cannot be stored as JSON: {e}") from None
        if size > cap:
            raise ToolError(f"value is over {cap} bytes as JSON")
        customer = rt.customer()
        rt.limit("log_insight", customer)
        features = {"subject": subject, "metric": metric, "value": value}
        if provenance_query_hash:
            features["provenance_query_hash"] = provenance_query_hash
        atom_id = ulid()
        ts = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
        rt.writer.append(
            {
                "activity": "learned_insight",
                "activity_id": atom_id,
                "ts": ts + "Z",
                "customer": customer,
                "feature_json": features,
                "_session_id": rt.session_id,
                "_source": rt.source,
            }
        )
        rt.journal.append(customer, {"atom_id": atom_id, "customer_id": customer, "ts": ts, **features})
        return atom_id

    @mcp.tool(structured_output=False)
    async def get_context(
        max_bytes: Annotated[
            int | None,
            Field(
                ge=256,
                le=16 * 1024 * 1024,
                description=("Trim whole items until the JSON fits in this many bytes."),
            ),
        ] = None,
    ) -> str:
        """What is known about this user, as JSON: recent activity, insights with their
        latest value and min/max/avg over 30 days, preferences. Call it first."""
        customer = rt.customer()
        found = rt.context.lookup(customer)
        payload = rt.context.ready(found, max_bytes)
        if payload is None:  # a build or a trim: off the event loop, other customers go on
            payload = await anyio.to_thread.run_sync(rt.context.resolve, customer, found, max_bytes)
        return payload.decode()

    @mcp.tool(structured_output=False)
    async def list_query_templates() -> str:
        """The query templates submit_query runs, with their parameters, as JSON."""
        return orjson.dumps([t.describe() for t in templates.TEMPLATES.values()]).decode()

    @mcp.tool(structured_output=False)
    async def submit_query(
        template: Annotated[
            str, Field(max_length=100, description=("A template name from list_query_templates."))
        ],
        params: Annotated[dict[str, Any] | None, Field(description=("The template's parameters."))] = None,
        byte_cap: Annotated[
            int | None,
            Field(
                ge=1024,
                le=16 * 1024 * 1024,
                description=("Largest result in bytes; past it a sample of whole rows comes back."),
            ),
        ] = None,
    ) -> str:
        """Start a query on this user's data; returns a ticket at once. Read it with
        get_query_result."""
        customer = rt.customer()
        rt.limit("submit_query", customer)
        try:
            ticket = rt.tickets.submit(customer, template, params or {}, byte_cap or DEFAULT_BYTE_CAP)
        except (templates.TemplateError, TooManyTickets) as e:
            raise ToolError(str(e)) from None
        return orjson.dumps({"ticket": ticket.ticket_id, "status": ticket.status}).decode()

    def _ticket(ticket: str) -> Ticket:
        found = rt.tickets.get(ticket, rt.customer())
        if found is None:
            raise ToolError(f"no ticket {ticket[:40]!r} for this user")
        return found

    @mcp.tool(structured_output=False)
    async def get_query_result(
        ticket: Annotated[str, Field(max_length=64, description="The ticket from submit_query.")],
    ) -> str:
        """A ticket's status (queued, running with progress, succeeded, failed with a
        reason, cancelled) and, once it succeeded, its rows."""
        found = _ticket(ticket)
        out = found.public()
        if found.status == "succeeded":
            out["result"] = rt.tickets.result(found.ticket_id)
        return orjson.dumps(out).decode()

    @mcp.tool(structured_output=False)
    async def cancel_query(
        ticket: Annotated[str, Field(max_length=64, description="The ticket from submit_query.")],
    ) -> str:
        """Stop a queued or running query."""
        found = _ticket(ticket)
        if found.status not in FINAL:
            rt.tickets.cancel(found.ticket_id)
        return orjson.dumps(
            {"ticket": found.ticket_id, "cancel_requested": found.status not in FINAL}
        ).decode()

    @mcp.resource(
        "context://me",
        mime_type="application/json",
        description="This user's context, as get_context returns it.",
    )
    async def context_resource() -> str:
        customer = rt.customer()
        return (await anyio.to_thread.run_sync(rt.context.get, customer)).decode()

    from mcp.server.mcpserver import Image

    from activitybi.query import cards
    from activitybi.query.artifacts import ArtifactStore

    artifacts = ArtifactStore.from_env()

    @mcp.tool(structured_output=False)
    async def render_card(
        ticket: Annotated[
            str, Field(max_length=64, description="A ticket from submit_query whose status is succeeded.")
        ],
        kind: Annotated[
            Literal["auto", "bar", "line"],
            Field(description="bar, line, or auto: a line over time, bars otherwise."),
        ] = "auto",
    ) -> list[Any]:
        """Draw a finished query's result as a chart card (PNG with title, axes and the
        data's provenance), shown inline; the card is also kept as an artifact."""
        customer = rt.customer()
        rt.limit("render_card", customer)
        try:
            card = await anyio.to_thread.run_sync(
                lambda: cards.card_for_ticket(rt.tickets, ticket, customer, kind=kind, store=artifacts)
            )
        except cards.CardError as e:
            raise ToolError(str(e)) from None
        info = card.info
        if rt.artifact_route is not None and "artifact_id" in info:
            info = {**info, "url": rt.artifact_route + info["artifact_id"]}
        return [orjson.dumps(info).decode(), Image(data=card.png, format="png")]

    _forbid_extra_arguments(mcp)
    rt.calls.known = frozenset(tool.name for tool in sdk.tools(mcp))
    return mcp


def serve_stdio(rt: Runtime, handshake: Handshake) -> None:
    from mcp.server.stdio import stdio_server

    server = build(rt)
    stdin, stdout = handshake.streams()

    async def main() -> None:
        files = anyio.wrap_file(cast(TextIO, stdin)), anyio.wrap_file(cast(TextIO, stdout))
        async with stdio_server(*files) as (r, w):
            low = sdk.lowlevel(server)
            await low.run(r, w, low.create_initialization_options())

    anyio.run(main)


def load_tokens(path: Path | None) -> dict[str, str]:
    """Bearer token → customer, from a JSON object file or `ACTIVITYBI_TOKENS`."""
    raw = path.read_bytes() if path else (config.settings().tokens or "").encode()
    if not raw:
        raise SystemExit(
            'HTTP needs tokens: --tokens FILE or ACTIVITYBI_TOKENS, a JSON object {"<token>": "<customer>"}'
        )
    tokens = orjson.loads(raw)
    if not isinstance(tokens, dict) or not all(isinstance(v, str) and v for v in tokens.values()):
        raise SystemExit("tokens must be a JSON object of token to customer")
    return tokens


ARTIFACT_ROUTE = "/artifacts/"
"""On `serve --http`, GET `/artifacts/<artifact_id>` with the customer's bearer token serves
that customer's own card; render_card's `url` is this path."""


def _bearer(request: Any) -> str | None:
    value: str = request.headers.get("authorization", "")
    return value[7:] if value[:7].lower() == "bearer " else None


def http_app(
    rt: Runtime, tokens: dict[str, str], *, stateless: bool = False, operator_token: str | None = None
) -> Any:
    """The ASGI app of `serve --http`: the MCP endpoint (behind `SessionGuard`, and the fast
    front unless `ACTIVITYBI_FAST_HTTP=0`), `/metrics` for the operator's token only,
    each customer's own artifacts, and the live page at `/` (reporting/live.py)."""
    import hmac

    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings
    from pydantic import AnyHttpUrl
    from starlette.responses import PlainTextResponse, Response

    from activitybi.query.artifacts import ArtifactStore
    from activitybi.serve.guard import SessionGuard

    class TokenCustomers:
        """Each bearer token names one customer; any other token is refused (401)."""

        async def verify_token(self, token: str) -> AccessToken | None:
            customer = tokens.get(token)
            if customer is None:
                return None
            return AccessToken(token=token, client_id=customer, scopes=[], subject=customer)

    rt.artifact_route = ARTIFACT_ROUTE
    server = build(
        rt,
        token_verifier=TokenCustomers(),
        auth=AuthSettings(issuer_url=AnyHttpUrl("https://auth.invalid"), resource_server_url=None),
    )

    @server.custom_route("/metrics", methods=["GET"])  # type: ignore[untyped-decorator]
    async def metrics(request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        given = _bearer(request)
        if operator_token is None:
            return PlainTextResponse(
                "metrics need an operator token: ACTIVITYBI_OPERATOR_TOKEN or --operator-token-file",
                status_code=403,
            )
        if given is None or not hmac.compare_digest(given.encode(), operator_token.encode()):
            return PlainTextResponse("the operator token is required", status_code=401)
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @server.custom_route("/hooks/claude-code", methods=["POST"])  # type: ignore[untyped-decorator]
    async def claude_code_hook(request: Any) -> Any:
        """Claude Code's `http` hooks: the same facts as `activitybi hook`, for the bearer
        token's customer. The transcript is not imported at SessionEnd: its path names a
        file on the client's machine, which a server must not read."""
        from activitybi.capture.common import quarantine
        from activitybi.capture.hooks import BadHook, events

        customer = tokens.get(_bearer(request) or "")
        if customer is None:
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if int(request.headers.get("content-length") or 0) > HOOK_BODY_CAP:
            return Response(status_code=413)
        raw = await request.body()
        home = config.Home.current()
        try:
            found = events(
                orjson.loads(raw), customer=customer, home=home, content=config.settings().capture_content
            )
        except (orjson.JSONDecodeError, BadHook) as e:
            quarantine(home.capture_quarantine, "hook", str(e), raw, customer=customer)
            return Response(str(e), status_code=400, media_type="text/plain")
        if found:
            rt.writer.queue.append_many(found)
        return Response(status_code=200)

    store = ArtifactStore.from_env()

    @server.custom_route(ARTIFACT_ROUTE + "{artifact_id}", methods=["GET"])  # type: ignore[untyped-decorator]
    async def artifact(request: Any) -> Any:
        customer = tokens.get(_bearer(request) or "")
        if customer is None:
            return PlainTextResponse("a customer's bearer token is required", status_code=401)
        found = store.get(str(request.path_params["artifact_id"])[:64], customer)
        if found is None:
            return PlainTextResponse("no such artifact for this user", status_code=404)
        data = await anyio.to_thread.run_sync(store.read, found)
        return Response(data, media_type=found.content_type or "application/octet-stream")

    from activitybi.reporting.live import LivePage

    for path, methods, endpoint in LivePage.for_tokens(tokens, operator_token).routes():
        server.custom_route(path, methods=methods)(endpoint)
    _add_otlp(server, rt, tokens)
    app: Any = server.streamable_http_app(stateless_http=stateless, json_response=True)
    if config.settings().fast_http:
        from activitybi.serve.fast_http import FastFront

        app = FastFront(app, server, rt, tokens)
    return SessionGuard(app, server.session_manager, rt, tokens)


def _add_otlp(server: Any, rt: Runtime, tokens: dict[str, str]) -> None:
    """The OTLP/HTTP receiver on /v1/logs, /v1/metrics, /v1/traces, each request as its
    bearer token's customer (checked by the receiver: custom routes skip the SDK's auth)."""
    from starlette.responses import Response

    from activitybi.capture.otlp import PATHS, OtlpApp, Receiver

    otlp = OtlpApp(Receiver(lambda: rt.writer.queue), tokens=tokens)

    async def receive(request: Any) -> Any:
        reply = await otlp.handle(request.scope, request.receive)
        headers = {k.decode(): v.decode() for k, v in reply.headers}
        return Response(reply.body, reply.status, headers, media_type=reply.content_type)

    for path in PATHS:
        server.custom_route(path, methods=["POST", "GET", "PUT"])(receive)
