"""The MCP SDK internals activitybi.serve.sdk relies on are where it expects them.

When an SDK upgrade moves one, this fails naming each attribute that moved; the fix is a
change to python/activitybi/serve/sdk.py alone.
"""

from __future__ import annotations

import pytest
from mcp.server.streamable_http import StreamableHTTPServerTransport

from activitybi.serve import app, sdk
from activitybi.serve.runtime import Runtime


def _live_objects() -> dict[str, object]:
    rt = Runtime.open(customer="ana@example.com", source="test")
    server = app.build(rt)
    server.streamable_http_app(json_response=True)  # creates the session manager
    return {
        "MCPServer": server,
        "StreamableHTTPSessionManager": server.session_manager,
        "StreamableHTTPServerTransport": StreamableHTTPServerTransport(mcp_session_id="s", idle_timeout=1.0),
        "Tool": sdk.tools(server)[0],
    }


def test_every_sdk_internal_is_in_place() -> None:
    problems = sdk.surface_problems(_live_objects())
    assert not problems, "the MCP SDK moved what activitybi.serve.sdk uses:\n" + "\n".join(problems)


def test_a_moved_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = _live_objects()
    monkeypatch.delattr(objects["StreamableHTTPSessionManager"], "_session_owners")
    from mcp.server import runner

    monkeypatch.delattr(runner.ServerRunner, "_serialize")
    assert sdk.surface_problems(objects) == [
        "mcp.server.runner.ServerRunner._serialize is gone",
        "StreamableHTTPSessionManager._session_owners is gone",
    ]


def test_the_handshake_reads_the_sdks_versions_without_importing_it() -> None:
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

    assert sdk.handshake_versions() == (tuple(HANDSHAKE_PROTOCOL_VERSIONS), LATEST_HANDSHAKE_VERSION)
