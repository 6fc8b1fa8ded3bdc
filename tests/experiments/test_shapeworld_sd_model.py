"""The SD-format ShapeWorld model (experiments.shapeworld_models.train_model --family sd): shared frozen parts, both prediction
types' targets, resume equals not stopping, and the exported folder loads as a StableDiffusionPipeline."""

import os
from argparse import Namespace

import numpy as np
import pytest
import torch
from helpers import KILL_CHAIN, Killed, killed_during_save

from experiments.shapeworld_models import checkpoint as ck
from experiments.shapeworld_models.train_model import main as train_main
from experiments.shapeworld_models.train_unet import diffusion_target, load_sd_checkpoint, new_pipeline

pytestmark = pytest.mark.slow  # runs the bundled ShapeWorld model end to end

QUICK = ["--family", "sd", "--batch", "2", "--threads", "1", "--max-minutes", "10", "--lr", "1e-3"]


def _unet_weights(folder):
    return {k: v for k, v in ck.load(folder).group("model").items() if k.startswith("unet.")}


def test_resume_equals_not_stopping_and_the_export_loads(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train_main([*QUICK, "--ckpt", straight, "--out", str(tmp_path / "out"), "--max-steps", "4"])
    train_main([*QUICK, "--ckpt", resumed, "--out", str(tmp_path / "tmp_out"), "--max-steps", "2"])
    train_main([*QUICK, "--ckpt", resumed, "--out", str(tmp_path / "tmp_out"), "--max-steps", "4"])
    a, b = _unet_weights(straight), _unet_weights(resumed)
    assert a.keys() == b.keys() and len(a) > 50
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert ck.read_state(straight)["step"] == 4
    # the checkpoint holds only the UNet (VAE and text encoder are shared and frozen), and training moved it
    pipe, _ = load_sd_checkpoint(straight, use_ema=False)
    start = new_pipeline(Namespace(base="assets/shapeworld/sd3", prediction="epsilon", seed=0))
    assert not torch.equal(pipe.unet.conv_in.weight, start.unet.conv_in.weight)

    from diffusers import StableDiffusionPipeline

    from negguide.shapeworld.evaluate import load_pipeline

    exported = load_pipeline(str(tmp_path / "out"))
    assert isinstance(exported, StableDiffusionPipeline)
    assert exported.scheduler.config.prediction_type == "epsilon" and exported.vae.config.shift_factor == 0.0
    base = load_pipeline()
    for key, value in exported.vae.state_dict().items():
        torch.testing.assert_close(value, base.vae.state_dict()[key], rtol=0, atol=0, msg=f"vae.{key}")
    ids = exported.tokenizer(
        ["a red circle to the left of a square"], padding="max_length", return_tensors="pt"
    ).input_ids
    with torch.no_grad():  # the SD model conditions on the SD3 model's first CLIP encoder's hidden states
        torch.testing.assert_close(exported.text_encoder(ids)[0], base.text_encoder(ids).last_hidden_state)
    exported.set_progress_bar_config(disable=True)
    images = exported(
        "a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_a_run_killed_at_every_point_of_a_checkpoint_save_ends_like_an_uninterrupted_one(tmp_path):
    """A checkpoint after every step (--ckpt-minutes 0), one kill at each point of a save (helpers.KILL_CHAIN), each
    rerun resuming the last: the final weights are the uninterrupted run's; a changed flag is refused."""
    quick = [*QUICK, "--ckpt-minutes", "0", "--max-steps", "2", "--eval-minutes", "0"]
    straight, run = str(tmp_path / "straight"), str(tmp_path / "run")
    train_main([*quick, "--ckpt", straight, "--out", str(tmp_path / "out")])
    start = 0
    for point, resumes_at in KILL_CHAIN:
        assert (ck.read_state(run) or {"step": 0})["step"] == start
        with killed_during_save(point), pytest.raises(Killed):
            train_main([*quick, "--ckpt", run, "--out", str(tmp_path / "out_run")])
        start = resumes_at
    with pytest.raises(ValueError, match=r"\(lr: 0.001 -> 0.002\).*--resume-with-changed-config"):
        train_main([*quick, "--ckpt", run, "--out", str(tmp_path / "out_run"), "--lr", "2e-3"])
    train_main([*quick, "--ckpt", run, "--out", str(tmp_path / "out_run")])
    a, b = _unet_weights(straight), _unet_weights(run)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert ck.read_state(run)["step"] == 2 and sorted(os.listdir(run)) == ["checkpoint"]


def test_diffusion_targets_match_the_schedule():
    from experiments.shapeworld_models.components import build_sd_scheduler

    z0, noise, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2), torch.tensor([0, 500, 999])
    assert torch.equal(diffusion_target(build_sd_scheduler("epsilon"), z0, noise, t), noise)
    v_sched = build_sd_scheduler("v_prediction")
    ab = v_sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(diffusion_target(v_sched, z0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * z0)


def test_bad_base_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--base"):
        train_main([*QUICK, "--ckpt", str(tmp_path / "c"), "--base", str(tmp_path / "missing"), "--max-steps", "1"])
