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


_PROCESSES = {"serve": "server", "upload": "owner"}
"""The process type an error report is tagged with, by command (any other: "cli")."""


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="activitybi")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Log every MCP interaction as ActivitySchema v2.0 events, durably."""
    config.private_umask()  # every file under the home 0600, every directory 0700
    from activitybi.reporting import errors

    errors.setup(_PROCESSES.get(ctx.invoked_subcommand or "", "cli"))


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
@click.option(
    "--operator-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="HTTP: a file holding the bearer token GET /metrics requires (or ACTIVITYBI_OPERATOR_TOKEN).",
)
def serve(
    http: bool,
    host: str,
    port: int,
    tokens: Path | None,
    stateless: bool,
    customer: str | None,
    metrics_port: int | None,
    operator_token_file: Path | None,
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
    config.secure_home()

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

    def write_server_status() -> None:
        write_status(status_file, rt.metrics.status(source))

    every(2.0, write_server_status, stop_status)
    try:
        if handshake is not None:
            server.serve_stdio(rt, handshake)
        else:
            import uvicorn

            from activitybi.serve.guard import connections_per_client, guarded_protocol

            settings = config.settings()
            operator = (
                operator_token_file.read_text().strip() if operator_token_file else settings.operator_token
            )
            app = server.http_app(
                rt, server.load_tokens(tokens), stateless=stateless, operator_token=operator or None
            )
            uvicorn.run(
                app,
                host=host,
                port=port,
                log_level="warning",
                http=guarded_protocol(settings.http_request_timeout_s, connections_per_client()),
                timeout_keep_alive=5,
            )
    finally:
        if end_traces is not None:
            end_traces()
        stop_status.set()
        status_file.unlink(missing_ok=True)
        rt.close()
        owner.close()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=4318, show_default=True)
@click.option("--customer", help="Who the telemetry is of (default ACTIVITYBI_CUSTOMER).")
@click.option(
    "--tokens",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Require bearer tokens: a JSON file {"<token>": "<customer>"}; each token\'s customer.',
)
def collect(host: str, port: int, customer: str | None, tokens: Path | None) -> None:
    """Receive OpenTelemetry over OTLP/HTTP (Claude Code, GenAI agents) into the queue."""
    from activitybi import extras

    extras.require("opentelemetry.proto", "otel", "the OTLP receiver")
    import signal
    import sys

    import uvicorn

    from activitybi import privacy
    from activitybi.capture.otlp import OtlpApp, Receiver
    from activitybi.serve.app import load_tokens

    token_map = load_tokens(tokens) if tokens else None
    customer = customer or config.settings().customer
    if token_map is None and not customer:
        raise click.ClickException("no customer: pass --customer, set ACTIVITYBI_CUSTOMER, or give --tokens")
    queue = privacy.open_queue(config.queue_dir())
    # uvicorn re-raises SIGTERM after its graceful shutdown: exit so the queue is sealed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        app = OtlpApp(Receiver(lambda: queue), tokens=token_map, customer=customer)
        uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="off")
    finally:
        queue.close()


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
@click.option(
    "--wrap",
    is_flag=True,
    help="Also run every other server through `activitybi proxy`, recording its calls.",
)
@click.option("--unwrap", is_flag=True, help="Only restore every wrapped server exactly as it was.")
def install_claude(
    customer: str | None, config_path: Path | None, name: str, print_only: bool, wrap: bool, unwrap: bool
) -> None:
    """Add (or update) this server in Claude Desktop's config, keeping every other entry."""
    import getpass

    from activitybi.clients import claude_desktop as cd

    if wrap and unwrap:
        raise click.UsageError("--wrap and --unwrap exclude each other")
    customer = customer or getpass.getuser()
    try:
        if unwrap:
            path, servers, changed = cd.unwrap(config_path, print_only)
        else:
            path, entry = cd.install(config_path, customer, name, print_only)
            if wrap:
                path, servers, changed = cd.wrap(config_path, customer, name, print_only)
                servers[name] = entry
    except cd.ClaudeConfigError as e:
        raise click.ClickException(str(e)) from e
    if print_only:
        click.echo(cd.dumps({"mcpServers": servers}) if wrap or unwrap else cd.snippet(entry, name), nl=False)
        click.echo(f"(goes under mcpServers in {path})", err=True)
        return
    if not unwrap:
        click.echo(
            f"{path}: mcpServers.{name} runs {entry['command']} {' '.join(entry['args'])} "
            f"as {entry['env']['ACTIVITYBI_CUSTOMER']}; restart Claude Desktop to load it."
        )
    if wrap or unwrap:
        done = "now records" if wrap else "restored"
        click.echo(f"{path}: {done} {', '.join(changed) if changed else 'nothing (no change needed)'}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--name", help="mcp_server in the events (default: the command's file name).")
@click.option("--customer", envvar="ACTIVITYBI_CUSTOMER", help="Who this is (default ACTIVITYBI_CUSTOMER).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def proxy(name: str | None, customer: str | None, command: tuple[str, ...]) -> None:
    """Run the MCP stdio server COMMAND, forwarding every byte, and record each call.

    Usage: activitybi proxy --name NAME -- COMMAND [ARGS...]
    """
    import sys

    from activitybi.capture.proxy import run

    sys.exit(run(command, name or Path(command[0]).name, customer))


@main.command()
def status() -> None:
    """What the queue, the uploader, the warehouse and the servers are doing."""
    from activitybi.reporting.status import show

    show(config.home())


@main.command()
def doctor() -> None:
    """Check the install, the home, queue, warehouse, Redis and Claude settings; print fixes."""
    import sys

    from activitybi.reporting import doctor as checks

    findings = checks.run()
    click.echo(checks.render(findings))
    sys.exit(0 if all(f.ok for f in findings) else 1)


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


@main.group()
def retention() -> None:
    """Stream rows past ACTIVITYBI_RETENTION_DAYS to the archive; every other limit."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Only show what would go: stream rows per month.")
def retention_run(dry_run: bool) -> None:
    """Run retention now, in the warehouse owner's place (it steps aside meanwhile)."""
    import threading

    from activitybi.owner import retention as lifecycle
    from activitybi.owner.handover import take_over

    home, settings = config.home(), config.settings()
    with take_over(home, threading.Event()) as uploader:
        if dry_run:
            report = lifecycle.dry_run(uploader.warehouse, settings)
        else:
            report = lifecycle.run(uploader.warehouse, home, settings)
    verb = "would archive" if dry_run else "archived"
    click.echo(f"stream rows before {report.cutoff:%Y-%m-%d %H:%M} UTC {verb}:")
    for month, n in report.months.items():
        click.echo(f"  {month}: {n:,}")
    if not report.months:
        click.echo("  none")
    for where, n in report.removed.items():
        click.echo(f"removed {where}: {n:,}")


@main.command()
@click.option("--customer", required=True, help="The customer to erase (their e-mail, say).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget(customer: str, yes: bool) -> None:
    """Remove a customer everywhere this tool keeps data, and print a receipt."""
    from activitybi.owner import forget as erasure

    if not yes:
        click.confirm(f"Erase every trace of {customer}? This cannot be undone", abort=True)
    try:
        receipt = erasure.run(config.home(), customer)
    except (erasure.Incomplete, TimeoutError) as e:
        raise click.ClickException(f"{e}; nothing is lost: run forget again to finish") from e
    for line in erasure.receipt_lines(receipt):
        click.echo(line)


@main.group()
def policy() -> None:
    """The redaction policy: check a file, or see what it does to an event."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def policy_check(file: Path) -> None:
    """Validate a policy file (errors name the line and the key)."""
    from activitybi import privacy

    text, source = privacy.read_policy(file) if file.exists() else ("", "")
    if not source:
        raise click.ClickException(f"{file}: no such file")
    try:
        privacy.build(text, source, bytes(32))
    except privacy.PolicyError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{file}: a valid redaction policy")


@policy.command("test")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="This policy file instead of the configured one.",
)
def policy_test(policy_file: Path | None) -> None:
    """Read one event (JSON) on stdin; print it as the queue would write it, and what was
    redacted (to stderr). Hashes use this machine's key, so tokens match the stored ones."""
    import sys

    import orjson

    from activitybi import privacy, secret

    try:
        path = policy_file or privacy.policy_path()
        text, source = privacy.read_policy(path)
        red = privacy.build(text, source, secret.key())
    except privacy.PolicyError as e:
        raise click.ClickException(str(e)) from None
    try:
        out = red.redact(sys.stdin.read())
    except ValueError as e:
        raise click.ClickException(f"stdin: {e}") from None
    click.echo(orjson.dumps(orjson.loads(out), option=orjson.OPT_INDENT_2).decode())
    counts = {k: n for k, n in red.counts().items() if n}
    summary = ", ".join(f"{k} {n}" for k, n in counts.items()) or "nothing"
    click.echo(f"redacted: {summary} ({source})", err=True)


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

    from activitybi.reporting.figures import local_report
    from activitybi.reporting.html import render_html
    from activitybi.reporting.source import WarehouseBusy
    from activitybi.reporting.terminal import render_terminal

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
        Console(stderr=True).print(f"wrote {html_path}", markup=False)


@main.command()
@click.option("--port", default=0, show_default=True, help="Loopback port (0: any free one).")
@click.option("--customer", help="Whose figures (default ACTIVITYBI_CUSTOMER, else the user).")
@click.option("--all", "everyone", is_flag=True, help="Every customer on this machine.")
@click.option("--no-open", is_flag=True, help="Print the address; do not open a browser.")
def ui(port: int, customer: str | None, everyone: bool, no_open: bool) -> None:
    """The live report in your browser, on loopback, refreshed as events arrive."""
    import getpass
    import secrets
    import socket
    import threading
    import webbrowser

    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    from activitybi.reporting.live import LivePage, Viewer

    who = None if everyone else (customer or config.settings().customer or getpass.getuser())
    token = secrets.token_urlsafe(32)  # one use: other local users cannot open the page
    page = LivePage({token: Viewer(who)}, one_time=True)
    app = Starlette(routes=[Route(p, e, methods=m) for p, m, e in page.routes()])
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/?token={token}"
    click.echo(f"activitybi live page for {who or 'every customer'}: {url}")
    if not no_open:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])


def _customer(customer: str | None) -> str:
    """The capture commands' customer; says in one line when none is configured."""
    if customer:
        return customer
    from activitybi.capture.transcripts import customer as default_customer

    configured = config.settings().customer
    if configured:
        return configured
    who = default_customer()
    click.echo(f"no customer configured (--customer or {config.CUSTOMER_ENV}): recording as {who}", err=True)
    return who


@main.command()
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A price table to show instead (default ACTIVITYBI_PRICES, else the shipped one).",
)
def prices(path: Path | None) -> None:
    """The model price table that costs of captured model calls are computed from."""
    from rich.console import Console
    from rich.table import Table

    from activitybi.capture.prices import RATES, PriceTableError, as_rows, load

    try:
        table = load(path)
    except PriceTableError as e:
        raise click.ClickException(str(e)) from e
    out = Table(title=f"US$ per million tokens — snapshot {table.snapshot} ({table.path})")
    out.add_column("model (prefix)", no_wrap=True)
    for rate in RATES:
        out.add_column(rate.replace("cache_", "").replace("_", " "), justify="right")
    for row in as_rows(table):
        out.add_row(row["model"], *(f"{row[r]:g}" for r in RATES))
    console = Console()
    console.print(out)
    console.print(f"source: {table.source}\n{table.note}", highlight=False)


@main.group("import")
def import_() -> None:
    """Import interactions that other tools recorded."""


@import_.command("claude-code")
@click.option(
    "--projects",
    type=click.Path(file_okay=False, path_type=Path),
    help="Claude Code's projects folder (default $CLAUDE_CONFIG_DIR/projects, else ~/.claude/projects).",
)
@click.option("--follow", is_flag=True, help="Keep reading new lines until interrupted.")
@click.option("--quiet", is_flag=True, help="No progress bar, no summary.")
@click.option("--customer", help="Who this is (default ACTIVITYBI_CUSTOMER, else the user).")
def import_claude_code(projects: Path | None, follow: bool, quiet: bool, customer: str | None) -> None:
    """Read Claude Code's session transcripts (prompts, model calls with tokens and cost,
    tool calls) into the queue, from where the last import stopped."""
    import signal
    import time

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn

    from activitybi import privacy
    from activitybi.capture import prices, transcripts

    who = _customer(customer)
    folder = projects or transcripts.default_projects_dir()
    try:
        table = prices.load()
    except prices.PriceTableError as e:
        raise click.ClickException(str(e)) from e
    console = Console(stderr=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does: commit, exit
    queue = privacy.open_queue(config.queue_dir())
    importer = transcripts.Importer(
        queue, customer=who, prices=table, content=config.settings().capture_content
    )
    try:
        files = transcripts.transcripts(folder)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        ) as bar:
            task = bar.add_task(f"{len(files)} transcripts", total=importer.pending_bytes(files))
            importer.run(files, advance=lambda n: bar.advance(task, n))
        while follow:
            time.sleep(1.0)
            importer.run(transcripts.transcripts(folder))
    except KeyboardInterrupt:
        importer.commit()
    finally:
        queue.close()
    s = importer.stats
    if not quiet:
        console.print(
            f"{folder}: {s.events:,} events from {s.lines:,} new lines in {s.files:,} files, "
            f"{s.quarantined:,} quarantined (see {config.Home.current().capture_quarantine})"
        )


@main.command(context_settings={"ignore_unknown_options": True})
def hook() -> None:
    """A Claude Code command hook: reads the event's JSON on stdin, records it, prints
    nothing and exits 0 (the installed hooks run `python -m activitybi.capture.hooks`,
    the same code without this command line's start-up cost)."""
    from activitybi.capture.hooks import main as run_hook

    run_hook()


@main.command("install-claude-code")
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Claude Code's settings (default $CLAUDE_CONFIG_DIR/settings.json, else ~/.claude/settings.json).",
)
@click.option("--customer", envvar="ACTIVITYBI_CUSTOMER", help="Who this is, fixed in the hook command.")
@click.option("--print", "print_only", is_flag=True, help="Show what would be merged; change nothing.")
@click.option("--uninstall", is_flag=True, help="Remove exactly what an install added.")
def install_claude_code(
    settings_path: Path | None, customer: str | None, print_only: bool, uninstall: bool
) -> None:
    """Set Claude Code up: hooks for every event, and telemetry to the local receiver."""
    from activitybi.clients import claude_code
    from activitybi.clients.claude_desktop import ClaudeConfigError, dumps

    if print_only:
        click.echo(dumps(claude_code.planned(customer)), nl=False)
        return
    try:
        if uninstall:
            path, changed = claude_code.uninstall(settings_path)
        else:
            path, changed = claude_code.install(settings_path, _customer(customer))
    except ClaudeConfigError as e:
        raise click.ClickException(str(e)) from e
    done = "removed from" if uninstall else "installed in"
    click.echo(
        f"{path}: activitybi hooks and telemetry {done} it" + ("" if changed else " already (no change)")
    )
