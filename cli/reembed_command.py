"""``engramdb reembed``: rebuild a store under a new encoder and switch to it atomically.

The work is :func:`engramdb.reembed.reembed`; this module turns its result into one line (or
JSON) and its errors into one-line messages with the exit codes of the other commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

EXIT_FAILED = 1
EXIT_COULD_NOT_RUN = 2  # locked, or the disk refused: as the other commands (cli/main.py)


@click.command("reembed")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--encoder", "encoder_choice", type=click.Choice(["hashing", "default"]),
              required=True,
              help="The new encoder: model-free hashing, or the packaged MiniLM.")
@click.option("--dim", type=click.IntRange(min=2), default=256, show_default=True,
              help="Dimension of a hashing encoder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: counts, both encoders and where the id map is.")
def reembed_command(path: Path, encoder_choice: str, dim: int, quiet: bool,
                    as_json: bool) -> None:
    """Re-embed the store at PATH with a new encoder, switching to it atomically.

    Every engram keeps its text, occurrences, kind, lifespan, pin and links; the clock and
    settings carry over. Ids change with the encoder: the map old id -> new id is written to
    PATH/reembed-ids.jsonl. The store stays locked throughout, and a crash at any point
    leaves one complete store at PATH, under the old encoder or the new one.

    \b
    Example:
      engramdb reembed alice.engram --encoder default
    """
    from engramdb.errors import EngramError, StorageError, StoreLocked
    from engramdb.reembed import ID_MAP_NAME, load_id_map, reembed

    try:
        encoder = _encoder(encoder_choice, dim)
        ids = reembed(path, encoder, progress=not quiet)
        header, _ = load_id_map(path)
    except EngramError as exc:
        code = EXIT_COULD_NOT_RUN if isinstance(exc, StoreLocked | StorageError) else EXIT_FAILED
        error = click.ClickException(str(exc))
        error.exit_code = code
        raise error from None
    id_map = str(path / ID_MAP_NAME)
    if as_json:
        click.echo(json.dumps({"path": str(path), "engrams": len(ids), "id_map": id_map,
                               "from": header["from_encoder"], "to": header["to_encoder"],
                               "from_fingerprint": header["from"],
                               "to_fingerprint": header["to"]}, indent=2))
        return
    click.echo(f"re-embedded {len(ids)} engrams of {path}: {_name(header['from_encoder'])} "
               f"-> {_name(header['to_encoder'])}; old id -> new id map in {id_map}")


def _encoder(choice: str, dim: int) -> object:
    import engramdb.encoders

    if choice == "hashing":
        return engramdb.encoders.HashingEncoder(dim=dim)
    return engramdb.encoders.default()


def _name(spec: dict) -> str:
    """A short name of an encoder spec: its kind, model and dim."""
    model = spec.get("model") or spec.get("name")
    label = spec.get("kind", "?") + (f" {model}" if model else "")
    return f"{label} (dim {spec.get('dim')})"
