"""A hand-written stdio 'MCP server' that misbehaves on purpose, byte by byte.

It answers the lines it reads in order: garbage and partial lines on stdout, a request to
the client that reuses the id of the client's own pending request, JSON-RPC errors,
isError results, and a crash mid-call.
"""

import json
import os
import sys
import time

out = sys.stdout.buffer


def send(raw: bytes) -> None:
    out.write(raw)
    out.flush()


def reply(rid: object, result: object) -> None:
    send(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode() + b"\n")


for line in sys.stdin.buffer:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    rid, method = msg.get("id"), msg.get("method")
    if method != "tools/call":
        if rid is not None and method is not None:
            reply(rid, {})
        continue
    name = msg["params"]["name"]
    args = msg["params"].get("arguments") or {}
    if name == "echo":
        reply(rid, {"content": [{"type": "text", "text": args.get("text", "")}], "isError": False})
    elif name == "garbage":
        send(b"garbage \xff\xfe not json\n")
        whole = json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"content": []}}).encode()
        send(whole[:10])
        time.sleep(0.05)
        send(whole[10:] + b"\n{broken json\n\n")
    elif name == "ask":  # a server-to-client request with the same id as the client's call
        send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "roots/list"}).encode() + b"\n")
        answer = json.loads(sys.stdin.buffer.readline())
        reply(rid, {"content": [{"type": "text", "text": json.dumps(answer["result"])}]})
    elif name == "error":
        error = {"code": -32602, "message": "bad args"}
        send(json.dumps({"jsonrpc": "2.0", "id": rid, "error": error}).encode() + b"\n")
    elif name == "tool_error":
        reply(rid, {"content": [{"type": "text", "text": "disk on fire"}], "isError": True})
    elif name == "hang":
        pass  # never answers (the client gives up and cancels)
    elif name == "crash":
        os._exit(int(args.get("code", 7)))
