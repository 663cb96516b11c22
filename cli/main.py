"""Entry point of the ``engramdb`` command: a thin click layer over the library.

Every command opens the store, calls one library function and prints the result (a rich table
for people, ``--json`` for programs). Library errors become one-line messages, never
tracebacks. Exit codes:

- 0: success (``verify``: the store is clean)
- 1: the command failed (``verify``: the store is damaged, or too damaged to open)
- 2: bad usage, or the store is locked by another process (the message names its pid)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

import engramdb
from engramdb.errors import EngramError, ReadOnlyStore, StorageError, StoreLocked
from engramdb.storage.manifest import MANIFEST_NAME

from . import queries
from .fleet_command import fleet_command
from .mcp_command import mcp_command
from .reembed_command import reembed_command

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_FAILED = 1
EXIT_LOCKED = 2  # same as click's usage errors: the command could not run at all
KINDS = ("working", "short_term", "long_term")

F = TypeVar("F", bound=Callable[..., Any])


class Failed(click.ClickException):
    """A one-line error message with an exit code (1 unless stated)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _fail(exc: EngramError) -> Failed:
    # Locked, or a disk that refused (read-only, full, gone): the command could not run; that
    # says nothing about the store, so it must not look like damage (exit 1) to a script.
    could_not_run = isinstance(exc, StoreLocked | StorageError)
    return Failed(str(exc), EXIT_LOCKED if could_not_run else EXIT_FAILED)


class CloseFailed(Failed):
    """The command's work was done, but closing the store failed (e.g. a full disk)."""


@contextmanager
def opened(path: Path, wait: float = 0.0, *, read: bool = False, **kwargs: Any
           ) -> Iterator[engramdb.Store]:
    """Open an existing store (or as ``kwargs`` say) and turn library errors into Failed,
    closing's included (close() writes: the index, the BM25 snapshot, a sync). ``read``: a
    command that only reads opens read-only (no lock file, nothing written: it works on a
    read-only mount and beside other readers), unless the store needs recovery or an upgrade
    first, which a writable open does."""
    kwargs.setdefault("create", False)
    try:
        try:
            store = engramdb.open(path, lock_timeout=wait, read_only=read, **kwargs)
        except ReadOnlyStore:
            store = engramdb.open(path, lock_timeout=wait, **kwargs)
    except EngramError as exc:
        raise _fail(exc) from None
    try:
        yield store
    except BaseException as exc:
        try:
            store.close()
        except EngramError:
            pass  # the command's own error is the one to report
        if isinstance(exc, EngramError):
            raise _fail(exc) from None
        raise
    try:
        store.close()
    except EngramError as exc:
        raise CloseFailed(f"closing {path} failed: {exc}") from None


def _require(store: engramdb.Store, name: str) -> Callable[..., Any]:
    """The store method ``name``, or a clean failure on an engramdb that lacks it."""
    method = getattr(store, name, None)
    if not callable(method):
        raise Failed(f"this engramdb has no Store.{name}() yet; upgrade engramdb")
    return method


# -- shared options -----------------------------------------------------------------------------


def store_arg(f: F) -> F:
    """The PATH argument (a store directory) and the --wait lock timeout."""
    f = click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     metavar="SECONDS",
                     help="Wait this long for a store locked by another process.")(f)
    return click.argument("path", type=click.Path(path_type=Path))(f)


def json_opt(f: F) -> F:
    """--json: print machine-readable JSON instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def filter_opts(f: F) -> F:
    """--kind/--session/--role/--since: filters on kind and on occurrences."""
    f = click.option("--since", type=int, metavar="TICK",
                     help="Only engrams said at or after this tick.")(f)
    f = click.option("--role", help="Only engrams said by this role.")(f)
    f = click.option("--session", help="Only engrams said in this session.")(f)
    return click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS),
                        help="Only engrams of this kind (repeatable).")(f)


# -- output -------------------------------------------------------------------------------------


def _console() -> Any:
    from rich.console import Console

    # Created per command so CliRunner's captured stdout is the one written to.
    return Console(highlight=False, soft_wrap=False)


def _table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title, show_lines=False, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold", no_wrap=col not in ("text", "value"))
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    return table


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(_plain(data), indent=2, sort_keys=True, default=str))


def _plain(obj: Any) -> Any:
    if isinstance(obj, engramdb.Recall):  # occurrences are a property, loaded on access
        out = {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
               if not f.name.startswith("_")}
        out["occurrences"] = _plain(obj.occurrences)
        return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def _life(left: float | None) -> str:
    return "never" if left is None else f"{left:g}"


def _short(text: str, n: int = 72) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _printable(text: str) -> bool:
    """Whether ``text`` prints as one line (no control characters, no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return text.isprintable()


def _where(session: str | None, role: str | None, since: int | None) -> dict[str, Any] | None:
    where: dict[str, Any] = {}
    if session is not None:
        where["session"] = session
    if role is not None:
        where["role"] = role
    if since is not None:
        where["since"] = since
    return where or None


# -- the group ----------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
@click.version_option(engramdb.__version__, prog_name="engramdb")
def main() -> None:
    """Inspect and maintain engramdb memory stores.

    \b
    Examples:
      engramdb ingest alice.engram notes.txt --encoder hashing
      engramdb recall alice.engram "what pets do I have?"
      engramdb verify alice.engram

    Exit codes: 0 success; 1 failure (verify: the store is damaged); 2 bad usage, or the
    store is locked by another process (the message names its pid).
    """


@main.command()
@store_arg
@json_opt
@click.option("--log", "log_limit", type=click.IntRange(min=0), default=10, show_default=True,
              help="Entries of the forgetting log to show.")
def inspect(path: Path, wait: float, as_json: bool, log_limit: int) -> None:
    """Describe the store at PATH: format, encoder, counts per kind, clock, files, what died.

    \b
    Example:
      engramdb inspect alice.engram --log 20
    """
    with opened(path, wait, read=True) as mem:
        data = mem.stats()
        data["forgetting_log"] = mem.forgetting_log(log_limit) if log_limit else []
    if as_json:
        _echo_json(data)
        return
    con = _console()
    summary = [
        ["path", data["path"]],
        ["format version", data.get("format_version")],
        ["encoder", json.dumps(data.get("encoder"), sort_keys=True)],
        ["fingerprint", str(data.get("fingerprint", ""))[:16]],
        ["dim / dtype", f"{data.get('dim')} / {data.get('dtype')}"],
        ["clock", data.get("clock")],
        ["live engrams", data.get("count")],
        *[[f"  {k}", v] for k, v in (data.get("kinds") or {}).items()],
        ["dead, not collected", data.get("dead_uncollected")],
        ["disk", _bytes(data.get("bytes", 0))],
    ]
    if "index" in data:  # index coverage, when the store reports it
        summary.append(["index", json.dumps(data["index"], sort_keys=True, default=str)])
    con.print(_table("store", ["field", "value"], summary))
    files = data.get("files") or {}
    con.print(_table("files", ["file", "bytes"], [[f, _bytes(n)] for f, n in files.items()]))
    log = data["forgetting_log"]
    if log_limit:
        rows = [[e["id"][:12], e["tick"], e["reason"], e["kind"]] for e in log]
        con.print(_table("recently forgotten", ["id", "tick", "reason", "kind"], rows)
                  if rows else "nothing forgotten yet")


@main.command()
@store_arg
@json_opt
def stats(path: Path, wait: float, as_json: bool) -> None:
    """Print counts per kind, clock and disk usage of the store at PATH.

    \b
    Example:
      engramdb stats alice.engram --json
    """
    with opened(path, wait, read=True) as mem:
        data = mem.stats()
    if as_json:
        _echo_json(data)
        return
    rows = [["count", data["count"]],
            *[[f"kind {k}", v] for k, v in data["kinds"].items()],
            ["clock", data["clock"]], ["dim", data["dim"]], ["bytes", data["bytes"]]]
    _console().print(_table(None, ["stat", "value"], rows))


@main.command("ls")
@store_arg
@filter_opts
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Most engrams to list.")
@json_opt
def ls_(path: Path, wait: float, kinds: tuple[str, ...], session: str | None, role: str | None,
        since: int | None, limit: int, as_json: bool) -> None:
    """List live engrams of the store at PATH, most recently said first.

    \b
    Example:
      engramdb ls alice.engram --kind long_term --session 2023-05-08 --limit 5
    """
    with opened(path, wait, read=True) as mem:
        engrams = queries.list_engrams(mem, kinds=kinds, session=session, role=role,
                                       since=since, limit=limit)
    if as_json:
        _echo_json(engrams)
        return
    rows = []
    for e in engrams:
        last = e.occurrences[-1] if e.occurrences else None
        rows.append([e.id[:12], e.kind.value, e.refs, _life(e.lifespan_left),
                     last.role if last else None, last.session if last else None,
                     _short(e.text)])
    _console().print(_table(None, ["id", "kind", "refs", "life left", "role", "session",
                                   "text"], rows))


@main.command()
@store_arg
@click.argument("ident", metavar="ID")
@json_opt
def show(path: Path, wait: float, ident: str, as_json: bool) -> None:
    """Show one engram of the store at PATH: text, state and every occurrence.

    ID is the full id or a unique prefix of 8+ hex digits (as `ls` prints).

    \b
    Example:
      engramdb show alice.engram 3f1c0a9b2d7e
    """
    with opened(path, wait, read=True) as mem:
        eng = mem.get(queries.resolve_id(mem, ident))
    if as_json:
        _echo_json(eng)
        return
    con = _console()
    con.print(_table(None, ["field", "value"], [
        ["id", eng.id], ["kind", eng.kind.value], ["refs", eng.refs],
        ["created tick", eng.created_tick], ["life left", _life(eng.lifespan_left)],
        ["pinned", eng.pinned], ["recalls", eng.recalls], ["text", eng.text]]))
    rows = [[o.tick, o.role, o.session, None if o.metadata is None else json.dumps(o.metadata)]
            for o in eng.occurrences]
    con.print(_table("occurrences", ["tick", "role", "session", "metadata"], rows))


@main.command()
@store_arg
@click.argument("query")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Number of engrams to return.")
@filter_opts
@json_opt
def recall(path: Path, wait: float, query: str, top_k: int, kinds: tuple[str, ...],
           session: str | None, role: str | None, since: int | None, as_json: bool) -> None:
    """Recall the engrams of the store at PATH that best match QUERY.

    A pure read, like the library's recall(): nothing earns lifespan. The store needs its
    encoder, which is rebuilt from the manifest.

    \b
    Example:
      engramdb recall alice.engram "what pets do I have?" -k 3
    """
    with opened(path, wait, read=True) as mem:
        hits = mem.recall(query, top_k=top_k, where=_where(session, role, since),
                          kinds=kinds or None)
        if as_json:  # while the store is open: occurrences load on first access
            _echo_json(hits)
            return
    rows = [[f"{h.score:.3f}", h.kind.value, _life(h.lifespan_left), h.via, _short(h.text)]
            for h in hits]
    _console().print(_table(None, ["score", "kind", "life left", "via", "text"], rows))


def _read_texts(file: Any, jsonl: bool, name: str) -> dict[str, list[Any]]:
    """Parse plain-text lines or JSONL records into ingest_many's columns."""
    cols: dict[str, list[Any]] = {"texts": [], "roles": [], "sessions": [], "metadatas": []}
    for lineno, line in enumerate(file, 1):
        if not line.strip():
            continue
        if not jsonl:
            rec: dict[str, Any] = {"text": line.rstrip("\n")}
        else:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise Failed(f"{name}:{lineno}: bad JSON: {exc.msg}") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise Failed(f'{name}:{lineno}: expected an object with a "text" string')
            extra = set(rec) - {"text", "role", "session", "metadata"}
            if extra:
                raise Failed(f"{name}:{lineno}: unknown field(s) {', '.join(sorted(extra))}; "
                             "use text, role, session, metadata")
        cols["texts"].append(rec["text"])
        cols["roles"].append(rec.get("role"))
        cols["sessions"].append(rec.get("session"))
        cols["metadatas"].append(rec.get("metadata"))
    return cols


def _encoder(choice: str | None, dim: int) -> engramdb.encoders.Encoder | None:
    if choice is None:
        return None
    if choice == "hashing":
        return engramdb.encoders.HashingEncoder(dim=dim)
    try:
        return engramdb.encoders.default()
    except EngramError as exc:
        raise _fail(exc) from None


@main.command()
@store_arg
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--jsonl", is_flag=True,
              help='FILE holds JSON objects {"text", "role", "session", "metadata"}, one a line.')
@click.option("--encoder", "encoder_choice", type=click.Choice(["hashing", "default"]),
              help="Encoder of a new store: model-free hashing, or the packaged MiniLM.")
@click.option("--dim", type=click.IntRange(min=2), default=256, show_default=True,
              help="Dimension of a new hashing encoder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def ingest(path: Path, wait: float, file: Any, jsonl: bool, encoder_choice: str | None,
           dim: int, quiet: bool) -> None:
    """Ingest the lines of FILE (plain text, or JSONL with --jsonl) into the store at PATH.

    Each non-blank line is one memory. Creating a new store needs --encoder; an existing
    store uses the encoder its manifest records. FILE may be - for stdin.

    \b
    Example:
      engramdb ingest alice.engram chat.jsonl --jsonl --encoder default
    """
    cols = _read_texts(file, jsonl, file.name)
    if not cols["texts"]:
        raise Failed(f"{file.name} holds no text to ingest")
    exists = (path / MANIFEST_NAME).exists()
    if not exists and encoder_choice is None:
        raise Failed(f"{path} does not exist; creating it needs --encoder hashing or "
                     "--encoder default", exit_code=2)
    encoder = _encoder(encoder_choice, dim)
    with opened(path, wait, encoder=encoder, create=not exists) as mem:
        results = mem.ingest_many(cols["texts"], roles=cols["roles"], sessions=cols["sessions"],
                                  metadatas=cols["metadatas"], progress=not quiet)
        total = mem.count
    new = sum(r.is_new for r in results)
    click.echo(f"ingested {len(results)} texts ({new} new) into {path}; {total} live engrams")


@main.command()
@store_arg
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
def forget(path: Path, wait: float, ids: tuple[str, ...]) -> None:
    """Erase engrams from the store at PATH (run gc to reclaim their bytes).

    Each ID is a full id or a unique prefix of 8+ hex digits. Nothing is forgotten if any
    ID is unknown.

    \b
    Example:
      engramdb forget alice.engram 3f1c0a9b2d7e 9a0b1c2d3e4f && engramdb gc alice.engram
    """
    with opened(path, wait) as mem:
        n = mem.forget([queries.resolve_id(mem, i) for i in ids])
    click.echo(f"forgot {n} engram{'s' if n != 1 else ''}")


@main.command()
@store_arg
@click.option("--dry-run", is_flag=True, help="Report what would be collected; change nothing.")
@click.option("--rewrite", is_flag=True,
              help="Rewrite the catalog file with today's blocks: 16 KiB, 256 KiB from "
                   "50,000 engrams (migrates an older store).")
@json_opt
def gc(path: Path, wait: float, dry_run: bool, rewrite: bool, as_json: bool) -> None:
    """Physically remove dead and forgotten engrams from the store at PATH.

    \b
    Example:
      engramdb gc alice.engram --dry-run
      engramdb gc old.engram --rewrite
    """
    with opened(path, wait) as mem:
        result = _require(mem, "gc")(dry_run=dry_run, rewrite=rewrite)
    if as_json:
        _echo_json(result)
        return
    rows = [[k, v] for k, v in (result or {}).items()]
    _console().print(_table("gc (dry run)" if dry_run else "gc", ["what", "value"], rows))


@main.command()
@store_arg
def rebuild(path: Path, wait: float) -> None:
    """Rebuild the derived state (indexes) of the store at PATH from its vectors and texts.

    \b
    Example:
      engramdb rebuild alice.engram
    """
    with opened(path, wait) as mem:
        _require(mem, "rebuild")()
        count = mem.count
    click.echo(f"rebuilt {path}: {count} live engrams")


@main.command()
@store_arg
@json_opt
def verify(path: Path, wait: float, as_json: bool) -> None:
    """Check every invariant of the store at PATH; exit 1 if it is damaged.

    A store too damaged to open also exits 1, naming the damage. A store that could not be
    checked (locked by another process, or a disk error such as a read-only file system)
    exits 2: that says nothing about the store, so do not restore over it.

    \b
    Example:
      engramdb verify alice.engram; [ $? -eq 1 ] && echo "restore alice.engram from an export"
    """
    close_failed = None
    try:
        with opened(path, wait, read=True) as mem:
            report = mem.verify()
    except CloseFailed as exc:  # checked, then closing failed: no damage found, still exit 1
        close_failed = exc
    except Failed as exc:
        if exc.exit_code == EXIT_LOCKED:
            raise
        # Opening failed: damage (CorruptStore) or not a store at all; both exit 1.
        report = engramdb.VerifyReport(problems=[exc.message])
    if as_json:
        _echo_json({"ok": report.ok, "problems": report.problems, "checked": report.checked})
    elif report.ok:
        click.echo(f"ok: {', '.join(f'{n} {k}' for k, n in report.checked.items())}")
    else:
        for problem in report.problems:
            click.echo(f"damaged: {problem}", err=True)
    if close_failed is not None:
        raise close_failed
    if not report.ok:
        sys.exit(EXIT_FAILED)


@main.command("export")
@store_arg
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl",
              show_default=True, help="JSONL file, or a Parquet directory.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def export_(path: Path, wait: float, out: Path, fmt: str, quiet: bool) -> None:
    """Export the store at PATH to OUT, losslessly (vectors included).

    \b
    Example:
      engramdb export alice.engram alice.jsonl
      engramdb export alice.engram alice.parquet --format parquet
    """
    from engramdb.transfer import export_store

    with opened(path, wait, read=True) as mem:
        counts = export_store(mem, out, fmt, progress=not quiet)
    click.echo(f"exported {counts['engrams']} engrams, {counts['links']} links to {out}")


@main.command("import")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def import_(src: Path, path: Path, quiet: bool) -> None:
    """Create a new store at PATH from the export SRC (JSONL file or Parquet directory).

    PATH must not exist (or be an empty directory); the store is built next to it and
    renamed into place only once it verifies clean.

    \b
    Example:
      engramdb import alice.jsonl alice-copy.engram
    """
    from engramdb.transfer import import_store

    try:
        stats = import_store(path, src, progress=not quiet)
    except EngramError as exc:
        raise _fail(exc) from None
    click.echo(f"imported {stats['count']} live engrams into {path}")


@main.command()
@store_arg
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              default="report.html", show_default=True, help="HTML file to write.")
def report(path: Path, wait: float, output: Path) -> None:
    """Write a self-contained HTML report with pictures of the store at PATH.

    The pictures: engrams by kind over the clock, lifespans left, the strongest links,
    how often engrams were recalled. No network access is needed to view it.

    \b
    Example:
      engramdb report alice.engram -o alice.html
    """
    from engramdb.report import write_report

    with opened(path, wait, read=True) as mem:
        write_report(mem, output)
    click.echo(f"wrote {output}")


@main.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: the users, and the stores skipped (unknown, damaged).")
def users(root: Path, as_json: bool) -> None:
    """List the user ids of the per-user stores under ROOT (an engramdb.Pool's directory).

    One id a line, sorted; an id that is not printable text (a newline, a control
    character) is shown as a JSON string, and --json gives every id exactly. Only the stores'
    manifests are read: no store is opened or locked, so it works while a server holds them.
    Stores whose manifest records no user (made by engramdb.open, or by an older engramdb and
    not opened by a Pool since) and damaged manifests are skipped and counted on stderr;
    --json lists them under "unknown" and "damaged".

    \b
    Example:
      engramdb users ~/memories
      engramdb users ~/memories --json | jq -r '.users[]'
    """
    try:
        with engramdb.Pool(root) as pool:  # opens nothing: the listing reads manifests only
            listing = pool.user_listing()
    except EngramError as exc:
        raise _fail(exc) from None
    if as_json:
        _echo_json(listing.to_dict())
        return
    for user in listing.users:
        click.echo(user if _printable(user) else json.dumps(user))
    if listing.unknown:
        n = len(listing.unknown)
        click.echo(f"skipped {n} store{'s' if n != 1 else ''} without a recorded user "
                   "(listed once a Pool opens them)", err=True)
    for name, why in listing.damaged.items():
        click.echo(f"skipped {name}: {why}", err=True)


main.add_command(fleet_command)  # `engramdb fleet`: cli/fleet_command.py (one op, every store)
main.add_command(mcp_command)  # `engramdb mcp`: cli/mcp_command.py (the optional mcp extra)
main.add_command(reembed_command)  # `engramdb reembed`: cli/reembed_command.py

if __name__ == "__main__":  # pragma: no cover
    main()
