"""The stdio server answers `initialize` before the MCP SDK is imported.

Importing the SDK costs most of a second; a client spawning the server would wait for
it. So `activitybi serve` reads the first message itself; if it is `initialize`, it
answers exactly what the SDK would (name, version, instructions, capabilities, the
negotiated protocol version), then loads the SDK and replays the message to it, dropping
the SDK's own answer. `tests/test_server.py` checks that the two answers are identical.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson

from activitybi import __version__
from activitybi.serve import sdk

SERVER_NAME = "activitybi"

INSTRUCTIONS = """\
activitybi logs this conversation as ActivitySchema events and gives you memory across sessions.
- At the start of every conversation, call get_context: it returns what is known about this \
user (recent activity, insights learned earlier, saved preferences) as JSON.
- Call log_event for each meaningful step, named verb_noun from the user's view \
(asked_question, received_answer, ran_query, edited_file), with details in feature_json; \
pass model, input_tokens, output_tokens and cost_usd when you know them.
- Call log_insight when you learn a durable fact worth remembering (subject, metric, value); \
use subject "preferences" for the user's preferences.
- To answer questions about usage, call list_query_templates, then submit_query (it returns \
a ticket at once) and get_query_result with that ticket until it has succeeded; \
render_card draws a succeeded result as a chart the user sees.
The user's identity comes from the connection; you never pass it."""

CAPABILITIES: dict[str, Any] = {
    "prompts": {"listChanged": False},
    "resources": {"listChanged": False, "subscribe": False},
    "tools": {"listChanged": False},
}


def initialize_result(requested: object) -> dict[str, Any]:
    supported, latest = sdk.handshake_versions()
    version = requested if requested in supported else latest
    return {
        "capabilities": CAPABILITIES,
        "instructions": INSTRUCTIONS,
        "protocolVersion": version,
        "serverInfo": {"name": SERVER_NAME, "version": __version__},
    }


MAX_DEPTH = 150
"""Deeper JSON than this is answered with an error here: the SDK's stdio transport drops
a message nested past its parser's limit (about 190 levels) without any answer, and the
client would wait. (Events themselves may nest 64 levels; the queue refuses deeper ones.)"""


_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]')
"""A JSON string (escapes included) or a structural character: what `scan` steps over."""


def scan(line: str) -> tuple[int, dict[str, Any]]:
    """(the nesting depth of the JSON text `line`, the scalar members of its top-level
    object), in one pass without recursion and without parsing what is nested: an id can
    be read from a message far too deep to parse."""
    depth = deepest = 0
    top: dict[str, Any] = {}
    key: str | None = None
    value_at = -1  # where a top-level member's value starts, while it is scalar so far
    last_string: str | None = None
    for token in _TOKENS.finditer(line):
        char = token.group()
        if char[0] == '"':
            last_string = char
            continue
        if char in "{[":
            depth += 1
            deepest = max(deepest, depth)
            if depth == 2:
                value_at = -1  # a nested value: not a scalar member
        elif char in "}]":
            if depth == 1 and value_at >= 0 and key is not None:
                _member(top, key, line[value_at : token.start()])
            depth -= 1
        elif depth == 1 and char == ":":
            key, value_at = last_string, token.end()
        elif depth == 1 and char == ",":
            if value_at >= 0 and key is not None:
                _member(top, key, line[value_at : token.start()])
            key, value_at = None, -1
    return deepest, top


def _member(top: dict[str, Any], key: str, value: str) -> None:
    with contextlib.suppress(orjson.JSONDecodeError):  # not a JSON scalar: not a member to read
        top[orjson.loads(key)] = orjson.loads(value)


class ReplayReader:
    """stdin for the SDK: the first message again, then the real stream, minus requests
    too deeply nested to parse, which `refuse` answers."""

    def __init__(self, first: str, rest: BinaryIO, refuse: Callable[[dict[str, Any], str], None]) -> None:
        self._first: str | None = first
        self._rest = io.TextIOWrapper(rest, encoding="utf-8", errors="replace")
        self._refuse = refuse

    def readline(self, size: int | None = -1) -> str:
        if self._first is not None:
            line, self._first = self._first, None
            return line
        while True:
            line = self._rest.readline(-1 if size is None else size)
            if line.count("{") + line.count("[") <= MAX_DEPTH:
                return line  # cannot be too deep: the common case costs two counts
            depth, top = scan(line)
            if depth <= MAX_DEPTH + 2:
                return line
            self._refuse(top, f"the request is nested deeper than {MAX_DEPTH} levels")


class AnswerDropper:
    """stdout for the SDK: drops its answer to the replayed `initialize`, hands it to
    `check`, and passes everything else through."""

    def __init__(
        self, out: BinaryIO, request_id: object, check: Callable[[dict[str, Any]], None] | None
    ) -> None:
        self._out = out
        self._id = request_id
        self._check: Callable[[dict[str, Any]], None] | None = check
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            return self._write(s)

    def refuse(self, request: dict[str, Any], reason: str) -> None:
        """Answers a request the SDK will never see: a tool call gets a tool error, as any
        bad argument does; another request an invalid-params error."""
        if "id" not in request:
            return  # a notification: nothing to answer
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": request["id"]}
        if request.get("method") == "tools/call":
            answer["result"] = {"content": [{"type": "text", "text": reason}], "isError": True}
        else:
            answer["error"] = {"code": -32602, "message": reason}
        self.write(orjson.dumps(answer).decode() + "\n")
        self.flush()

    def _write(self, s: str) -> int:
        if self._check is not None:
            message = orjson.loads(s)
            if message.get("id") == self._id:
                check, self._check = self._check, None
                check(message)
                return len(s)
        self._out.write(s.encode())
        return len(s)

    def flush(self) -> None:
        self._out.flush()


class Handshake:
    """Claims the process's stdin/stdout (stray prints go to stderr), reads the first
    message and answers it when it is `initialize`."""

    def __init__(self) -> None:
        self.wire_in = os.fdopen(os.dup(0), "rb", buffering=0)
        self.wire_out = os.fdopen(os.dup(1), "wb", buffering=0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)
        self.first = self.wire_in.readline().decode("utf-8", "replace")
        self.request_id: object = None
        self.answer: dict[str, Any] | None = None
        self.mismatch: str | None = None
        try:
            message = orjson.loads(self.first) if self.first.strip() else None
        except orjson.JSONDecodeError:
            message = None
        if isinstance(message, dict) and message.get("method") == "initialize" and "id" in message:
            params = message.get("params") or {}
            self.request_id = message["id"]
            self.answer = {
                "jsonrpc": "2.0",
                "id": self.request_id,
                "result": initialize_result(params.get("protocolVersion")),
            }
            self.wire_out.write(orjson.dumps(self.answer) + b"\n")

    def _check(self, sdk_answer: dict[str, Any]) -> None:
        if self.answer is not None and sdk_answer != self.answer:
            self.mismatch = orjson.dumps(sdk_answer).decode()
            print(
                f"activitybi: fast initialize answer differs from the SDK's: {self.mismatch}",
                file=sys.stderr,
            )

    def streams(self) -> tuple[ReplayReader, AnswerDropper]:
        """(stdin, stdout) text files for the SDK's `stdio_server`."""
        check = None if self.answer is None else self._check
        out = AnswerDropper(self.wire_out, self.request_id, check)
        return ReplayReader(self.first, self.wire_in, out.refuse), out
