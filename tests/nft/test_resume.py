"""Resuming the DiffusionNFT trainer (tiny SD3 model): a run killed anywhere in a checkpoint save resumes with at
most one checkpoint interval lost and ends where an uninterrupted run ends; a damaged checkpoint and a changed
config are refused (never overwritten), and ``allow_config_change`` goes on, recording the change."""

from __future__ import annotations

import functools
import json
import os
import warnings

import pytest
from helpers import check_kill_chain

from negguide.core.checkpoint import CheckpointError
from negguide.nft import NFTConfig, NFTTrainer
from negguide.testing.tiny import tiny_pipeline

warnings.filterwarnings("ignore")


def redness(images, prompts):
    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def trainer(out, allow_config_change=False, **overrides) -> NFTTrainer:
    settings = dict(
        prompts=["a red circle", "a blue square"],
        group_size=2,
        prompts_per_step=1,
        steps=2,
        num_inference_steps=2,
        lora_rank=4,
        lora_alpha=8.0,
        height=32,
        width=32,
        max_sequence_length=16,
        lr=1e-3,
        checkpoint_every=1,
        output_dir=None if out is None else str(out),
    )
    config = NFTConfig(**{**settings, **overrides})
    return NFTTrainer(tiny_pipeline("sd3"), redness, config, allow_config_change=allow_config_change)


def result(t: NFTTrainer) -> dict:
    return {
        "current": t.policies.state_dict("current"),
        "old": t.policies.state_dict("old"),
        "ema": t.ema,
        "optimizer": t.optimizer.state_dict()["state"],
    }


@functools.cache
def uninterrupted() -> tuple:
    t = trainer(None)
    t.train(progress=False)
    return result(t), t.history


def test_a_run_killed_at_every_point_of_a_checkpoint_save_ends_like_an_uninterrupted_one(tmp_path):
    check_kill_chain(lambda: trainer(tmp_path), result, *uninterrupted(), tmp_path)


@pytest.fixture(scope="module")
def one_step(tmp_path_factory):
    out = tmp_path_factory.mktemp("nft") / "run"
    trainer(out, steps=1).train(progress=False)
    return out


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "state.json").unlink(), "state.json is missing"),
        (lambda f: (f / "current.safetensors").write_bytes(b"\0" * 64), "current.safetensors is truncated"),
    ],
)
def test_a_damaged_checkpoint_is_refused_and_left_alone(one_step, tmp_path, damage, message):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(one_step, out)
    damage(out / "checkpoint")
    before = sorted(os.listdir(out / "checkpoint"))
    with pytest.raises(CheckpointError, match=message):
        trainer(out, steps=2)
    assert sorted(os.listdir(out / "checkpoint")) == before


def test_a_changed_config_is_refused_and_the_override_records_it(one_step, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(one_step, out)
    changed = dict(seed=1, lr=2e-3, group_size=3, objective="positive-only")
    with pytest.raises(CheckpointError) as refused:
        trainer(out, steps=2, **changed)
    for field in ("group_size: 2 -> 3", 'objective: "nft" -> "positive-only"', "lr: 0.001 -> 0.002", "seed: 0 -> 1"):
        assert field in str(refused.value)
    assert "--resume-with-changed-config" in str(refused.value) and "steps" not in str(refused.value)
    t = trainer(out, allow_config_change=True, steps=2, **changed)
    assert t.step == 1
    t.train(progress=False)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["seed"] == 1
    (entry,) = state["config_log"]  # the copied folder's output_dir changed too: an allowed change, recorded
    assert entry["step"] == 1 and entry["changes"].pop("output_dir")[1] == str(out)
    assert entry["changes"] == {
        "group_size": [2, 3],
        "lr": [0.001, 0.002],
        "objective": ["nft", "positive-only"],
        "seed": [0, 1],
        "steps": [1, 2],
    }
