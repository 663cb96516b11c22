"""docs/cli.md is generated from the commands' --help and must not drift from them."""

from __future__ import annotations

from engramdb.cli import gen_docs
from engramdb.cli.main import main


def test_docs_match_the_commands() -> None:
    assert gen_docs.DOCS.exists(), "run: python -m engramdb.cli.gen_docs"
    assert gen_docs.DOCS.read_text(encoding="utf-8") == gen_docs.render(), (
        "docs/cli.md is stale; run: python -m engramdb.cli.gen_docs"
    )
    assert gen_docs.cli(["--check"]) == 0


def test_every_command_is_documented_with_an_example() -> None:
    text = gen_docs.render()
    for name, cmd in main.commands.items():
        assert f"## engramdb {name}\n" in text
        assert cmd.help and "Example" in cmd.help, name
