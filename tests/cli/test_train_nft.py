"""``negguide train-nft`` on the bundled model: the success path writes a loadable LoRA, curves and the held-out
accuracy; bad flags exit 2 with one line and no traceback, before anything is trained."""

from __future__ import annotations

import json
import warnings

import pytest

from negguide.cli import main as cli_main

warnings.filterwarnings("ignore")

QUICK = [
    "--steps",
    "1",
    "--group-size",
    "2",
    "--prompts-per-step",
    "2",
    "--num-inference-steps",
    "2",
    "--shapeworld-prompts",
    "4",
    "--lora-rank",
    "4",
    "--lora-alpha",
    "8",
    "--height",
    "32",
    "--width",
    "32",
]


def test_train_nft_command_on_the_bundled_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train-nft", "--out", str(out), *QUICK, "--heldout-every", "1", "--heldout-prompts", "1"]) == 0
    printed = capsys.readouterr().out
    assert "lora" in printed and "accuracy" in printed and "held-out" in printed
    heldout = json.loads((out / "heldout.json").read_text())
    assert [s for s, _ in heldout["curve"]] == [0, 1] and heldout["images_per_point"] == 8
    for name in (
        "lora/pytorch_lora_weights.safetensors",
        "reward_curve.png",
        "accuracy_curve.png",
        "heldout_curve.png",
        "checkpoint/state.json",
    ):
        assert (out / name).exists(), name
    from negguide.shapeworld.bench import load_bench_pipeline

    pipe = load_bench_pipeline().family_pipeline()
    pipe.load_lora_weights(str(out / "lora"))
    assert "default_0" in pipe.transformer.peft_config


def _exit_code(argv: list) -> int:
    try:
        return cli_main(argv)
    except SystemExit as stop:  # argparse's own errors
        return stop.code


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--beta", "0"], "beta = 0.0 is outside (0.0, 1.0]"),
        (["--group-size", "1"], "--group-size = 1 is outside [2, 1024]"),
        (["--lr", "fast"], "--lr must be a number"),
        (["--reward", "aesthetic"], "unknown reward 'aesthetic'"),
        (["--prompts-file", "/nonexistent/prompts.txt"], "cannot read --prompts-file"),
        (["--heldout-every", "5", "--model", "owner/model"], "needs a ShapeWorld model"),
        (["--heldout-every", "-1"], "--heldout-every = -1 is outside"),
    ],
)
def test_train_nft_bad_input_is_one_line(flags, message, tmp_path, capsys):
    assert _exit_code(["train-nft", "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x" / "checkpoint").exists()


def test_train_nft_unwritable_output_is_one_line(capsys):
    assert _exit_code(["train-nft", "--out", "/proc/x", *QUICK]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not writable" in err


def test_resume_with_changed_config_reaches_the_trainer(tmp_path, capsys, monkeypatch):
    def stub(pipe, reward, config, accuracy=None, allow_config_change=False):
        raise ValueError(f"stub trainer: allow_config_change={allow_config_change}")

    monkeypatch.setattr("negguide.nft.trainer.NFTTrainer", stub)
    assert _exit_code(["train-nft", "--out", str(tmp_path / "x"), *QUICK, "--resume-with-changed-config"]) == 2
    assert "allow_config_change=True" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- positive-only baseline
