"""Error tracking: with `SENTRY_DSN` set, unhandled errors of the server, the warehouse
owner and the CLI go to Sentry, with the release, and never with customer data.

The privacy policy applies to error reports as to everything else: an exception's text or
a log message may quote an event, a request body is one, a local variable may hold one.
So `scrub` keeps an allowlist of what an event may carry (exception types and stack
frames without their variables, the log message's template without its arguments, the
request's method and path, breadcrumbs without message or data) and drops everything else.
`sentry-sdk` is the `sentry` extra, imported only when a DSN is set.
"""

from __future__ import annotations

from typing import Any

from activitybi import __version__, config
from activitybi.extras import require

REMOVED = "[removed: may hold customer data]"
_EVENT_KEYS = frozenset(
    {
        "event_id",
        "timestamp",
        "platform",
        "level",
        "logger",
        "release",
        "environment",
        "server_name",
        "sdk",
        "tags",
        "fingerprint",
        "transaction",
    }
)
_FRAME_KEYS = frozenset(
    {"filename", "abs_path", "module", "function", "lineno", "colno", "in_app", "context_line"}
)


def setup(process: str) -> bool:
    """Starts reporting for this process ("server", "owner" or "cli") when `SENTRY_DSN`
    is set; raises `MissingExtra` (one line) without the `sentry` extra."""
    settings = config.settings()
    if not settings.sentry_dsn:
        return False
    sentry_sdk = require("sentry_sdk", "sentry", "error tracking (SENTRY_DSN)")
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        release=f"activitybi@{__version__}",
        environment=settings.sentry_environment,
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrub,
        before_breadcrumb=_scrub_breadcrumb,
    )
    sentry_sdk.set_tag("process", process)
    return True


def _frames(stacktrace: Any) -> dict[str, Any]:
    frames = (stacktrace or {}).get("frames") or []
    return {"frames": [{k: v for k, v in f.items() if k in _FRAME_KEYS} for f in frames]}


def _exception(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: value[k] for k in ("type", "module", "mechanism") if k in value}
    if "value" in value:
        out["value"] = REMOVED
    if "stacktrace" in value:
        out["stacktrace"] = _frames(value["stacktrace"])
    return out


def _scrub_breadcrumb(crumb: dict[str, Any], hint: Any = None) -> dict[str, Any]:
    kept: dict[str, Any] = {k: crumb[k] for k in ("timestamp", "type", "category", "level") if k in crumb}
    return kept


def scrub(event: dict[str, Any], hint: Any = None) -> dict[str, Any]:
    """The event as it may leave the machine: see the module's docstring."""
    out = {k: v for k, v in event.items() if k in _EVENT_KEYS}
    if "exception" in event:
        out["exception"] = {"values": [_exception(v) for v in event["exception"].get("values") or []]}
    logentry = event.get("logentry") or {}
    if "message" in logentry:  # the template ("%s failed"), never its arguments
        out["logentry"] = {"message": str(logentry["message"])}
    request = event.get("request") or {}
    if request:
        url = str(request.get("url") or "").split("?", 1)[0]
        out["request"] = {"method": request.get("method"), "url": url}
    contexts = event.get("contexts") or {}
    out["contexts"] = {k: contexts[k] for k in ("runtime", "os", "trace") if k in contexts}
    crumbs = (event.get("breadcrumbs") or {}).get("values") or []
    out["breadcrumbs"] = {"values": [_scrub_breadcrumb(c) for c in crumbs]}
    return out
