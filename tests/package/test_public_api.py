"""The package's public face: lazy imports, deprecated aliases kept for one release, the version, the layers."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import warnings

import pytest
from helpers import REPO

HEAVY = ("torch", "diffusers", "transformers", "peft", "gradio")


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement, allowed",
    [
        ("import negguide", set()),
        ("import negguide.cli", set()),
        ("import negguide.rewards", set()),
        ("import negguide.negtome", {"torch"}),  # the pure merge math; hooks and pipeline load on use
        ("import negguide.perpneg", {"torch"}),
        ("import negguide.nft", {"torch"}),
        ("import negguide.guiders", set()),
        ("import negguide.nag", set()),
    ],
)
def test_imports_stay_light(statement, allowed):
    assert _imported_after(statement) <= allowed


def test_top_level_names_resolve_on_use():
    import negguide

    assert {"PerpNegPipeline", "NegToMePipeline", "PerpNegSettings", "NegToMeSettings"} <= set(negguide.__all__)
    assert negguide.PerpNegPipeline.__name__ == "PerpNegPipeline"
    assert negguide.NegToMePipeline.__module__ == "negguide.negtome.pipeline"
    assert "PerpNegPipeline" in dir(negguide)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        negguide.Nope  # noqa: B018


def test_the_version_is_written_once():
    import negguide

    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and '\nversion = "' not in pyproject
    assert negguide.__version__ == importlib.metadata.version("negguide")


@pytest.mark.parametrize(
    "old, name, new",
    [
        ("negguide.shapes", "prompt_accuracy", "negguide.shapeworld"),
        ("negguide.shapes.world", "render", "negguide.shapeworld.world"),
        ("negguide.shapes.judge", "prompt_correct", "negguide.shapeworld.judge"),
        ("negguide.shapes.bench", "run_bench", "negguide.shapeworld.bench"),
        ("negguide.rewards.shapeworld", "ShapeWorldReward", "negguide.shapeworld.reward"),
        ("negguide.rewards", "ShapeWorldReward", "negguide.shapeworld.reward"),
        ("negguide.tokenizers", "build_clip_tokenizer", "negguide.testing.tokenizers"),
    ],
)
def test_renamed_names_keep_a_deprecated_alias(old, name, new):
    module = importlib.import_module(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_cli_version(capsys):
    import negguide
    from negguide.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"negguide {negguide.__version__}"


@pytest.mark.skipif(
    shutil.which("lint-imports") is None and not (REPO / ".venv/bin/lint-imports").exists(),
    reason="import-linter is not installed (pip install -e '.[dev]')",
)
def test_layer_contract_fails_on_a_deliberate_violation(tmp_path):
    """A copy of the package where a method imports the ShapeWorld lab breaks the layers contract."""
    for folder in ("negguide", "experiments"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = shutil.which("lint-imports") or str(REPO / ".venv/bin/lint-imports")
    kept = subprocess.run([lint], cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)})
    assert kept.returncode == 0, kept.stdout
    bad = tmp_path / "negguide" / "perpneg" / "settings.py"
    bad.write_text(bad.read_text() + "\nfrom negguide.shapeworld import judge  # noqa: E402,F401\n")
    broken = subprocess.run([lint], cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)})
    assert broken.returncode != 0
    assert "negguide.perpneg is not allowed to import negguide.shapeworld" in broken.stdout
