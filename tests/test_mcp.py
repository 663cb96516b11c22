"""The MCP server (engramdb.integrations.mcp_server, `engramdb mcp`): its tools called through
the SDK in-process, one real stdio subprocess, error texts, and the extra staying optional."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from engramdb.cli.main import main as cli

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import InvalidInput
from engramdb.integrations import mcp_server
from tests.conftest import PYTHON, python_env

TOOLS = {"remember", "recall", "forget", "list", "stats", "users"}
E2E_TIMEOUT = 30.0  # seconds for the whole subprocess conversation; it takes about 2


@pytest.fixture
def sdk() -> Any:
    """The mcp package; tests that need it skip where the extra is not installed."""
    return pytest.importorskip("mcp")


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[engramdb.Pool]:
    with engramdb.Pool(tmp_path / "users", encoder=HashingEncoder(dim=64)) as p:
        yield p


def _talk(sdk: Any, server: Any, script: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``script(client)`` against ``server`` with an in-memory MCP client."""
    import anyio

    async def run() -> Any:
        with anyio.fail_after(E2E_TIMEOUT):
            async with sdk.Client(server) as client:
                return await script(client)

    return anyio.run(run)


async def _call(client: Any, tool: str, **args: Any) -> tuple[bool, Any]:
    """(is_error, structured result or the error text) of one tool call."""
    result = await client.call_tool(tool, args)
    if result.is_error:
        return True, result.content[0].text
    return False, result.structured_content


# -- in-process, through the SDK ---------------------------------------------------------------


def test_the_tools_are_listed_with_their_arguments(sdk: Any, pool: engramdb.Pool) -> None:
    async def script(client: Any) -> Any:
        return (await client.list_tools()).tools

    tools = {t.name: t for t in _talk(sdk, mcp_server.build_server(pool), script)}
    assert set(tools) == TOOLS
    assert tools["remember"].input_schema["required"] == ["text"]
    assert set(tools["remember"].input_schema["properties"]) == {
        "text", "user", "role", "session", "metadata"}
    assert set(tools["recall"].input_schema["properties"]) == {"query", "user", "top_k", "where"}
    assert tools["forget"].input_schema["required"] == ["id"]
    assert tools["recall"].annotations.read_only_hint is True
    assert tools["forget"].annotations.destructive_hint is True
    assert tools["users"].input_schema.get("properties", {}) == {}
    assert tools["users"].annotations.read_only_hint is True
    assert all(t.description for t in tools.values())


def test_remember_recall_forget_stats_over_a_pool(sdk: Any, pool: engramdb.Pool) -> None:
    async def script(client: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["first"] = await _call(client, "remember", text="I adopted a guinea pig named Oscar.",
                                   user="alice", role="user", session="s1",
                                   metadata={"mood": "happy"})
        out["again"] = await _call(client, "remember", text="I adopted a guinea pig named Oscar.",
                                   user="alice", role="user", session="s2")
        await _call(client, "remember", text="My sister lives in Lisbon.", user="alice",
                    session="s2")
        await _call(client, "remember", text="Bob's cat is called Tom.", user="bob")
        out["recall"] = await _call(client, "recall", query="what pet did I adopt?",
                                    user="alice", top_k=1)
        out["where"] = await _call(client, "recall", query="guinea pig", user="alice",
                                   where={"session": "s1"})
        out["bob"] = await _call(client, "recall", query="guinea pig Oscar", user="bob")
        out["stats"] = await _call(client, "stats", user="alice")
        out["list"] = await _call(client, "list", user="alice", limit=1)
        out["list_where"] = await _call(client, "list", user="alice",
                                        where={"session": "s1"})
        out["forget"] = await _call(client, "forget", id=out["first"][1]["id"], user="alice")
        out["after"] = await _call(client, "recall", query="guinea pig", user="alice")
        out["stats_after"] = await _call(client, "stats", user="alice")
        return out

    out = _talk(sdk, mcp_server.build_server(pool), script)
    assert not any(is_error for is_error, _ in out.values()), out
    first, again = out["first"][1], out["again"][1]
    assert first["is_new"] and not again["is_new"] and first["id"] == again["id"]
    [hit] = out["recall"][1]["hits"]
    assert hit["id"] == first["id"] and hit["text"] == "I adopted a guinea pig named Oscar."
    assert isinstance(hit["score"], float)
    assert [(o["role"], o["session"], o["metadata"]) for o in hit["occurrences"]] == [
        ("user", "s1", {"mood": "happy"}), ("user", "s2", None)]
    # where narrows the occurrences to the matching ones
    assert [o["session"] for o in out["where"][1]["hits"][0]["occurrences"]] == ["s1"]
    assert all(h["id"] != first["id"] for h in out["bob"][1]["hits"])  # one store per user
    assert out["stats"][1]["count"] == 2 and "files" not in out["stats"][1]
    [newest] = out["list"][1]["memories"]
    assert newest["text"] == "My sister lives in Lisbon." and newest["kind"] == "short_term"
    assert [m["id"] for m in out["list_where"][1]["memories"]] == [first["id"]]
    assert out["forget"][1] == {"forgotten": 1}
    assert all(h["id"] != first["id"] for h in out["after"][1]["hits"])
    assert out["stats_after"][1]["count"] == 1


def test_users_lists_the_pools_users(sdk: Any, tmp_path: Path, pool: engramdb.Pool) -> None:
    async def script(client: Any) -> list[tuple[bool, Any]]:
        out = [await _call(client, "users")]
        for user in ("bob", "alice", "zoë/ü"):
            await _call(client, "remember", text=f"I am {user}.", user=user)
        out.append(await _call(client, "users"))
        return out

    # A store made by engramdb.open directly records no user: counted, not listed.
    with engramdb.open(pool.root / "plain.engram", encoder=HashingEncoder(dim=64)):
        pass
    before, after = _talk(sdk, mcp_server.build_server(pool, default_user="me"), script)
    assert before == (False, {"users": [], "unlisted": 1})
    assert after == (False, {"users": ["alice", "bob", "zoë/ü"], "unlisted": 1})

    with engramdb.open(tmp_path / "one.engram", encoder=HashingEncoder(dim=64)) as store:
        is_error, text = _talk(sdk, mcp_server.build_server(store),
                               lambda client: _call(client, "users"))
    assert is_error and "InvalidInput: this server holds a single store" in text, text
    assert mcp_server.MemoryTools(pool).users()["users"] == ["alice", "bob", "zoë/ü"]


@pytest.mark.parametrize(("tool", "args", "expected"), [
    ("remember", {"text": "   ", "user": "alice"}, "InvalidInput: text is empty"),
    ("recall", {"query": "pets", "user": "alice", "top_k": 0},
     "InvalidInput: top_k must be a positive int, got 0"),
    ("recall", {"query": "", "user": "alice"}, "InvalidInput: query is empty"),
    ("recall", {"query": "pets", "user": "alice", "where": {"colour": "red"}}, "InvalidInput: "),
    ("forget", {"id": "ab" * 32, "user": "alice"}, f"NotFound: no engram with id {'ab' * 32}"),
    ("forget", {"id": "abc", "user": "alice"}, "InvalidInput: not an engram id"),
    ("stats", {}, "InvalidInput: user is required"),
    ("stats", {"user": ""}, "InvalidInput: user id must not be empty"),
])
def test_engramdb_errors_reach_the_client_by_class_message_and_hint(
        sdk: Any, pool: engramdb.Pool, tool: str, args: dict[str, Any], expected: str) -> None:
    async def script(client: Any) -> tuple[bool, Any]:
        await _call(client, "remember", text="Oscar is a guinea pig.", user="alice")
        return await _call(client, tool, **args)

    is_error, text = _talk(sdk, mcp_server.build_server(pool), script)
    assert is_error, text
    assert f"Error executing tool {tool}: {expected}" in text, text
    assert "(hint: " in text, text


def test_arguments_of_the_wrong_type_are_rejected_by_the_schema(
        sdk: Any, pool: engramdb.Pool) -> None:
    async def script(client: Any) -> tuple[bool, Any]:
        return await _call(client, "recall", query="pets", user="alice", top_k="many")

    is_error, text = _talk(sdk, mcp_server.build_server(pool), script)
    assert is_error and "top_k" in text, text


def test_a_single_store_and_a_default_user(sdk: Any, tmp_path: Path,
                                           pool: engramdb.Pool) -> None:
    async def script(client: Any) -> list[tuple[bool, Any]]:
        return [await _call(client, "remember", text="Tea, no sugar."),
                await _call(client, "recall", query="tea"),
                await _call(client, "stats", user="alice")]

    with engramdb.open(tmp_path / "one.engram", encoder=HashingEncoder(dim=64)) as store:
        stored, recalled, named = _talk(sdk, mcp_server.build_server(store), script)
        assert store.count == 1
    assert not stored[0] and recalled[1]["hits"][0]["id"] == stored[1]["id"]
    assert named[0] and "InvalidInput: this server holds a single store" in named[1]

    stored, recalled, named = _talk(sdk, mcp_server.build_server(pool, default_user="me"), script)
    assert not stored[0] and recalled[1]["hits"][0]["id"] == stored[1]["id"]
    assert not named[0] and named[1]["count"] == 0  # an explicit user wins over the default
    with pool.session("me") as mem:
        assert mem.count == 1


def test_memory_tools_reject_what_they_cannot_serve(tmp_path: Path,
                                                    pool: engramdb.Pool) -> None:
    with pytest.raises(InvalidInput, match="Pool or Store"):
        mcp_server.MemoryTools(tmp_path)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="user id must not be empty"):
        mcp_server.MemoryTools(pool, default_user="")
    with engramdb.open(tmp_path / "one.engram", encoder=HashingEncoder(dim=64)) as store:
        with pytest.raises(InvalidInput, match="needs a Pool"):
            mcp_server.MemoryTools(store, default_user="me")


# -- the extra stays optional --------------------------------------------------------------------


def test_import_engramdb_never_imports_mcp() -> None:
    code = ("import sys, engramdb, engramdb.integrations, engramdb.integrations.mcp_server, "
            "engramdb.cli.main; print(sorted(m for m in sys.modules "
            "if m == 'mcp' or m.startswith(('mcp.', 'pydantic'))))")
    out = subprocess.run([PYTHON, "-c", code], env=python_env(), capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("installed", [None, "1.9.0"])
def test_without_the_extra_the_commands_fail_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        installed: str | None) -> None:
    monkeypatch.setitem(sys.modules, "mcp.server", None)  # `from mcp.server import ...` fails
    monkeypatch.setattr(mcp_server, "_installed_mcp_version", lambda: installed)
    why = ("the mcp package is not installed" if installed is None
           else "mcp 1.9.0 is installed, but this server needs mcp>=2.3,<3")

    result = CliRunner().invoke(cli, ["mcp", str(tmp_path / "users"), "--encoder", "hashing"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: the engramdb MCP server needs the `mcp` extra: ")
    assert why in result.output and "pip install 'engramdb[mcp]'" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not (tmp_path / "users").exists()  # nothing created before failing

    assert mcp_server.main([str(tmp_path / "users")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the engramdb MCP server needs") and why in err


# -- a real server process over stdio ------------------------------------------------------------


@pytest.mark.parametrize("entry", [
    ["-m", "engramdb.integrations.mcp_server"],
    ["-m", "engramdb.cli.main", "mcp"],
])
def test_a_real_server_over_stdio(sdk: Any, tmp_path: Path, entry: list[str]) -> None:
    import anyio

    root = tmp_path / "users"
    params = sdk.StdioServerParameters(
        command=PYTHON, args=[*entry, str(root), "--encoder", "hashing", "--dim", "64"],
        env=python_env(), cwd=str(tmp_path))

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with anyio.fail_after(E2E_TIMEOUT):  # never hang CI, whatever the server does
            # legacy: the initialize handshake that today's MCP clients perform
            async with sdk.Client(params, mode="legacy", read_timeout_seconds=20) as client:
                out["server"] = client.server_info.name
                out["tools"] = {t.name for t in (await client.list_tools()).tools}
                out["remember"] = await _call(client, "remember", user="alice",
                                              text="I adopted a guinea pig named Oscar.")
                out["recall"] = await _call(client, "recall", user="alice",
                                            query="what pet did I adopt?", top_k=3)
                out["error"] = await _call(client, "recall", user="alice", query="pets",
                                           top_k=0)
                out["forget_unknown"] = await _call(client, "forget", user="alice", id="0" * 64)
        return out

    out = anyio.run(run)
    assert out["server"] == "engramdb" and out["tools"] == TOOLS
    is_error, remembered = out["remember"]
    assert not is_error and remembered["is_new"], remembered
    is_error, recalled = out["recall"]
    assert not is_error and recalled["hits"][0]["id"] == remembered["id"], recalled
    assert out["error"][0] and "InvalidInput: top_k must be a positive int" in out["error"][1]
    assert out["forget_unknown"][0] and "NotFound: no engram with id" in out["forget_unknown"][1]
    # The server closed its stores on the way out: the memory is there for the next process.
    with engramdb.Pool(root) as pool, pool.session("alice") as mem:
        assert mem.get(remembered["id"]).text == "I adopted a guinea pig named Oscar."
        assert mem.verify().ok
