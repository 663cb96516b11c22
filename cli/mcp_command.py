"""``engramdb mcp``: serve a directory of per-user stores to MCP clients over stdio.

Its own module so the ``mcp`` extra stays optional: the server module (and the ``mcp``
package) is imported only when the command runs; without the extra it fails with one line.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("mcp")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--encoder", "encoder_choice", type=click.Choice(["hashing", "default"]),
              help="Encoder of new users' stores: model-free hashing, or the packaged MiniLM. "
                   "Without it only existing stores can be used.")
@click.option("--dim", type=click.IntRange(min=2), default=256, show_default=True,
              help="Dimension of a new hashing encoder.")
@click.option("--user", "default_user", metavar="USER",
              help="The user when a tool call names none (one-person set-ups).")
def mcp_command(root: Path, encoder_choice: str | None, dim: int,
                default_user: str | None) -> None:
    """Serve the stores under ROOT (one per user) to an MCP client over stdio.

    Tools: remember, recall, forget, stats, users (docs/integrations.md). Runs until the client
    closes stdin. Needs the mcp extra: pip install 'engramdb[mcp]'.

    \b
    Example:
      engramdb mcp ~/memories --encoder default --user me
    """
    from engramdb.errors import EngramError
    from engramdb.integrations import mcp_server  # imports no mcp: serve() does

    try:
        encoder = mcp_server.encoder_for(encoder_choice, dim)
        mcp_server.serve(root, encoder=encoder, default_user=default_user)
    except (mcp_server.MissingExtra, EngramError) as exc:
        raise click.ClickException(str(exc)) from None
