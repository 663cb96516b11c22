"""``engramdb fleet``: one maintenance operation over every store under a Pool's root.

A thin layer over :func:`engramdb.fleet.run_fleet`: a progress bar while it runs, then a
table with one row per store (or ``--json``). Exit codes: 0 every store succeeded (or was
done by an earlier run); 1 some store failed (damaged, or the operation failed on it); 2 bad
usage, the run could not start (Ray missing or unreachable, the same operation already
running over ROOT), or no store failed but some were locked by another process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from engramdb.errors import EngramError
from engramdb.fleet import OPS, FleetResult, FleetRow, run_fleet

EXIT_USAGE = 2
_STYLE = {"ok": "green", "skipped": "cyan", "failed": "red", "locked": "yellow"}


class _Failed(click.ClickException):
    """A one-line error with an exit code (the run could not start: 2)."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@click.command("fleet")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("operation", type=click.Choice(OPS))
@click.argument("dest", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]",
              help="Run each store as a Ray task: alone, start a local Ray; or join the "
                   "cluster at ADDRESS (host:port, ray://host:port, auto). Needs the ray "
                   "extra. Give it last, or as --ray=ADDRESS.")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="Worker processes (Ray: stores in flight). Default: the CPUs of this "
                   "machine (Ray: of the cluster).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl",
              show_default=True, help="export: a JSONL file or a Parquet directory per store.")
@click.option("--encoder", "encoder_choice", type=click.Choice(["hashing", "default"]),
              help="reembed: the new encoder (model-free hashing, or the packaged MiniLM).")
@click.option("--dim", type=click.IntRange(min=2), default=256, show_default=True,
              help="reembed: dimension of a hashing encoder.")
@click.option("--restart", is_flag=True,
              help="Start over: forget what earlier runs of this operation did.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the progress log lives (default ROOT/.fleet; e.g. for a "
                   "read-only ROOT).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def fleet_command(root: Path, operation: str, dest: Path | None, ray_address: str | None,
                  workers: int | None, fmt: str, encoder_choice: str | None, dim: int,
                  restart: bool, state_dir: Path | None, as_json: bool, quiet: bool) -> None:
    """Run OPERATION (verify, gc, stats, export DEST, reembed) on every store under ROOT.

    ROOT is a Pool's directory (one store per user). Each store runs in a worker process (or
    a Ray task with --ray), opened without waiting: a store held open by another process (a
    running server) is reported "locked" and left alone, a damaged one "failed", and neither
    stops the others. export writes DEST/<store>.jsonl for each store; reembed needs
    --encoder. Progress is logged under ROOT/.fleet: running the same command again resumes,
    skipping the stores it finished that have not changed since (--restart redoes them all).

    Exit codes: 0 every store succeeded; 1 some store failed; 2 none failed but some were
    locked (run again later), or the run could not start.

    \b
    Examples:
      engramdb fleet ~/memories verify
      engramdb fleet ~/memories gc --workers 4 --json
      engramdb fleet ~/memories export /backups/2024-06-01
      engramdb fleet ~/memories reembed --encoder default --ray ray://head:10001
      engramdb fleet ~/memories stats --ray
    """
    if (dest is None) == (operation == "export"):
        raise _Failed("export needs DEST (a directory)" if operation == "export"
                      else f"{operation} takes no DEST")
    if (encoder_choice is None) == (operation == "reembed"):
        raise _Failed("reembed needs --encoder hashing or --encoder default"
                      if operation == "reembed" else "--encoder is for reembed")
    try:
        result = run_fleet(root, operation, dest=dest, fmt=fmt, encoder=encoder_choice,
                           dim=dim, ray_address=ray_address, workers=workers,
                           resume=not restart, progress=not quiet and not as_json,
                           state_dir=state_dir)
    except EngramError as exc:
        raise _Failed(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        _print(result)
    if result.exit_code:
        raise SystemExit(result.exit_code)


def _print(result: FleetResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fleet {result.op}: {result.root}", title_justify="left")
    for col in ("user", "store", "status", "seconds", "result"):
        table.add_column(col, overflow="fold", no_wrap=col in ("status", "seconds"))
    for row in result.rows:
        status = f"[{_STYLE[row.status]}]{row.status}[/]"
        table.add_row(_user(row), row.store, status, f"{row.seconds:.2f}", _detail(row))
    console = Console(highlight=False, soft_wrap=False)  # per call: CliRunner's stdout
    console.print(table)
    counts = ", ".join(f"{n} {status}" for status, n in result.counts().items())
    rate = sum(r.status != "skipped" for r in result.rows) / max(result.seconds, 1e-9)
    where = (f"{result.workers} worker processes" if result.backend == "processes"
             else f"Ray, {result.workers} CPUs")
    click.echo(f"{len(result.rows)} stores: {counts} in {result.seconds:.1f} s "
               f"({rate:.1f} stores/s, {where}); progress log {result.log}")
    if result.counts()["skipped"]:
        click.echo("skipped: done by an earlier run and unchanged since (--restart redoes them)")


def _user(row: FleetRow) -> str:
    if row.user is None:
        return "(not recorded)"
    return row.user if row.user.isprintable() else json.dumps(row.user)


def _detail(row: FleetRow) -> str:
    """One line saying what the operation found or did on this store."""
    if row.error is not None:
        return row.error
    data: dict[str, Any] = row.result or {}
    if "checked" in data:  # verify
        text = "clean: " + ", ".join(f"{n} {k}" for k, n in data["checked"].items())
    elif "file" in data:  # export
        text = f"{data.get('engrams', 0)} engrams, {data.get('links', 0)} links -> {data['file']}"
    elif "kinds" in data:  # stats
        kinds = ", ".join(f"{n} {k}" for k, n in data["kinds"].items())
        text = f"{data.get('count')} engrams ({kinds}), {data.get('bytes', 0):,} bytes"
    else:  # gc, reembed, a custom operation: its numbers
        text = ", ".join(f"{k} {v}" for k, v in data.items() if not isinstance(v, dict | list))
    return f"(earlier run) {text}" if row.status == "skipped" else text
