"""Real MCP clients (the SDK's own) driving real `activitybi serve` processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import orjson
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

EXE = shutil.which("activitybi") or "activitybi"


def server_env(home: Path, **extra: str) -> dict[str, str]:
    """A server's whole environment; PYTHONPATH passes through, so that servers run the
    source tree under test (a worktree) rather than the installed package."""
    env = {"ACTIVITYBI_HOME": str(home), "PATH": os.environ["PATH"]}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(extra)
    return env


@asynccontextmanager
async def stdio_session(
    home: Path, customer: str, errlog: Any = None, **env: str
) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=EXE, args=["serve"], env=server_env(home, ACTIVITYBI_CUSTOMER=customer, **env)
    )
    kwargs = {"errlog": errlog} if errlog is not None else {}
    async with stdio_client(params, **kwargs) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        yield s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpServer:
    """`activitybi serve --http` in its own process."""

    def __init__(
        self, home: Path, tokens: dict[str, str], *extra_args: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        token_file = home.parent / f"tokens-{self.port}.json"
        token_file.write_bytes(orjson.dumps(tokens))
        home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                EXE,
                "serve",
                "--http",
                "--port",
                str(self.port),
                "--tokens",
                str(token_file),
                *extra_args,
            ],
            env=server_env(home, **(env or {})),
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError as e:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        self.proc.stderr.read().decode() if self.proc.stderr else "died"
                    ) from e
                time.sleep(0.05)
        raise RuntimeError("the HTTP server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


@asynccontextmanager
async def http_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60)
        ) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as s,
    ):
        await s.initialize()
        yield s


def text(result: Any) -> str:
    return str(result.content[0].text)
