"""Every `python -m ...` and `negguide ...` command that the READMEs document names a module or subcommand that
exists and parses its --help (the studies themselves take minutes to hours: their figures are reproduced by hand)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import REPO

DOCUMENTS = [
    REPO / "README.md",
    *sorted((REPO / "experiments").glob("*/README.md")),
    *sorted((REPO / "assets").glob("**/README.md")),
]
MODULES = sorted(
    {m for doc in DOCUMENTS for m in re.findall(r"python -m ((?:experiments|negguide)\.[\w.]+)", doc.read_text())}
)
SUBCOMMANDS = sorted(
    {
        c
        for doc in DOCUMENTS
        for c in re.findall(r"\bnegguide (generate|bench|train-reneg|train-nft|demo)\b", doc.read_text())
    }
)


def test_the_documents_name_commands():
    assert "experiments.reneg_comparison.compare" in MODULES and "train-reneg" in SUBCOMMANDS


@pytest.mark.parametrize("module", MODULES)
def test_documented_module_answers_help(module):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower() or module == "negguide.cli"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_documented_subcommand_answers_help(command):
    from negguide.cli import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
