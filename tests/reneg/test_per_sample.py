"""ReNeg's per-sample variant: a few steps from the global embedding for one prompt, the best kept."""

from __future__ import annotations

import pytest
import torch
from helpers import get_tiny

from negguide.reneg import ReNegConfig, ReNegTrainer, per_sample_embedding


def redness(images, prompts):
    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def _config(**extra):
    base = dict(
        prompts=["a red circle"],
        steps=4,
        batch_size=2,
        lr=5e-2,
        num_inference_steps=3,
        late_steps=3,
        guidance_scale=4.0,
        height=32,
        width=32,
    )
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
    with pytest.raises(ValueError, match="confirm_samples = -1 must be an integer >= 0"):
        per_sample_embedding(pipe, redness, embedding, "a red circle", _config(), confirm_samples=-1)


def test_confirmation_keeps_the_tuned_embedding_only_if_it_also_wins_on_fresh_noise(monkeypatch):
    pipe = get_tiny("sd")
    global_embedding = ReNegTrainer(pipe, redness, _config(steps=1)).embedding()
    kept = per_sample_embedding(pipe, redness, global_embedding, "a blue square", _config(), confirm_samples=2)
    assert "kept tuned" in kept.metadata["per_sample_confirmation"]  # redness rises on any noise
    assert not torch.equal(kept.tensors["prompt_embeds"], global_embedding.tensors["prompt_embeds"])

    selection_score = ReNegTrainer.final_reward

    def fresh_noise_prefers_the_global(self, prompts, seed=0):
        if seed == 0:  # the selection: as it is
            return selection_score(self, prompts, seed)
        values = self.accelerator.unwrap_model(self.model).values["negative_prompt_embeds"]
        return -float((values.detach() - global_embedding.tensors["prompt_embeds"]).abs().sum())

    monkeypatch.setattr(ReNegTrainer, "final_reward", fresh_noise_prefers_the_global)
    reverted = per_sample_embedding(pipe, redness, global_embedding, "a blue square", _config(), confirm_samples=2)
    assert "kept global" in reverted.metadata["per_sample_confirmation"]
    torch.testing.assert_close(
        reverted.tensors["prompt_embeds"], global_embedding.tensors["prompt_embeds"], rtol=0, atol=0
    )


def test_load_embedding_sets_the_trained_tensors():
    pipe = get_tiny("sd")
    trainer = ReNegTrainer(pipe, redness, _config())
    start = trainer.embedding()
    trainer.train(progress=False)
    assert not torch.equal(trainer.embedding().tensors["prompt_embeds"], start.tensors["prompt_embeds"])
    trainer.load_embedding(start)
    torch.testing.assert_close(
        trainer.embedding().tensors["prompt_embeds"], start.tensors["prompt_embeds"], rtol=0, atol=0
    )
