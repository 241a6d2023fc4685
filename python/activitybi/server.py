"""The MCP server: four tools and a resource over the mcp SDK, for one customer per
connection (the stdio configuration, or the bearer token over HTTP).

Tools answer from memory and the local queue only: no network on any tool's path. Every
tool call is itself logged as a `called_tool` activity (tool, latency, outcome, session).
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO, cast

import orjson
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, ConfigDict, Field

from activitybi import Queue, QueueFull, __version__, config, ulid
from activitybi.context import ContextService
from activitybi.handshake import INSTRUCTIONS, SERVER_NAME, Handshake
from activitybi.memory import MemoryJournal
from activitybi.metrics import ServerMetrics
from activitybi.ratelimit import RateLimited, RateLimits
from activitybi.safesql import templates
from activitybi.tickets import DEFAULT_BYTE_CAP, FINAL, Ticket, TicketStore

log = logging.getLogger(__name__)

ACTIVITY_NAME = r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$"
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
COST_KEYS = ("model", "input_tokens", "output_tokens", "cost_usd")
"""Where an exchange's model, token counts and cost go in feature_json (documented in the
README), so that cost can be attributed by model and session."""


Activity = Annotated[
    str,
    Field(
        pattern=ACTIVITY_NAME,
        max_length=100,
        description=(
            "What happened, verb_noun from the user's view: asked_question, received_answer, ran_query, "
            "edited_file."
        ),
    ),
]
Features = Annotated[dict[str, Any] | None, Field(description="Details of the step as a JSON object.")]
Link = Annotated[str | None, Field(max_length=2048, description="A URL the step refers to.")]
Revenue = Annotated[
    float | None, Field(allow_inf_nan=False, description=("Money this step made or cost, if known."))
]
AnonymousId = Annotated[
    str | None, Field(max_length=256, description=("An identifier for an unidentified visitor."))
]
ActivityId = Annotated[
    str | None,
    Field(pattern=ID_PATTERN, description=("Give the same id when retrying, so the event is stored once.")),
]
Model = Annotated[str | None, Field(max_length=200, description="The model of this exchange.")]
Tokens = Annotated[int | None, Field(ge=0, description="Tokens of this exchange.")]
Cost = Annotated[
    float | None, Field(ge=0, allow_inf_nan=False, description=("Cost of this exchange in US dollars."))
]


class Step(BaseModel):
    """One step of a conversation, as log_event and log_events take it."""

    model_config = ConfigDict(extra="forbid")

    activity: Activity
    feature_json: Features = None
    link: Link = None
    revenue_impact: Revenue = None
    anonymous_customer_id: AnonymousId = None
    activity_id: ActivityId = None
    model: Model = None
    input_tokens: Tokens = None
    output_tokens: Tokens = None
    cost_usd: Cost = None

    def event(self, customer: str, session: str, source: str) -> dict[str, Any]:
        """The queue event: cost keys go into feature_json, the customer is the connection's."""
        features = dict(self.feature_json or {})
        for key in COST_KEYS:
            if (value := getattr(self, key)) is not None:
                features[key] = value
        event: dict[str, Any] = {
            "activity": self.activity,
            "customer": customer,
            "_session_id": session,
            "_source": source,
        }
        if features:
            event["feature_json"] = features
        for key in ("link", "revenue_impact", "anonymous_customer_id", "activity_id"):
            if (value := getattr(self, key)) is not None:
                event[key] = value
        return event


@dataclass
class Runtime:
    """What the tools act on, for the life of the process."""

    queue_dir: Path
    context: ContextService
    journal: MemoryJournal
    session_id: str
    stdio_customer: str | None
    source: str
    tickets: TicketStore
    limits: RateLimits
    metrics: ServerMetrics = field(init=False)
    _queue: Queue | None = None

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.queue_stats, self.context.tier_stats)

    @property
    def queue(self) -> Queue:
        """The queue, opened on first use and again after a failure, so that a queue that
        cannot open (a full disk at start) gives the tools a clear error, not a dead server."""
        if self._queue is None:
            self._queue = Queue(str(self.queue_dir))
        return self._queue

    def queue_stats(self) -> dict[str, Any]:
        try:
            return dict(self.queue.stats())
        except OSError:
            keys = ("appended", "bytes", "rotations", "fsyncs", "rejected", "pending")
            return dict.fromkeys(keys, 0)

    @classmethod
    def open(cls, *, customer: str | None, source: str) -> Runtime:
        from activitybi.redis_tier import RedisTier

        home = config.home()
        journal = MemoryJournal(home / "memory")
        redis = RedisTier.from_env()
        if redis is not None:
            redis.warm()
        rt = cls(
            queue_dir=config.queue_dir(),
            context=ContextService(journal, home / "context", redis),
            journal=journal,
            session_id=ulid(),
            stdio_customer=customer,
            source=source,
            tickets=TicketStore(home / "tickets"),
            limits=RateLimits(),
        )
        try:
            _ = rt.queue  # now, when it can
        except OSError as e:
            log.warning("the queue cannot be opened yet (%s); tools will say so and retry", e)
        return rt

    def customer(self) -> str:
        """The connection's customer: the token's over HTTP, the configured one on stdio."""
        if self.stdio_customer is not None:
            return self.stdio_customer
        from mcp.server.auth.middleware.auth_context import get_access_token

        token = get_access_token()
        if token is None:
            raise ToolError("not authenticated")
        return token.client_id

    def limit(self, action: str, customer: str, n: int = 1) -> None:
        try:
            self.limits.check(action, customer, n)
        except RateLimited as e:
            raise ToolError(str(e)) from None

    def append(self, event: dict[str, Any]) -> str:
        try:
            return self.queue.append(event)
        except QueueFull as e:
            raise ToolError(f"the event queue is full; retry shortly ({e})") from None
        except (ValueError, TypeError) as e:
            raise ToolError(str(e)) from None
        except OSError as e:
            raise ToolError(f"the event could not be written: {e.strerror or e}") from None

    def warm(self, since_seconds: float = 86_400) -> int:
        """Builds the contexts of the customers seen lately, so their first call hits."""
        customers = self.journal.recent_customers(since_seconds)
        if self.stdio_customer is not None:
            customers = [c for c in customers if c == self.stdio_customer]
        return self.context.warm(customers)

    def record_tool_call(
        self,
        customer: str,
        tool: str,
        latency_ms: float,
        outcome: str,
        error: str | None,
        session: str | None,
    ) -> None:
        """Logs a tool call as a `called_tool` activity (never failing the call itself)."""
        self.metrics.observe(tool, latency_ms, None if outcome == "ok" else (error or outcome))
        features: dict[str, Any] = {
            "tool": tool,
            "latency_ms": round(latency_ms, 3),
            "outcome": outcome,
        }
        if error:
            features["error"] = error
        try:
            self.queue.append(
                {
                    "activity": "called_tool",
                    "customer": customer,
                    "feature_json": features,
                    "_session_id": session or self.session_id,
                    "_source": self.source,
                }
            )
        except Exception as e:
            log.warning("could not log a %s call: %s", tool, e)

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()


def stdio_customer() -> str:
    """`ACTIVITYBI_CUSTOMER`, else this machine's user name."""
    return os.environ.get("ACTIVITYBI_CUSTOMER") or getpass.getuser()


class ToolCallLogger:
    """Middleware that logs every tools/call, rejected arguments included."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if ctx.method != "tools/call":
            return await call_next(ctx)
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
        self.rt.record_tool_call(customer, str(params.get("name")), latency_ms, outcome, error, session)


def _forbid_extra_arguments(server: MCPServer) -> None:
    """An unknown argument is an error (the SDK ignores it by default)."""
    for tool in server._tool_manager.list_tools():
        loose = tool.fn_metadata.arg_model

        class Strict(loose):  # type: ignore[valid-type, misc]
            model_config = ConfigDict(extra="forbid")

        Strict.__name__ = loose.__name__
        tool.fn_metadata.arg_model = Strict
        tool.parameters = Strict.model_json_schema(by_alias=True)


def build(rt: Runtime, **server_options: Any) -> MCPServer:
    mcp = MCPServer(
        SERVER_NAME,
        instructions=INSTRUCTIONS,
        version=__version__,
        middleware=[ToolCallLogger(rt)],
        **server_options,
    )

    @mcp.tool(structured_output=False)
    async def log_event(
        activity: Activity,
        feature_json: Features = None,
        link: Link = None,
        revenue_impact: Revenue = None,
        anonymous_customer_id: AnonymousId = None,
        activity_id: ActivityId = None,
        model: Model = None,
        input_tokens: Tokens = None,
        output_tokens: Tokens = None,
        cost_usd: Cost = None,
    ) -> str:
        """Record one step of the conversation; returns its activity_id at once."""
        step = Step(
            activity=activity,
            feature_json=feature_json,
            link=link,
            revenue_impact=revenue_impact,
            anonymous_customer_id=anonymous_customer_id,
            activity_id=activity_id,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
        )
        customer = rt.customer()
        rt.limit("log_event", customer)
        return rt.append(step.event(customer, rt.session_id, rt.source))

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
        lines = [e.event(customer, rt.session_id, rt.source) for e in events]
        try:
            ids = rt.queue.append_many(lines)
        except QueueFull as e:
            raise ToolError(f"the event queue is full; retry shortly ({e})") from None
        except (ValueError, TypeError) as e:
            raise ToolError(str(e)) from None
        except OSError as e:
            raise ToolError(f"the events could not be written: {e.strerror or e}") from None
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
        if isinstance(value, str) and len(value) > 4096:
            raise ToolError("value is over 4096 characters")
        customer = rt.customer()
        features = {"subject": subject, "metric": metric, "value": value}
        if provenance_query_hash:
            features["provenance_query_hash"] = provenance_query_hash
        atom_id = ulid()
        ts = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
        rt.append(
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
        return rt.context.get(rt.customer(), max_bytes).decode()

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
        except templates.TemplateError as e:
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
        return rt.context.get(rt.customer()).decode()

    from mcp.server.mcpserver import Image

    from activitybi import cards
    from activitybi.artifacts import ArtifactStore

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
        import anyio

        customer = rt.customer()
        try:
            card = await anyio.to_thread.run_sync(
                lambda: cards.card_for_ticket(rt.tickets, ticket, customer, kind=kind, store=artifacts)
            )
        except cards.CardError as e:
            raise ToolError(str(e)) from None
        return [orjson.dumps(card.info).decode(), Image(data=card.png, format="png")]

    _forbid_extra_arguments(mcp)
    return mcp


def serve_stdio(rt: Runtime, handshake: Handshake) -> None:
    import anyio
    from mcp.server.stdio import stdio_server

    server = build(rt)
    stdin, stdout = handshake.streams()

    async def main() -> None:
        files = anyio.wrap_file(cast(TextIO, stdin)), anyio.wrap_file(cast(TextIO, stdout))
        async with stdio_server(*files) as (r, w):
            low = server._lowlevel_server
            await low.run(r, w, low.create_initialization_options())

    anyio.run(main)


def load_tokens(path: Path | None) -> dict[str, str]:
    """Bearer token → customer, from a JSON object file or `ACTIVITYBI_TOKENS`."""
    raw = path.read_bytes() if path else os.environ.get("ACTIVITYBI_TOKENS", "").encode()
    if not raw:
        raise SystemExit(
            'HTTP needs tokens: --tokens FILE or ACTIVITYBI_TOKENS, a JSON object {"<token>": "<customer>"}'
        )
    tokens = orjson.loads(raw)
    if not isinstance(tokens, dict) or not all(isinstance(v, str) and v for v in tokens.values()):
        raise SystemExit("tokens must be a JSON object of token to customer")
    return tokens


def http_app(rt: Runtime, tokens: dict[str, str], *, stateless: bool = False) -> Any:
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings
    from pydantic import AnyHttpUrl

    class TokenCustomers:
        """Each bearer token names one customer; any other token is refused (401)."""

        async def verify_token(self, token: str) -> AccessToken | None:
            customer = tokens.get(token)
            if customer is None:
                return None
            return AccessToken(token=token, client_id=customer, scopes=[], subject=customer)

    server = build(
        rt,
        token_verifier=TokenCustomers(),
        auth=AuthSettings(issuer_url=AnyHttpUrl("https://auth.invalid"), resource_server_url=None),
    )

    @server.custom_route("/metrics", methods=["GET"])  # type: ignore[untyped-decorator]
    async def metrics(request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = server.streamable_http_app(stateless_http=stateless, json_response=True)
    if os.environ.get("ACTIVITYBI_FAST_HTTP", "1") == "0":  # the SDK's transport alone
        return app
    from activitybi.fast_http import FastFront

    return FastFront(app, server, rt, tokens)
