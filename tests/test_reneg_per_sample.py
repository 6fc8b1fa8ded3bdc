"""ReNeg's per-sample variant: a few steps from the global embedding for one prompt, the best kept."""

from __future__ import annotations

import pytest
import torch
from conftest import get_tiny

from negguide.reneg import ReNegConfig, ReNegTrainer, per_sample_embedding


def redness(images, prompts):
    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def _config(**extra):
    base = dict(prompts=["a red circle"], steps=4, batch_size=2, lr=5e-2, num_inference_steps=3, late_steps=3,
                guidance_scale=4.0, height=32, width=32)
    base.update(extra)
    return ReNegConfig(**base)


def _final_reward(pipe, embedding, prompt):
    """The selection score of ``embedding``: complete samples with the per-sample run's fixed noise."""
    return ReNegTrainer(pipe, redness, _config(prompts=[prompt]), init=embedding).final_reward([prompt] * 2)


@pytest.mark.parametrize("selection", ["final", "step"])
def test_per_sample_improves_on_the_global_embedding_for_its_prompt(selection):
    pipe = get_tiny("sd")
    global_embedding = ReNegTrainer(pipe, redness, _config(steps=1)).embedding()
    before = {k: v.clone() for k, v in global_embedding.tensors.items()}
    meta_before = dict(global_embedding.metadata)
    tuned = per_sample_embedding(pipe, redness, global_embedding, "a blue square", _config(), selection=selection)
    assert tuned.metadata["per_sample_prompt"] == "a blue square"
    assert selection in tuned.metadata["per_sample_reward"]
    assert not torch.equal(tuned.tensors["prompt_embeds"], before["prompt_embeds"])
    # the global embedding is left as it was, tensors and metadata
    torch.testing.assert_close(global_embedding.tensors["prompt_embeds"], before["prompt_embeds"], rtol=0, atol=0)
    assert global_embedding.metadata == meta_before
    if selection == "final":  # what was selected on: complete samples of the prompt
        assert _final_reward(pipe, tuned, "a blue square") > _final_reward(pipe, global_embedding, "a blue square")


def test_final_reward_is_the_same_for_the_same_embedding_and_differs_for_another():
    pipe = get_tiny("sd")
    trainer = ReNegTrainer(pipe, redness, _config())
    first = trainer.final_reward(["a red circle"] * 2, seed=3)
    assert trainer.final_reward(["a red circle"] * 2, seed=3) == first
    trainer.train(progress=False)
    assert trainer.final_reward(["a red circle"] * 2, seed=3) != first


def test_per_sample_bad_arguments():
    pipe = get_tiny("sd")
    embedding = ReNegTrainer(pipe, redness, _config(steps=1)).embedding()
    with pytest.raises(ValueError, match="selection = 'best' must be 'final' or 'step'"):
        per_sample_embedding(pipe, redness, embedding, "a red circle", _config(), selection="best")
    with pytest.raises(ValueError, match="patience = 0 must be >= 1"):
        per_sample_embedding(pipe, redness, embedding, "a red circle", _config(), patience=0)
