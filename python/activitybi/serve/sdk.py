"""Every use of the MCP SDK below its public surface, in one place.

The server reads a few SDK internals: the streamable-HTTP session manager's session table
(the fast HTTP front serves a live session's `tools/call` itself), a transport's idle timer
(held while a call runs, as the SDK's transport holds it), the tool manager's tools (to make
unknown arguments an error), the runner's per-version result sieve, the OpenTelemetry span
helper, and the protocol versions file (read without importing the slow SDK). `mcp` is
pinned to the minor version these were tested against; `surface_problems()` names each
one that moved, and tests/test_sdk_surface.py fails with that list, so an SDK upgrade is a
change to this file alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

TESTED_MINOR = "2.3"
"""The `mcp` minor version this module was written against (pyproject pins it)."""

_CLASS_ATTRIBUTES = (
    ("mcp.server.mcpserver.server", "MCPServer", "session_manager"),
    ("mcp.server.runner", "ServerRunner", "_serialize"),
    ("mcp.server.mcpserver.tools.base", "Tool", "run"),
)
_INSTANCE_ATTRIBUTES = {
    "MCPServer": ("_tool_manager", "_lowlevel_server", "_extensions"),
    "StreamableHTTPSessionManager": ("_server_instances", "_session_owners"),
    "StreamableHTTPServerTransport": ("_requests_in_flight", "_idle_timeout", "idle_scope", "is_terminated"),
    "Tool": ("fn_metadata", "parameters", "is_async", "context_kwarg", "resolved_params"),
}
_MODULE_NAMES = (
    ("mcp.shared._otel", "otel_span"),
    ("mcp.server._otel", "OpenTelemetryMiddleware"),
    ("mcp.server.request_state", "RequestStateBoundary"),
    ("mcp.shared.jsonrpc_dispatcher", "handler_exception_to_error_data"),
    ("mcp_types.version", "HANDSHAKE_PROTOCOL_VERSIONS"),
    ("mcp_types.version", "LATEST_HANDSHAKE_VERSION"),
)


# --- the MCPServer ------------------------------------------------------------------------


def tools(server: Any) -> list[Any]:
    """The server's registered tools (the SDK's `Tool` objects)."""
    return list(server._tool_manager.list_tools())


def lowlevel(server: Any) -> Any:
    """The low-level `Server` under an MCPServer (its middleware, `run`, init options)."""
    return server._lowlevel_server


def has_extensions(server: Any) -> bool:
    return bool(getattr(server, "_extensions", None))


def set_tool_argument_model(tool: Any, model: type[Any]) -> None:
    """Makes ``model`` the tool's argument model, and its schema the advertised one."""
    tool.fn_metadata.arg_model = model
    tool.parameters = model.model_json_schema(by_alias=True)


def tool_argument_model(tool: Any) -> type[Any]:
    return cast(type[Any], tool.fn_metadata.arg_model)


def result_serializer(server: Any) -> Any:
    """``serialize(method, version, result) -> wire dict``: the SDK runner's per-version sieve."""
    from mcp.server.runner import ServerRunner

    return ServerRunner(server._lowlevel_server, cast(Any, None), None)._serialize


def otel_span(**kwargs: Any) -> Any:
    """The span the SDK's OpenTelemetryMiddleware opens for a request."""
    from mcp.shared._otel import otel_span as span

    return span(**kwargs)


def has_otel_middleware(server: Any) -> bool:
    from mcp.server._otel import OpenTelemetryMiddleware

    return any(isinstance(m, OpenTelemetryMiddleware) for m in server._lowlevel_server.middleware)


def exception_to_error(exc: BaseException) -> Any:
    """The JSON-RPC `ErrorData` the SDK's dispatcher answers for ``exc`` (None: unknown)."""
    from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data

    return handler_exception_to_error_data(exc)


# --- streamable-HTTP sessions -------------------------------------------------------------


def live_sessions(manager: Any) -> Mapping[str, Any]:
    """Session id → the SDK's transport, for every session the manager holds."""
    return cast(Mapping[str, Any], manager._server_instances)


def session_owner(manager: Any, session_id: str) -> Any:
    return manager._session_owners.get(session_id)


def sessions_owned_by(manager: Any, owner: Any) -> int:
    """How many live sessions ``owner`` (a session owner as `session_owner` returns it) holds."""
    live = manager._server_instances
    return sum(1 for sid, o in list(manager._session_owners.items()) if o == owner and sid in live)


def hold_session(transport: Any) -> bool:
    """Counts a request in flight on the session, so its idle timer does not fire; returns
    whether there was a timer to hold (then `release_session` must follow)."""
    if transport is None or transport.idle_scope is None or transport._idle_timeout is None:
        return False
    transport._requests_in_flight += 1
    transport.idle_scope.deadline = math.inf
    return True


def release_session(transport: Any) -> None:
    import anyio  # not at module level: the stdio handshake imports this module before anyio

    transport._requests_in_flight -= 1
    if not transport._requests_in_flight:
        transport.idle_scope.deadline = anyio.current_time() + transport._idle_timeout


# --- protocol versions, without importing the SDK -----------------------------------------


def handshake_versions() -> tuple[tuple[str, ...], str]:
    """(the handshake protocol versions, the latest), read from `mcp_types/version.py`'s
    source: importing the package costs most of a second at start-up."""
    spec = importlib.util.find_spec("mcp_types")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the mcp-types package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return tuple(namespace["HANDSHAKE_PROTOCOL_VERSIONS"]), namespace["LATEST_HANDSHAKE_VERSION"]


# --- the check ----------------------------------------------------------------------------


def surface_problems(instances: Mapping[str, Any] = {}) -> list[str]:
    """What this module relies on that the installed SDK no longer has, one line each
    (empty when all is in place). ``instances`` maps a class name of `_INSTANCE_ATTRIBUTES`
    to a live object of it, whose instance attributes are then checked too."""
    from importlib.metadata import version

    problems = []
    installed = version("mcp")
    if not installed.startswith(TESTED_MINOR + "."):
        problems.append(f"mcp {installed} is installed; activitybi.serve.sdk was tested on {TESTED_MINOR}.x")
    for module, name in _MODULE_NAMES:
        try:
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            problems.append(f"{module}.{name} is gone")
    for module, cls, attribute in _CLASS_ATTRIBUTES:
        try:
            if not hasattr(getattr(importlib.import_module(module), cls), attribute):
                problems.append(f"{module}.{cls}.{attribute} is gone")
        except (ImportError, AttributeError):
            problems.append(f"{module}.{cls} is gone")
    for cls, obj in instances.items():
        for attribute in _INSTANCE_ATTRIBUTES[cls]:
            if not hasattr(obj, attribute):
                problems.append(f"{cls}.{attribute} is gone")
    return problems
