"""One queue line to one ActivitySchema v2.0 stream row, and the schema-drift rule.

The rule (documented in the README): the spec's columns and our `_`-prefixed
implementation columns are taken as they are; a value of a near type is coerced when no
information is lost (a number where a string belongs becomes its text, a numeric string in
`revenue_impact` becomes the number) and reported as drift; any other top-level key is
moved into `feature_json` under its own name (under `feature_json._extra` when that name is
taken) and reported as drift. What cannot be coerced is rejected with a reason and goes to
quarantine; nothing is dropped silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

SPEC_COLUMNS = (
    "activity_id",
    "ts",
    "customer",
    "activity",
    "anonymous_customer_id",
    "feature_json",
    "revenue_impact",
    "link",
)
IMPLEMENTATION_COLUMNS = ("_session_id", "_source")
LOADED_COLUMNS = SPEC_COLUMNS + IMPLEMENTATION_COLUMNS
"""What a loader writes of each row (`_ingested_at` is the warehouse's own)."""
KNOWN_KEYS = frozenset(LOADED_COLUMNS)
INSIGHT_ACTIVITY = "learned_insight"
"""Insight atoms travel as stream events of this activity and are also loaded into
`insight_atoms` (atom_id = activity_id)."""
TOOL_CALL_ACTIVITY = "called_tool"
"""The server's own record of every tool call (and the proxy's of every proxied call)."""
RESERVED_ACTIVITIES = frozenset({TOOL_CALL_ACTIVITY, INSIGHT_ACTIVITY})
"""Activities only activitybi itself emits (tool calls, insights): log_event and log_events
refuse them, so a customer can never mix hand-made rows into the figures of the server's
own telemetry. A capture path that emits an activity of its own adds it here."""


class Rejected(ValueError):
    """A line that can never load; its reason goes to quarantine with it."""


@dataclass(slots=True)
class StreamRow:
    activity_id: str
    ts: dt.datetime  # UTC, naive
    activity: str
    customer: str | None = None
    anonymous_customer_id: str | None = None
    feature_json: dict[str, Any] | None = None
    revenue_impact: float | None = None
    link: str | None = None
    _session_id: str | None = None
    _source: str | None = None
    drift: list[str] = field(default_factory=list)

    def columns(self) -> dict[str, Any]:
        """The loaded columns that have a value."""
        return {c: v for c in LOADED_COLUMNS if (v := getattr(self, c)) is not None}

    def insight(self) -> dict[str, Any] | None:
        """The insight atom this row carries, if it is one."""
        if self.activity != INSIGHT_ACTIVITY or not self.feature_json:
            return None
        f = self.feature_json
        return {
            "atom_id": self.activity_id,
            "customer_id": self.customer or self.anonymous_customer_id,
            "subject": f.get("subject"),
            "metric": f.get("metric"),
            "value": f.get("value"),
            "provenance_query_hash": f.get("provenance_query_hash"),
            "ts": self.ts,
        }


def parse_ts(value: object) -> dt.datetime:
    """ISO-8601 text (any offset, or none meaning UTC) or epoch seconds, to naive UTC."""
    if type(value) is str and len(value) == 24 and value[23] == "Z":  # the queue's own form
        try:
            return dt.datetime.fromisoformat(value[:23])
        except ValueError:
            pass
    if isinstance(value, bool):
        raise Rejected("'ts' must be an ISO-8601 timestamp")
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).replace(tzinfo=None)
    if not isinstance(value, str):
        raise Rejected("'ts' must be an ISO-8601 timestamp")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Rejected(f"'ts' is not an ISO-8601 timestamp: {value[:64]!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def _text(name: str, value: object, drift: list[str]) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        drift.append(f"{name}: number coerced to string")
        return str(value)
    raise Rejected(f"'{name}' must be a string, not {type(value).__name__}")


def _revenue(value: object, drift: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise Rejected(f"'revenue_impact' must be a number, not {value[:32]!r}") from None
        drift.append("revenue_impact: numeric string coerced to number")
        return number
    raise Rejected(f"'revenue_impact' must be a number, not {type(value).__name__}")


def to_row(line: bytes) -> StreamRow:
    """Parses and normalises one queue line; raises `Rejected` with the reason."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise Rejected(f"not JSON: {e}") from None
    if not isinstance(event, dict):
        raise Rejected("not a JSON object")
    return from_event(event)


def from_event(event: Mapping[str, Any]) -> StreamRow:
    drift: list[str] = []
    activity_id, activity = event.get("activity_id"), event.get("activity")
    if not isinstance(activity_id, str) or not activity_id:
        raise Rejected("missing 'activity_id'")
    if not isinstance(activity, str) or not activity.strip():
        raise Rejected("missing 'activity'")
    if "ts" not in event:
        raise Rejected("missing 'ts'")
    features = event.get("feature_json")
    if isinstance(features, str | bytes):
        try:
            features = orjson.loads(features)
        except orjson.JSONDecodeError:
            raise Rejected("'feature_json' is a string that is not JSON") from None
        drift.append("feature_json: JSON text parsed into an object")
    if features is not None and not isinstance(features, dict):
        raise Rejected(f"'feature_json' must be an object, not {type(features).__name__}")
    extra_keys = event.keys() - KNOWN_KEYS
    if extra_keys:
        extra = {k: event[k] for k in extra_keys}
        features = dict(features or {})
        for key, value in extra.items():
            if key in features:
                features.setdefault("_extra", {})[key] = value
            else:
                features[key] = value
        drift.append("unknown keys moved into feature_json: " + ", ".join(sorted(extra)))
    return StreamRow(
        activity_id,
        parse_ts(event["ts"]),
        activity,
        _text("customer", event.get("customer"), drift),
        _text("anonymous_customer_id", event.get("anonymous_customer_id"), drift),
        features,
        _revenue(event.get("revenue_impact"), drift),
        _text("link", event.get("link"), drift),
        _text("_session_id", event.get("_session_id"), drift),
        _text("_source", event.get("_source"), drift),
        drift,
    )


# --- what a tool accepts as one step ---------------------------------------------------

ACTIVITY_NAME = r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$"
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
COST_KEYS = ("model", "input_tokens", "output_tokens", "cost_usd")
"""Where an exchange's model, token counts and cost go in feature_json (documented in the
README), so that cost can be attributed by model and session."""


def _not_reserved(activity: str) -> str:
    if activity in RESERVED_ACTIVITIES:
        raise ValueError(
            f"activity {activity!r} is reserved for what activitybi records itself "
            f"({', '.join(sorted(RESERVED_ACTIVITIES))}); log_insight records an insight"
        )
    return activity


Activity = Annotated[
    str,
    AfterValidator(_not_reserved),
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


STEP_FIELDS: dict[str, Any] = {
    "activity": Activity,
    "feature_json": Features,
    "link": Link,
    "revenue_impact": Revenue,
    "anonymous_customer_id": AnonymousId,
    "activity_id": ActivityId,
    "model": Model,
    "input_tokens": Tokens,
    "output_tokens": Tokens,
    "cost_usd": Cost,
}
"""The arguments of one step, declared once: `Step` is built from them, and so is the
signature of the log_event tool (the MCP schema the model sees)."""


class _StepMethods(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    def event(self, customer: str, session: str, source: str) -> dict[str, Any]:
        """The queue event: cost keys go into feature_json, the customer is the connection's."""
        features = dict(getattr(self, "feature_json", None) or {})
        for key in COST_KEYS:
            if (value := getattr(self, key)) is not None:
                features[key] = value
        event: dict[str, Any] = {
            "activity": getattr(self, "activity"),  # noqa: B009 (a field of the built model)
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


_STEP_DEFINITIONS: dict[str, Any] = {
    name: (kind, ... if name == "activity" else None) for name, kind in STEP_FIELDS.items()
}
if TYPE_CHECKING:  # the type checker cannot see fields built at run time
    Step = _StepMethods
else:
    Step = create_model(
        "Step",
        __base__=_StepMethods,
        __doc__="One step of a conversation, as log_event and log_events take it.",
        **_STEP_DEFINITIONS,
    )
