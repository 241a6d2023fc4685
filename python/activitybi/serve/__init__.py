"""The MCP server process: tools, their runtime, the early handshake, the fast HTTP front, rate limits."""
