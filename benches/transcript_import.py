"""Transcript import speed against a loop that only parses the same lines with orjson.

Generates Claude Code-shaped sessions (each round: a response streamed as two lines, its
tool result, the next prompt), then times, in the same run and alternating, (a) reading
every line and `orjson.loads` on it, and (b) `transcripts.Importer` into a real queue (a
fresh home each time: parse, merge replays, join tool calls, price, build and append the
facts, save offsets). The ratio is parse-only time over import time (1.0 = as fast as
parsing alone). A third run, also in turn, parses the lines and appends the importer's own
events, made beforehand (as dicts, through `append_many`), to a fresh queue: what a Python
import would cost if understanding the lines and building the facts were free (its floor).

Tool results are where a real transcript's bytes are (a file read, a command's output);
`--result-bytes` sets their size (default 4000; 300 makes every line small).

Run: python benches/transcript_import.py [--files 8] [--rounds 5000] [--repeat 3] [--result-bytes 4000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from activitybi import Queue, QueueReader
from activitybi.capture import prices, transcripts
from activitybi.config import Home


def write(projects: Path, files: int, rounds: int, result_bytes: int) -> tuple[int, int]:
    lines = size = 0
    for f in range(files):
        path = projects / "-home-ana-shop" / f"session-{f}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            for r in range(rounds):
                base = {
                    "sessionId": f"session-{f}",
                    "cwd": "/home/ana/shop",
                    "version": "2.0.30",
                    "gitBranch": "main",
                    "isSidechain": False,
                    "userType": "external",
                    "timestamp": "2026-11-02T10:00:00.000Z",
                }
                usage = {
                    "input_tokens": 12,
                    "output_tokens": 240,
                    "cache_creation_input_tokens": 1800,
                    "cache_read_input_tokens": 42000,
                    "service_tier": "standard",
                }
                blocks = [
                    {"type": "text", "text": "I'll read the file to see how login works. " * 3},
                    {
                        "type": "tool_use",
                        "id": f"toolu_{f}_{r}",
                        "name": "Read",
                        "input": {"file_path": "/a.py"},
                    },
                ]
                for block in blocks:
                    message = {
                        "id": f"msg_{f}_{r}",
                        "type": "message",
                        "role": "assistant",
                        "model": "claude-sonnet-4-5-20250929",
                        "content": [block],
                        "stop_reason": None,
                        "usage": usage,
                    }
                    out.write(
                        orjson.dumps(
                            {
                                **base,
                                "type": "assistant",
                                "uuid": f"a{r}",
                                "requestId": f"req_{f}_{r}",
                                "message": message,
                            }
                        )
                        + b"\n"
                    )
                result = {
                    "type": "tool_result",
                    "tool_use_id": f"toolu_{f}_{r}",
                    "content": "x" * result_bytes,
                }
                out.write(
                    orjson.dumps(
                        {
                            **base,
                            "type": "user",
                            "uuid": f"u{r}",
                            "message": {"role": "user", "content": [result]},
                            "toolUseResult": {"type": "text"},
                        }
                    )
                    + b"\n"
                )
                out.write(
                    orjson.dumps(
                        {
                            **base,
                            "type": "user",
                            "uuid": f"p{r}",
                            "message": {"role": "user", "content": f"now fix case {r}"},
                        }
                    )
                    + b"\n"
                )
                lines += 4
        size += path.stat().st_size
    return lines, size


def parse_only(files: list[Path]) -> float:
    start = time.perf_counter()
    n = 0
    for path in files:
        with open(path, "rb") as f:
            for raw in f:
                n += len(orjson.loads(raw))
    return time.perf_counter() - start


def import_all(files: list[Path], table: prices.PriceTable) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as home:
        queue = Queue(str(Path(home) / "queue"), max_pending=10_000_000)
        start = time.perf_counter()
        imp = transcripts.Importer(
            queue, customer="bench@example.com", prices=table, home=Home(Path(home)), settle_s=0
        )
        imp.run(files)
        took = time.perf_counter() - start
        queue.close()
    return took, imp.stats.events


def parse_and_append(files: list[Path], events: list[dict[str, Any]]) -> float:
    """The floor: parse every line, and append the import's events in its batches."""
    with tempfile.TemporaryDirectory() as home:
        queue = Queue(str(Path(home) / "queue"), max_pending=10_000_000)
        start = time.perf_counter()
        parse_only(files)
        for i in range(0, len(events), transcripts.BATCH):
            queue.append_many(events[i : i + transcripts.BATCH])
        took = time.perf_counter() - start
        queue.close()
    return took


def made_events(files: list[Path], table: prices.PriceTable) -> list[dict[str, Any]]:
    """The import's events, as dicts (read back from a queue it filled), for the floor."""
    with tempfile.TemporaryDirectory() as home:
        with Queue(str(Path(home) / "queue"), max_pending=10_000_000) as queue:
            transcripts.Importer(
                queue, customer="bench@example.com", prices=table, home=Home(Path(home)), settle_s=0
            ).run(files)
        with QueueReader(str(Path(home) / "queue")) as reader:
            return [orjson.loads(x) for x in reader.read(max_lines=10_000_000, max_bytes=1 << 40)[0]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--result-bytes", type=int, default=4000, help="Size of each tool result's text.")
    args = parser.parse_args()
    table = prices.load()
    with tempfile.TemporaryDirectory() as tmp:
        n_lines, size = write(Path(tmp), args.files, args.rounds, args.result_bytes)
        files = transcripts.transcripts(Path(tmp))
        made = made_events(files, table)
        parse, imp, floor = [], [], []
        events = 0
        for _ in range(args.repeat):
            parse.append(parse_only(files))
            took, events = import_all(files, table)
            imp.append(took)
            floor.append(parse_and_append(files, made))
    p, i, f = statistics.median(parse), statistics.median(imp), statistics.median(floor)
    print(f"{n_lines:,} lines ({size / 1e6:.1f} MB) in {args.files} files -> {events:,} events")
    print(f"tool results of {args.result_bytes} bytes; median of {args.repeat}")
    print(f"orjson parse only : {p:6.3f} s  {n_lines / p:10,.0f} lines/s")
    print(f"import            : {i:6.3f} s  {n_lines / i:10,.0f} lines/s")
    print(f"parse + append    : {f:6.3f} s  {n_lines / f:10,.0f} lines/s  (the import's floor)")
    print(f"ratio (import speed / parse-only speed): {p / i:.2f}")
    print(f"ratio (floor speed / parse-only speed): {p / f:.2f}")


if __name__ == "__main__":
    main()
