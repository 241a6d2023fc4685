"""Ways events arrive besides the MCP tools: proxy, hooks, OpenTelemetry, transcripts."""
