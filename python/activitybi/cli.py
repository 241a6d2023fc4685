"""The ``activitybi`` command."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click

from activitybi import __version__, config


class _Commands(click.Group):
    """Every command: a feature used without its extra ends in one line naming the extra."""

    def invoke(self, ctx: click.Context) -> object:
        from activitybi.extras import MissingExtra

        try:
            return super().invoke(ctx)
        except MissingExtra as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="activitybi")
def main() -> None:
    """Log every MCP interaction as ActivitySchema v2.0 events, durably."""


@main.command()
@click.option("--http", is_flag=True, help="Serve streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option(
    "--tokens",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='HTTP: a JSON file {"<bearer token>": "<customer>"} (or ACTIVITYBI_TOKENS).',
)
@click.option("--stateless", is_flag=True, help="HTTP: no sessions (any request may go anywhere).")
@click.option("--customer", help="stdio: who this is (default ACTIVITYBI_CUSTOMER, else the user).")
@click.option("--metrics-port", type=int, help="stdio: serve Prometheus metrics on this port.")
def serve(
    http: bool,
    host: str,
    port: int,
    tokens: Path | None,
    stateless: bool,
    customer: str | None,
    metrics_port: int | None,
) -> None:
    """Run the MCP server (stdio for Claude Desktop, or --http)."""
    handshake = None
    if not http:  # answer `initialize` before the SDK is even imported
        from activitybi.serve.handshake import Handshake

        handshake = Handshake()
    import logging
    import sys

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="activitybi %(levelname)s %(name)s: %(message)s",
    )
    from activitybi.owner.supervisor import OwnerSupervisor
    from activitybi.reporting import tracing
    from activitybi.serve import app as server
    from activitybi.serve import runtime

    end_traces = tracing.setup("activitybi")

    rt = runtime.Runtime.open(
        customer=None if http else (customer or runtime.stdio_customer()),
        source="http" if http else "stdio",
    )
    import signal

    # uvicorn re-raises SIGTERM after its graceful shutdown: turn it into SystemExit so
    # that the owner process is stopped below rather than orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    owner = OwnerSupervisor(config.queue_dir())
    owner.start()
    import threading

    threading.Thread(target=rt.warm, name="activitybi-warm", daemon=True).start()
    from activitybi.reporting.metrics import every, serve_port, status_dir, write_status

    if metrics_port is not None:
        serve_port(rt.metrics.registry, metrics_port)
    status_file = status_dir(config.home()) / f"server-{os.getpid()}.json"
    source = "http" if http else "stdio"
    stop_status = threading.Event()
    every(2.0, lambda: write_status(status_file, rt.metrics.status(source)), stop_status)
    try:
        if handshake is not None:
            server.serve_stdio(rt, handshake)
        else:
            import uvicorn

            app = server.http_app(rt, server.load_tokens(tokens), stateless=stateless)
            uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        if end_traces is not None:
            end_traces()
        stop_status.set()
        status_file.unlink(missing_ok=True)
        rt.close()
        owner.close()


@main.command("install-claude")
@click.option(
    "--customer",
    envvar="ACTIVITYBI_CUSTOMER",
    help="Who this is; an email is fine (default ACTIVITYBI_CUSTOMER, else the user).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The Claude Desktop config file (default: this platform's).",
)
@click.option("--name", default="activitybi", show_default=True, help="The key under mcpServers.")
@click.option("--print", "print_only", is_flag=True, help="Show the entry as JSON; change nothing.")
def install_claude(customer: str | None, config_path: Path | None, name: str, print_only: bool) -> None:
    """Add (or update) this server in Claude Desktop's config, keeping every other entry."""
    import getpass

    from activitybi.clients.claude_desktop import ClaudeConfigError, install, snippet

    try:
        path, entry = install(config_path, customer or getpass.getuser(), name, print_only)
    except ClaudeConfigError as e:
        raise click.ClickException(str(e)) from e
    if print_only:
        click.echo(snippet(entry, name), nl=False)
        click.echo(f"(goes under mcpServers in {path})", err=True)
        return
    click.echo(
        f"{path}: mcpServers.{name} runs {entry['command']} {' '.join(entry['args'])} "
        f"as {entry['env']['ACTIVITYBI_CUSTOMER']}; restart Claude Desktop to load it."
    )


@main.command()
def status() -> None:
    """What the queue, the uploader, the warehouse and the servers are doing."""
    from activitybi.reporting.status import show

    show(config.home())


@main.command()
def init() -> None:
    """Create or update the warehouse tables (safe to run again)."""
    from rich.console import Console

    from activitybi.warehouse import open_warehouse

    wh = open_warehouse()
    try:
        names = wh.init()
    finally:
        wh.close()
    Console().print(f"[green]{wh.kind}[/green]: applied " + ", ".join(names))


_DATASET_FORMATS = {
    ".parquet": "(FORMAT parquet)",
    ".csv": "(FORMAT csv, HEADER)",
    ".json": "(FORMAT json, ARRAY true)",
}


@main.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the rows to FILE: Parquet, CSV or JSON by its extension (default: a table here).",
)
@click.option("--limit", default=50, show_default=True, help="Rows shown in the terminal.")
def dataset(spec: Path, out: Path | None, limit: int) -> None:
    """Build the ActivitySchema dataset of SPEC.json over every customer, in one statement
    on the local DuckDB warehouse (an operator's command: over MCP a dataset stays one
    customer's)."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    from activitybi.query.dataset import DatasetSpecError, build_stream_dataset_sql
    from activitybi.warehouse import TransientError
    from activitybi.warehouse.duckdb import DuckDBWarehouse

    if out is not None and out.suffix.lower() not in _DATASET_FORMATS:
        raise click.BadParameter("the file must end in " + ", ".join(_DATASET_FORMATS), param_hint="--out")
    try:
        sql, params = build_stream_dataset_sql(orjson.loads(spec.read_bytes()))
    except (orjson.JSONDecodeError, DatasetSpecError) as e:
        raise click.ClickException(f"{spec}: {e}") from None
    path = config.home() / "warehouse.duckdb"
    if not path.exists():
        raise click.ClickException(f"no warehouse at {path}: run `activitybi init` and upload first")
    try:
        wh = DuckDBWarehouse(path, read_only=True)
    except TransientError as e:
        raise click.ClickException(
            f"{e} (a running server's owner holds it: stop it, or try later)"
        ) from None
    try:
        table = wh.con.sql(sql, params=params).to_arrow_table()
        if out is not None:
            wh.con.register("_dataset", table)
            target = str(out).replace("'", "''")
            wh.con.execute(f"COPY _dataset TO '{target}' {_DATASET_FORMATS[out.suffix.lower()]}")
    finally:
        wh.close()
    console = Console()
    if out is not None:
        console.print(f"wrote {table.num_rows:,} rows to {out}")
        return
    view = Table(*table.column_names)
    for row in table.slice(0, limit).to_pylist():
        view.add_row(*("" if v is None else str(v) for v in row.values()))
    console.print(view)
    if table.num_rows > limit:
        console.print(f"{limit} of {table.num_rows:,} rows shown; --out FILE writes them all")


@main.command()
@click.option("--once", "mode", flag_value="once", default=True, help="Drain the queue, then exit.")
@click.option("--follow", "mode", flag_value="follow", help="Keep uploading until interrupted.")
@click.option("--quiet", is_flag=True, help="No progress bar, no summary.")
@click.option("--parent", type=int, hidden=True, help="Exit when this process does.")
@click.option("--metrics-port", type=int, help="--follow: serve Prometheus metrics on this port.")
def upload(mode: str, quiet: bool, parent: int | None, metrics_port: int | None) -> None:
    """Load queued events into the warehouse, exactly once."""
    import signal
    import threading

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from activitybi.owner.loop import own
    from activitybi.owner.uploader import open_uploader

    console = Console(stderr=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if parent is not None:
        os.nice(10)  # a server's owner: loading yields the CPU to tools (on 2 cores it sets their p95)
    try:
        up = open_uploader(config.queue_dir(), stop, on_wait=None if quiet else console.print)
    except BlockingIOError:
        if parent is not None:
            return  # another process owns the queue: the server will look again later
        raise click.ClickException(
            "another uploader is reading this queue already (a running server starts one); "
            "it is uploading these events"
        ) from None
    if up is None:
        return  # stopped while waiting for the warehouse
    wh = up.warehouse
    if metrics_port is not None:
        from activitybi.reporting.metrics import OwnerMetrics, serve_port

        serve_port(OwnerMetrics(up.health).registry, metrics_port)
    show = not quiet and console.is_terminal
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not show,
        ) as bar:
            task = bar.add_task("uploading", total=up.pending())

            def advance(n: int) -> None:
                bar.update(task, advance=n, total=max(up.pending() + bar.tasks[0].completed, 1))

            try:
                if mode == "once":
                    stats = up.drain(advance)
                else:
                    own(up, config.home(), parent=parent)
                    stats = up.stats
            except KeyboardInterrupt:
                stats = up.stats
    finally:
        up.close()
        wh.close()
    if quiet:
        return
    console.print(
        f"loaded {stats.loaded:,} new events ({stats.duplicates:,} already there), "
        f"quarantined {stats.quarantined:,}, schema drift in {stats.drifted:,}, "
        f"{stats.retries:,} retries"
    )


@main.command()
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to keep the demo's files (default: $ACTIVITYBI_HOME, else a new "
    "temporary directory, so that your own data is never touched).",
)
def demo(home: Path | None) -> None:
    """Spawn `activitybi serve` as Claude Desktop would, hold three conversations with it,
    load DuckDB, and show the report."""
    from activitybi.demo import DemoError, run

    try:
        run(home)
    except DemoError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@click.option(
    "--since", type=click.DateTime(formats=["%Y-%m-%d"]), help="First day included (UTC), YYYY-MM-DD."
)
@click.option("--customer", help="Only this customer (default: everyone on this machine).")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as one self-contained HTML page with charts.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON instead.")
def report(since: dt.datetime | None, customer: str | None, html_path: Path | None, as_json: bool) -> None:
    """Sessions, activities, tool latency and errors, cost by model and session, recent
    insights, and the health of the queue and uploader (from the local DuckDB; while a
    server's warehouse owner holds it, through query tickets that the owner runs)."""
    import orjson
    from rich.console import Console

    from activitybi.reporting.report import WarehouseBusy, local_report, render_html, render_terminal

    try:
        data = local_report(since=since.date() if since else None, customer=customer)
    except (WarehouseBusy, FileNotFoundError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        render_terminal(data, Console())
    if html_path is not None:
        html_path.write_text(render_html(data), encoding="utf-8")
        Console(stderr=True).print(f"wrote {html_path}")
