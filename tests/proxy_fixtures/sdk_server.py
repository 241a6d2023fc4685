"""A tiny stdio MCP server on the mcp SDK, for tests/test_proxy.py and benches/proxy_latency.py."""

import asyncio
import os
import warnings

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

warnings.simplefilter("ignore")  # roots is deprecated in the newest protocol; still a fine example

server = MCPServer("proxy-fixture")


@server.tool(structured_output=False)
async def echo(text: str) -> str:
    """Returns its argument."""
    return text


@server.tool(structured_output=False)
async def fail(reason: str) -> str:
    """Always fails with ``reason``."""
    raise ToolError(reason)


@server.tool(structured_output=False)
async def slow(ms: int) -> str:
    """Answers after ``ms`` milliseconds."""
    await asyncio.sleep(ms / 1000)
    return f"slept {ms}"


@server.tool(structured_output=False)
async def roots(ctx: Context) -> str:
    """Asks the client for its roots (a server-to-client request) and lists them."""
    listed = await ctx.session.list_roots()
    return " ".join(str(r.uri) for r in listed.roots)


@server.tool(structured_output=False)
async def crash(code: int) -> str:
    """Exits mid-call, as a crashing server does."""
    os._exit(code)


if __name__ == "__main__":
    server.run()
