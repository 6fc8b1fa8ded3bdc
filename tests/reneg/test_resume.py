"""Resuming the ReNeg trainer (tiny SD3 model): a run killed anywhere in a checkpoint save resumes with at most one
checkpoint interval lost and ends where an uninterrupted run ends; a damaged checkpoint and a changed config (seed,
lr, batch, init text) are refused and left alone; ``allow_config_change`` goes on and the embedding records it."""

from __future__ import annotations

import functools
import json
import os
import shutil

import pytest
from helpers import check_kill_chain, get_tiny

from negguide.core.checkpoint import CheckpointError
from negguide.reneg import NegativeEmbedding, ReNegConfig, ReNegTrainer


def redness(images, prompts):
    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def trainer(out, allow_config_change=False, **overrides) -> ReNegTrainer:
    settings = dict(
        prompts=["a red circle", "a blue square"],
        steps=2,
        batch_size=1,
        lr=5e-2,
        num_inference_steps=2,
        late_steps=1,
        guidance_scale=4.0,
        height=32,
        width=32,
        checkpoint_every=1,
        pipeline_kwargs={"max_sequence_length": 16},
        output_dir=None if out is None else str(out),
    )
    config = ReNegConfig(**{**settings, **overrides})
    return ReNegTrainer(get_tiny("sd3"), redness, config, allow_config_change=allow_config_change)


def result(t: ReNegTrainer) -> dict:
    return {"embedding": t.embedding().tensors, "optimizer": t.optimizer.state_dict()["state"]}


@functools.cache
def uninterrupted() -> tuple:
    t = trainer(None)
    t.train(progress=False)
    return result(t), t.history


def test_a_run_killed_at_every_point_of_a_checkpoint_save_ends_like_an_uninterrupted_one(tmp_path):
    check_kill_chain(lambda: trainer(tmp_path), result, *uninterrupted(), tmp_path)


@pytest.fixture(scope="module")
def one_step(tmp_path_factory):
    out = tmp_path_factory.mktemp("reneg") / "run"
    trainer(out, steps=1).train(progress=False)
    return out


def _flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: _flip_byte(f / "embedding.safetensors"), "embedding.safetensors is damaged"),
        (lambda f: (f / "state.json").unlink(), "state.json is missing"),
        (lambda f: (f / "manifest.json").write_text("not json"), "manifest.json is not valid JSON"),
    ],
)
def test_a_damaged_checkpoint_is_refused_and_left_alone(one_step, tmp_path, damage, message):
    out = tmp_path / "run"
    shutil.copytree(one_step, out)
    damage(out / "checkpoint")
    before = sorted(os.listdir(out / "checkpoint"))
    with pytest.raises(CheckpointError, match=message):
        trainer(out, steps=2)
    assert sorted(os.listdir(out / "checkpoint")) == before


def test_a_changed_config_is_refused_and_the_override_records_it(one_step, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_step, out)
    changed = dict(seed=3, lr=1e-2, batch_size=2, init_text="a shape")
    with pytest.raises(CheckpointError) as refused:
        trainer(out, steps=2, **changed)
    for field in ("batch_size: 1 -> 2", 'init_text: "" -> "a shape"', "lr: 0.05 -> 0.01", "seed: 0 -> 3"):
        assert field in str(refused.value)
    assert "--resume-with-changed-config" in str(refused.value)
    t = trainer(out, allow_config_change=True, steps=2, **changed)
    assert t.step == 1
    t.train(progress=False)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["seed"] == 3 and state["config_log"][0]["step"] == 1
    logged = json.loads(NegativeEmbedding.load(str(out / "negative_embedding.safetensors")).metadata["config_log"])
    assert logged == state["config_log"] and logged[0]["changes"]["init_text"] == ["", "a shape"]
