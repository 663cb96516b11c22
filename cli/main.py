"""Entry point of the ``engramdb`` command: a thin click layer over the library."""

from __future__ import annotations

import json
import sys

import click

import engramdb
from engramdb.errors import EngramError

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
@click.version_option(engramdb.__version__, prog_name="engramdb")
def main() -> None:
    """Inspect and maintain engramdb memory stores."""


def _open(path: str) -> engramdb.Store:
    try:
        return engramdb.open(path, create=False)
    except EngramError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(path: str, as_json: bool) -> None:
    """Print counts, clock and file sizes of the store at PATH."""
    with _open(path) as mem:
        data = mem.stats()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for key in ("path", "count", "kinds", "clock", "dim", "bytes"):
            click.echo(f"{key}: {data[key]}")


@main.command()
@click.argument("path", type=click.Path())
def verify(path: str) -> None:
    """Check every invariant of the store at PATH; exit 1 if it is damaged."""
    try:
        with _open(path) as mem:
            report = mem.verify()
    except click.ClickException:
        raise
    if report.ok:
        click.echo(f"ok: {report.checked}")
        return
    for problem in report.problems:
        click.echo(f"damaged: {problem}", err=True)
    sys.exit(1)
