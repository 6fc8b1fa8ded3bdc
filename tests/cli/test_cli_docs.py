"""docs/cli.md shows each command's --help as the command prints it: a flag added, renamed or re-worded without the
page following fails here. ``NEGGUIDE_UPDATE_DOCS=1 pytest tests/cli/test_cli_docs.py`` rewrites the blocks."""

from __future__ import annotations

import importlib
import os
import re

import pytest
from helpers import REPO

import negguide.cli

PAGE = REPO / "docs" / "cli.md"
WIDTH = "120"  # the terminal width the page's help text is wrapped at
BLOCK = re.compile(r"(## negguide(?: (?P<command>[a-z-]+))?\n\n```text\n)(?P<help>.*?)(\n```)", re.S)


def help_text(command: str | None) -> str:
    if command is None:
        return negguide.cli.__doc__.strip()
    module = importlib.import_module(negguide.cli.COMMANDS[command])
    parser = module.build_parser()
    parser.prog = f"negguide {command}"
    return parser.format_help().rstrip()


def test_every_command_has_its_current_help_on_the_page(monkeypatch):
    monkeypatch.setenv("COLUMNS", WIDTH)
    page = PAGE.read_text()
    found = {m.group("command") for m in BLOCK.finditer(page)}
    assert found == {None, *negguide.cli.COMMANDS}, f"docs/cli.md has help blocks for {found}"
    updated = BLOCK.sub(lambda m: m.group(1) + help_text(m.group("command")) + m.group(4), page)
    if os.environ.get("NEGGUIDE_UPDATE_DOCS") == "1":
        PAGE.write_text(updated)
        pytest.skip("docs/cli.md rewritten")
    stale = [
        m.group("command") or "negguide"
        for m, n in zip(BLOCK.finditer(page), BLOCK.finditer(updated))
        if m.group(0) != n.group(0)
    ]
    assert not stale, f"docs/cli.md shows old --help of {stale}: NEGGUIDE_UPDATE_DOCS=1 pytest {__file__}"
