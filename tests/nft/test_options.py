"""DiffusionNFT options: the learning-rate schedule (a pure function of the step, resumable) and the rollout sampler."""

from __future__ import annotations

import math

import pytest
import torch

from negguide.nft import NFTConfig, NFTTrainer
from negguide.testing.tiny import tiny_pipeline

PROMPTS = ["a red circle", "a blue square"]


def config(**overrides) -> NFTConfig:
    settings = dict(
        prompts=PROMPTS,
        group_size=2,
        prompts_per_step=2,
        steps=3,
        num_inference_steps=2,
        lora_rank=4,
        lora_alpha=8.0,
        height=32,
        width=32,
        max_sequence_length=16,
        lr=1e-3,
        checkpoint_every=1,
    )
    return NFTConfig(**{**settings, **overrides})


def redness(images, prompts):
    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def test_constant_schedule_is_the_reference_default():
    c = config(steps=10)
    assert c.lr_schedule == "constant"
    assert [c.learning_rate(s) for s in range(10)] == [1e-3] * 10


def test_cosine_schedule_starts_at_lr_halves_midway_and_ends_near_zero():
    c = config(steps=100, lr_schedule="cosine")
    rates = [c.learning_rate(s) for s in range(100)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[50] == pytest.approx(5e-4)
    assert rates[99] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    assert rates[99] < 1e-6
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match=r"lr_schedule = 'linear' is not one of \('constant', 'cosine'\)"):
        config(lr_schedule="linear")


def test_every_update_uses_the_scheduled_rate(tmp_path):
    straight = NFTTrainer(tiny_pipeline("sd3"), redness, config(lr_schedule="cosine", output_dir=str(tmp_path / "a")))
    straight.train(progress=False)
    c = straight.config
    assert [h["lr"] for h in straight.history] == pytest.approx([c.learning_rate(s) for s in range(3)])
    assert straight.optimizer.param_groups[0]["lr"] == pytest.approx(c.learning_rate(2))
    # stopping after one step and resuming follows the same schedule: the same adapters, bit for bit
    NFTTrainer(
        tiny_pipeline("sd3"), redness, config(lr_schedule="cosine", steps=1, output_dir=str(tmp_path / "b"))
    ).train(progress=False)
    resumed = NFTTrainer(tiny_pipeline("sd3"), redness, config(lr_schedule="cosine", output_dir=str(tmp_path / "b")))
    resumed.train(progress=False)
    torch.testing.assert_close(
        resumed.policies.state_dict("current"), straight.policies.state_dict("current"), rtol=0, atol=0
    )


def test_stochastic_rollouts_differ_from_the_default_and_leave_the_pipeline_scheduler_alone():
    plain = NFTTrainer(tiny_pipeline("sd3"), redness, config()).collect(0)
    pipe = tiny_pipeline("sd3")  # the same weights (the tiny models are seeded)
    own = pipe.scheduler
    stochastic = NFTTrainer(pipe, redness, config(rollout_sampler="stochastic"))
    assert stochastic.rollout_scheduler.config.stochastic_sampling and not own.config.stochastic_sampling
    varied, again = stochastic.collect(0), stochastic.collect(0)
    assert pipe.scheduler is own  # evaluation and inference keep the deterministic sampler
    a, b, c = (torch.cat([m[2] for m in batch.micro]) for batch in (plain, varied, again))
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(b, c, rtol=0, atol=0)  # still a function of (seed, step, index)


def test_stochastic_rollouts_need_a_flow_model():
    with pytest.raises(ValueError, match="rollout_sampler = 'stochastic' needs a flow model"):
        NFTTrainer(tiny_pipeline("sd"), redness, config(rollout_sampler="stochastic"))
    with pytest.raises(ValueError, match=r"rollout_sampler = 'ode' is not one of"):
        config(rollout_sampler="ode")
