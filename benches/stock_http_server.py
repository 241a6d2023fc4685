"""The baseline for benches/http_cost.py: the stock mcp SDK over streamable HTTP, one
do-nothing tool, nothing of ours in the way.

    python benches/stock_http_server.py --port 8800 [--stateless] [--sse] [--auth TOKEN]
        [--http h11|httptools] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import logging


def build(auth_token: str | None):  # type: ignore[no-untyped-def]
    from mcp.server.mcpserver import MCPServer

    options = {}
    if auth_token is not None:
        from mcp.server.auth.provider import AccessToken
        from mcp.server.auth.settings import AuthSettings

        class OneToken:
            async def verify_token(self, token: str) -> AccessToken | None:
                if token != auth_token:
                    return None
                return AccessToken(token=token, client_id="bench", scopes=[], subject="bench")

        options = {
            "token_verifier": OneToken(),
            "auth": AuthSettings(issuer_url="https://auth.invalid", resource_server_url=None),
        }
    server = MCPServer("noop", log_level="WARNING", **options)

    @server.tool(structured_output=False)
    async def noop() -> str:
        """Does nothing."""
        return ""

    return server


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stateless", action="store_true")
    p.add_argument("--sse", action="store_true", help="the SDK default (SSE answers), not json_response")
    p.add_argument("--auth", metavar="TOKEN")
    p.add_argument("--http", default="auto")
    p.add_argument("--loop", default="auto")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import uvicorn

    app = build(a.auth).streamable_http_app(stateless_http=a.stateless, json_response=not a.sse)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", http=a.http, loop=a.loop)


if __name__ == "__main__":
    main()
