"""The MCP clients' own config files, which activitybi sets up (Claude Desktop)."""
