"""The baseline for benches/mcp_latency.py: the same mcp SDK, one do-nothing tool."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("noop")


@server.tool(structured_output=False)
async def noop() -> str:
    """Does nothing."""
    return ""


if __name__ == "__main__":
    server.run()
