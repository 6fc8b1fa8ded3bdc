"""``negguide train-reneg`` on the bundled ShapeWorld model: a short run writes the embedding and the reward curve
and resumes; bad flags exit non-zero with one line naming the flag."""

from __future__ import annotations

import json
import os
import re

import pytest

from negguide.cli import main
from negguide.reneg import NegativeEmbedding

SD_EMBEDDING = os.path.join(
    os.path.dirname(__file__), "..", "..", "assets", "shapeworld", "reneg", "sd", "negative_embedding.safetensors"
)
QUICK = [
    "--batch-size",
    "2",
    "--shapeworld-prompts",
    "4",
    "--num-inference-steps",
    "4",
    "--late-steps",
    "2",
    "--checkpoint-every",
    "1",
]


def test_train_reneg_writes_embedding_curve_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-reneg", "--out", str(out), "--steps", "2", *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "negative_embedding.safetensors" in printed and "reward" in printed
    first = NegativeEmbedding.load(str(out / "negative_embedding.safetensors"))
    assert first.family == "sd3" and first.metadata["steps"] == "2"
    assert "ShapeWorld" in first.metadata["base_model"]
    assert (out / "reward_curve.png").stat().st_size > 1000
    # asking for more steps resumes from the checkpoint of step 2
    capsys.readouterr()
    assert main(["train-reneg", "--out", str(out), "--steps", "3", *QUICK]) == 0
    progress = capsys.readouterr().err
    steps_shown = re.findall(r"ReNeg:[^|]*\|[^|]*\| (\d+)/3", progress)
    assert steps_shown and steps_shown[0] == "2", steps_shown  # the bar started at step 2
    assert NegativeEmbedding.load(str(out / "negative_embedding.safetensors")).metadata["steps"] == "3"
    # another seed is refused in one line naming it; --resume-with-changed-config goes on and records the change
    assert _exit_code(["train-reneg", "--out", str(out), "--steps", "4", "--seed", "1", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "seed: 0 -> 1" in err and "--resume-with-changed-config" in err and "Traceback" not in err
    assert (
        main(["train-reneg", "--out", str(out), "--steps", "4", "--seed", "1", "--resume-with-changed-config", *QUICK])
        == 0
    )
    log = json.loads(NegativeEmbedding.load(str(out / "negative_embedding.safetensors")).metadata["config_log"])
    assert log[-1] == {"step": 3, "changes": {"seed": [0, 1], "steps": [3, 4]}}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "0"], "--steps = 0 is outside"),
        (["--lr", "abc"], "--lr must be a number"),
        (["--prompts-file", "/nonexistent/prompts.txt"], "cannot read --prompts-file"),
        (["--reward", "aesthetic"], "unknown reward 'aesthetic'"),
        (["--reward", "clip"], "needs a model"),
        (["--reward", "shapeworld@0.5", "--reward", "shapeworld@0.5"], "'shapeworld' is given twice"),
        (["--late-steps", "30"], "late_steps = 30 exceeds"),
        (["--init-embedding", "/nonexistent/e.safetensors"], "is not a file"),
        (["--init-embedding", __file__, "--init-text", "a shape"], "drop --init-text"),
        (["--init-embedding", SD_EMBEDDING], "is for a sd model but the pipeline is sd3"),
    ],
)
def test_train_reneg_bad_input_is_one_line(flags, message, tmp_path, capsys):
    assert _exit_code(["train-reneg", "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and not (tmp_path / "x" / "checkpoint").exists()


def _exit_code(argv: list) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own errors
        return stop.code


def test_shapeworld_reward_spec_takes_other_classifier_weights(tmp_path):
    import shutil

    import torch

    from negguide.rewards.registry import build_reward
    from negguide.shapeworld.reward import DEFAULT_FOLDER

    copy = tmp_path / "reward"
    shutil.copytree(DEFAULT_FOLDER, copy)
    images, prompts = torch.rand(2, 3, 64, 64), ["a red circle", "a shape"]
    bundled, loaded = build_reward(["shapeworld"]), build_reward([f"shapeworld-log={copy}"])
    assert loaded.log_prob and torch.allclose(loaded(images, prompts).exp(), bundled(images, prompts), atol=1e-4)
    with pytest.raises(FileNotFoundError, match="no ShapeWorld reward weights at"):
        build_reward([f"shapeworld={tmp_path / 'missing'}"])


def test_train_reneg_continues_from_a_saved_embedding(tmp_path):
    import torch

    first = tmp_path / "first"
    assert main(["train-reneg", "--out", str(first), "--steps", "1", *QUICK]) == 0
    start = NegativeEmbedding.load(str(first / "negative_embedding.safetensors"))
    start.tensors = {k: v + 0.5 for k, v in start.tensors.items()}  # far from anything --init-text would give
    start_path = start.save(str(tmp_path / "start.safetensors"))
    out = tmp_path / "continued"
    assert (
        main(["train-reneg", "--out", str(out), "--steps", "1", "--lr", "1e-4", "--init-embedding", start_path, *QUICK])
        == 0
    )
    continued = NegativeEmbedding.load(str(out / "negative_embedding.safetensors"))
    assert continued.metadata["init_embedding"] == "start.safetensors"
    for key, value in start.tensors.items():  # one small step from the file, not from the null text
        assert (continued.tensors[key] - value).abs().max() < 1e-2
        assert not torch.equal(continued.tensors[key], value)
