"""``negguide --help`` and every ``negguide COMMAND --help`` answer without importing torch, diffusers,
transformers or gradio (each in a fresh interpreter: what a user's shell starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from negguide.cli import COMMANDS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("torch", "diffusers", "transformers", "gradio", "peft", "matplotlib")
SCRIPT = """
import contextlib, io, json, sys
from negguide.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as stop:
        code = stop.code
print(json.dumps({"code": code, "text": out.getvalue(), "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def _help(*command: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_no_heavy_library(command):
    result = _help(*([command] if command else []))
    assert result["code"] == 0
    assert result["heavy"] == [], f"`negguide {command or ''} --help` imported {result['heavy']}"
    assert ("usage: negguide " + command if command else "negguide generate PROMPT") in result["text"]


def test_the_check_sees_a_heavy_import():
    """The subprocess check itself: a command whose help imports torch is caught."""
    done = subprocess.run(
        [sys.executable, "-c", "import torch\n" + SCRIPT, "bench", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1])["heavy"] == ["torch"]


def test_the_settings_import_without_torch():
    """What the CLI's help reads: every settings dataclass and the packages that hold them."""
    modules = [
        "negguide.core.settings",
        "negguide.perpneg",
        "negguide.negtome",
        "negguide.reneg.config",
        "negguide.reneg",
        "negguide.nft.config",
        "negguide.nft",
        "negguide.guidance",
        "negguide.core",
        "negguide.shapeworld.bench",
        "negguide.cli.generation",
    ]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
    code += f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
