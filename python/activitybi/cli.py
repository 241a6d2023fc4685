"""The ``activitybi`` command."""

from __future__ import annotations

import time

import click

from activitybi import __version__, config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="activitybi")
def main() -> None:
    """Log every MCP interaction as ActivitySchema v2.0 events, durably."""


@main.command()
@click.option("--events", default=100_000, show_default=True, help="Events to append.")
def demo(events: int) -> None:
    """Append events to the queue under $ACTIVITYBI_HOME and show what happened."""
    from rich.console import Console
    from rich.table import Table

    from activitybi import Queue, QueueReader

    console = Console()
    qdir = config.queue_dir()
    batch = [
        {"activity": "called_tool", "customer": "demo@example.com", "feature_json": {"tool": "demo"}}
        for _ in range(1000)
    ]
    with Queue(str(qdir), max_pending=max(100_000, events * 2)) as q:
        start = time.perf_counter()
        for _ in range(events // 1000):
            q.append_many(batch)
        q.append({"activity": "finished_demo", "customer": "demo@example.com"}, durable=True)
        elapsed = time.perf_counter() - start
        stats = q.stats()
    with QueueReader(str(qdir)) as reader:
        lines, _ = reader.read(max_lines=1)
    table = Table(title=f"activitybi {__version__}: queue demo")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("queue directory", str(qdir))
    table.add_row("events appended", f"{stats['appended']:,}")
    table.add_row("rate (events/s)", f"{stats['appended'] / elapsed:,.0f}")
    table.add_row("pending (not yet uploaded)", f"{stats['pending']:,}")
    table.add_row("segments sealed", str(stats["rotations"]))
    table.add_row("fsyncs", str(stats["fsyncs"]))
    console.print(table)
    if lines:
        console.print("first pending line:", lines[0].decode())
