"""A Model Context Protocol server: engramdb memories as tools for any MCP client.

Five tools, over a :class:`~engramdb.Pool` of per-user stores or over one
:class:`~engramdb.Store`:

- ``remember(text, user?, role?, session?, metadata?)`` -> ``{"id", "is_new"}``
- ``recall(query, user?, top_k?, where?)`` -> ``{"hits": [{"id", "text", "score",
  "occurrences"}]}``
- ``forget(id, user?)`` -> ``{"forgotten": 1}``
- ``stats(user?)`` -> the store's :meth:`~engramdb.Store.stats` (without the file list)
- ``users()`` -> ``{"users": [...], "unlisted": n}``: the pool's user ids
  (:meth:`~engramdb.Pool.users`)

An engramdb error reaches the client as a tool error (``isError``) whose text names the error
class, its message and its hint, e.g. ``InvalidInput: top_k must be a positive int, got 0
(hint: ...)``. Run it over stdio (docs/integrations.md)::

    engramdb mcp memories/ --encoder hashing
    python -m engramdb.integrations.mcp_server memories/ --encoder hashing

Needs the ``mcp`` extra (``pip install 'engramdb[mcp]'``); the ``mcp`` package is imported
only when a server is built, never by ``import engramdb``. :class:`MemoryTools` (the tools'
logic) needs no ``mcp`` at all.
"""

# No `from __future__ import annotations` here: the SDK reads the tools' signatures with
# inspect.signature(eval_str=True), which resolves string annotations against this module's
# globals only, and the tools' Annotated/Field types are local to build_server().

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import engramdb
from engramdb.content import normalize_text
from engramdb.encoders import Encoder, HashingEncoder
from engramdb.errors import EngramError, InvalidInput

INSTALL_HINT = "pip install 'engramdb[mcp]'"
MCP_REQUIREMENT = "mcp>=2.3,<3"  # keep in step with pyproject.toml's `mcp` extra
SERVER_NAME = "engramdb"
INSTRUCTIONS = (
    "A long-term memory. Call `remember` with anything worth keeping (facts about the user, "
    "decisions, preferences), `recall` with a question before answering, `forget` with an id "
    "the user wants erased, `stats` to see how much is stored, `users` to list whose memories "
    "exist. Pass the same `user` for one person every time, unless the server was started "
    "with a default user."
)


class MissingExtra(ImportError):
    """The ``mcp`` package (the ``mcp`` extra) is not installed, or is not a usable version."""


def error_text(exc: EngramError) -> str:
    """The text a client sees for an engramdb error: class, message and hint.

    >>> error_text(engramdb.errors.NotFound("no engram with id 3f1c", hint="list ids first"))
    'NotFound: no engram with id 3f1c (hint: list ids first)'
    """
    return f"{type(exc).__name__}: {exc}"


def encoder_for(choice: str | None, dim: int = 256) -> Encoder | None:
    """The encoder new stores get: ``"hashing"`` (model-free, ``dim``), ``"default"`` (the
    packaged MiniLM; needs the ``transformers`` extra) or None (existing stores only).

    Raises InvalidInput for another choice, EncoderRequired when the default model is missing.
    """
    if choice is None:
        return None
    if choice == "hashing":
        return HashingEncoder(dim=dim)
    if choice == "default":
        return engramdb.encoders.default()
    raise InvalidInput(f"encoder must be 'default' or 'hashing', got {choice!r}")


class MemoryTools:
    """The tools' logic over a Pool (one store per ``user``) or a single Store.

    With a Pool every call names a ``user`` (or the server's ``default_user`` is used); each
    call leases that user's store for its duration. With a Store, ``user`` must be left out.
    Methods return plain JSON-ready dicts and raise :class:`~engramdb.errors.EngramError`
    (InvalidInput, NotFound, ...) as the Store does. The caller owns ``memory`` and closes it.
    """

    def __init__(self, memory: engramdb.Pool | engramdb.Store, *,
                 default_user: str | None = None) -> None:
        if not isinstance(memory, (engramdb.Pool, engramdb.Store)):
            raise InvalidInput(f"memory must be an engramdb Pool or Store, got "
                               f"{type(memory).__name__}")
        if default_user is not None:
            if isinstance(memory, engramdb.Store):
                raise InvalidInput("default_user needs a Pool; a single Store has no users")
            memory.path_for(default_user)  # a bad id fails now, not at the first call
        self.memory = memory
        self.default_user = default_user

    @contextmanager
    def _leased(self, user: str | None) -> Iterator[engramdb.Store]:
        """The store a call works on, held for the whole call."""
        if isinstance(self.memory, engramdb.Store):
            if user is not None:
                raise InvalidInput("this server holds a single store; leave user out",
                                   hint="call the tool without user")
            yield self.memory
            return
        if user is None:
            user = self.default_user
        if user is None:
            raise InvalidInput("user is required: this server keeps one memory per user",
                               hint="pass user=<a stable id of the person>, e.g. their "
                                    "account name, the same on every call")
        with self.memory.session(user) as store:
            yield store

    def remember(self, text: str, user: str | None = None, role: str | None = None,
                 session: str | None = None,
                 metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store ``text``; the same text again adds an occurrence to the same engram."""
        normalize_text(text, what="text")  # "text is empty", not the batch's "texts[0] ..."
        with self._leased(user) as store:
            result = store.ingest(text, role=role, session=session, metadata=metadata)
        return {"id": result.id, "is_new": result.is_new}

    def recall(self, query: str, user: str | None = None, top_k: int = 5,
               where: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``top_k`` engrams that best match ``query``, each with its occurrences."""
        with self._leased(user) as store:
            hits = store.recall(query, top_k=top_k, where=where)
            # Occurrences load from the store on first access: read them while it is held.
            return {"hits": [
                {"id": h.id, "text": h.text, "score": float(h.score),
                 "occurrences": [{"role": o.role, "session": o.session, "tick": o.tick,
                                  "metadata": o.metadata} for o in h.occurrences]}
                for h in hits]}

    def forget(self, id: str, user: str | None = None) -> dict[str, Any]:  # noqa: A002
        """Erase the engram ``id`` (NotFound if there is none)."""
        with self._leased(user) as store:
            return {"forgotten": store.forget([id])}

    def list(self, user: str | None = None, where: dict[str, Any] | None = None,  # noqa: A003
             limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """Memories newest first without a query (:meth:`~engramdb.Store.engrams`), each with
        its occurrences (those matching ``where``)."""
        with self._leased(user) as store:
            found = store.engrams(where=where, limit=limit, offset=offset, order="-seq")
        return {"memories": [
            {"id": e.id, "text": e.text, "kind": e.kind.value,
             "occurrences": [{"role": o.role, "session": o.session, "tick": o.tick,
                              "metadata": o.metadata} for o in e.occurrences]}
            for e in found]}

    def stats(self, user: str | None = None) -> dict[str, Any]:
        """Counts per kind, clock, dimension, encoder and bytes of the store."""
        with self._leased(user) as store:
            data = store.stats()
        data.pop("files", None)  # one entry per file on disk: noise for a model
        return data

    def users(self) -> dict[str, Any]:
        """The users with a memory, sorted (:meth:`~engramdb.Pool.users`: read from the
        stores' manifests, none opened); ``unlisted`` counts the stores skipped (no user
        recorded yet, or a damaged manifest). InvalidInput over a single Store."""
        if isinstance(self.memory, engramdb.Store):
            raise InvalidInput("this server holds a single store: it has no users",
                               hint="call the other tools without user")
        listing = self.memory.user_listing()
        return {"users": listing.users,
                "unlisted": len(listing.unknown) + len(listing.damaged)}


def _load_mcp() -> Any:
    """The SDK's server module, or MissingExtra saying how to install it."""
    try:
        from mcp.server import mcpserver
    except ImportError as exc:
        found = _installed_mcp_version()
        why = (f"mcp {found} is installed, but this server needs {MCP_REQUIREMENT}" if found
               else "the mcp package is not installed")
        raise MissingExtra(f"the engramdb MCP server needs the `mcp` extra: {why}; "
                           f"install it with: {INSTALL_HINT}") from exc
    return mcpserver


def _installed_mcp_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("mcp")
    except metadata.PackageNotFoundError:
        return None


@contextmanager
def _tool_errors(tool_error: type[Exception]) -> Iterator[None]:
    """engramdb errors become the SDK's ToolError, whose text the client sees."""
    try:
        yield
    except EngramError as exc:
        raise tool_error(error_text(exc)) from exc


def build_server(memory: engramdb.Pool | engramdb.Store | MemoryTools, *,
                 default_user: str | None = None, name: str = SERVER_NAME) -> Any:
    """An ``mcp.server.mcpserver.MCPServer`` with the six tools over ``memory``.

    ``memory`` is a Pool, a Store, or a ready :class:`MemoryTools`; the caller keeps
    ownership and closes it after the server stops. Raises MissingExtra without the ``mcp``
    extra, InvalidInput for a bad ``memory`` or ``default_user``.

    >>> server = build_server(engramdb.Pool("memories", encoder=HashingEncoder()))  # doctest: +SKIP
    >>> server.run()  # stdio  # doctest: +SKIP
    """
    sdk = _load_mcp()
    tools = memory if isinstance(memory, MemoryTools) else MemoryTools(
        memory, default_user=default_user)
    server = sdk.MCPServer(name, instructions=INSTRUCTIONS, version=engramdb.__version__,
                           log_level="WARNING")
    _add_tools(server, tools)
    return server


def _add_tools(server: Any, tools: MemoryTools) -> None:
    """Register the six tools on ``server``; each turns engramdb errors into ToolError."""
    from typing import Annotated

    from mcp.server.mcpserver.exceptions import ToolError as tool_error  # noqa: N813
    from mcp.types import ToolAnnotations
    from pydantic import Field

    User = Annotated[str | None, Field(  # noqa: N806 - a type alias
        description="Whose memory: any stable id of the person (one store per user). "
                    "Leave out when the server has a default user or serves one store.")]

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                             idempotent_hint=False))
    def remember(
        text: Annotated[str, Field(description="What to remember, in plain words.")],
        user: User = None,
        role: Annotated[str | None, Field(description="Who said it, e.g. user or "
                                                      "assistant.")] = None,
        session: Annotated[str | None, Field(description="Conversation or date it "
                                                         "belongs to.")] = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="JSON object kept "
                                                                     "with it.")] = None,
    ) -> dict[str, Any]:
        """Store a memory. Returns its id (a content hash: the same text again gives the
        same id, with is_new false, and records another occurrence)."""
        with _tool_errors(tool_error):
            return tools.remember(text, user, role, session, metadata)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def recall(
        query: Annotated[str, Field(description="A question or topic to look up.")],
        user: User = None,
        top_k: Annotated[int, Field(description="How many memories, at least 1.")] = 5,
        where: Annotated[dict[str, Any] | None, Field(
            description='Filter on how memories were said: {"session": s, "role": r or [r, '
                        '...], "metadata": {key: value}, "since": tick, "until": tick}.')
        ] = None,
    ) -> dict[str, Any]:
        """Recall the memories that best match a query, best first: id, text, score and
        occurrences (role, session, tick, metadata of each time it was said)."""
        with _tool_errors(tool_error):
            return tools.recall(query, user, top_k, where)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                             idempotent_hint=False))
    def forget(
        id: Annotated[str, Field(description="The id remember or recall returned.")],  # noqa: A002
        user: User = None,
    ) -> dict[str, Any]:
        """Erase one memory for good; it no longer comes back from recall."""
        with _tool_errors(tool_error):
            return tools.forget(id, user)

    @server.tool(name="list", annotations=ToolAnnotations(read_only_hint=True))
    def list_memories(
        user: User = None,
        where: Annotated[dict[str, Any] | None, Field(
            description="The same filter as recall's where.")] = None,
        limit: Annotated[int, Field(description="How many memories, at least 0.")] = 20,
        offset: Annotated[int, Field(description="How many of the newest to skip.")] = 0,
    ) -> dict[str, Any]:
        """List memories newest first, without a query (page with offset): id, text, kind
        and occurrences of each."""
        with _tool_errors(tool_error):
            return tools.list(user, where, limit, offset)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def stats(user: User = None) -> dict[str, Any]:
        """Describe a memory store: live count, counts per kind, clock, encoder, bytes."""
        with _tool_errors(tool_error):
            return tools.stats(user)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def users() -> dict[str, Any]:
        """List the users that have a memory (the ids to pass as user), sorted; unlisted
        counts stores whose user is not recorded yet or whose manifest is damaged."""
        with _tool_errors(tool_error):
            return tools.users()


def serve(root: str | Path, *, encoder: Encoder | None = None,
          default_user: str | None = None, max_open: int = 64) -> None:
    """Serve the per-user stores under ``root`` over stdio until the client disconnects.

    ``encoder`` creates new users' stores (None: only existing stores can be used; each is
    opened with the encoder its manifest records). Raises MissingExtra without the ``mcp``
    extra and what :class:`~engramdb.Pool` raises; every store is closed on the way out.
    """
    _load_mcp()  # fail before touching ROOT
    with engramdb.Pool(root, encoder=encoder, max_open=max_open) as pool:
        build_server(pool, default_user=default_user).run("stdio")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engramdb.integrations.mcp_server ROOT [--encoder E] [--dim N] [--user U]``;
    the same as ``engramdb mcp``. Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m engramdb.integrations.mcp_server",
        description="Serve the engramdb stores under ROOT (one per user) to an MCP client "
                    "over stdio.")
    parser.add_argument("root", type=Path, metavar="ROOT")
    parser.add_argument("--encoder", choices=("default", "hashing"),
                        help="encoder of new users' stores (default: existing stores only)")
    parser.add_argument("--dim", type=int, default=256, help="dimension of --encoder hashing")
    parser.add_argument("--user", help="the user when a tool call names none")
    args = parser.parse_args(argv)
    try:
        serve(args.root, encoder=encoder_for(args.encoder, args.dim), default_user=args.user)
    except (MissingExtra, EngramError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
