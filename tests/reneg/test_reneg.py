"""ReNeg: negative embeddings (safetensors with metadata, checked on load, .bin converted without unpickling
objects) and the trainer (raises the reward on every family, resume equals not stopping, bad input stops early)."""

from __future__ import annotations

import pickle

import pytest
import torch
from helpers import call_kwargs, get_tiny

from negguide.perpneg.pipeline import PerpNegPipeline
from negguide.reneg import NegativeEmbedding, ReNegConfig, ReNegTrainer, null_embedding


def redness(images, prompts):
    """A differentiable toy reward: red minus blue, per image."""
    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def _config(family, **extra):
    kwargs = {"max_sequence_length": 16} if family in ("sd3", "flux") else {}
    if family == "flux":
        kwargs["true_cfg_scale"] = 4.0
    base = dict(
        prompts=["a red circle", "a blue square"],
        steps=3,
        batch_size=2,
        lr=5e-2,
        num_inference_steps=3,
        late_steps=2,
        guidance_scale=4.0,
        height=32,
        width=32,
        pipeline_kwargs=kwargs,
    )
    base.update(extra)
    return ReNegConfig(**base)


def _sequence(family):
    return {"sd": None, "sdxl": None, "sd3": 16 + 77, "flux": 16}[family]


# ------------------------------------------------------------------ the embedding type
def test_save_load_round_trip_with_metadata(family, tmp_path):
    pipe = get_tiny(family)
    emb = null_embedding(pipe, family, "blurry", _sequence(family))
    emb.metadata["base_model"] = "tiny"
    path = emb.save(str(tmp_path / "neg.safetensors"))
    again = NegativeEmbedding.load(path, pipe)
    assert again.family == family and again.metadata["base_model"] == "tiny" and again.metadata["init_text"] == "blurry"
    for name, tensor in emb.tensors.items():
        assert torch.equal(again.tensors[name], tensor)


def test_embedding_is_the_unconditional_branch_in_any_pipeline():
    pipe = get_tiny("sd")
    emb = null_embedding(pipe, "sd", "blurry")
    stock = pipe(["a red circle", "a square"], **emb.repeat(2).negative_kwargs(), **call_kwargs("sd")).images
    text = pipe(["a red circle", "a square"], negative_prompt=["blurry"] * 2, **call_kwargs("sd")).images
    torch.testing.assert_close(stock, text)  # the embedding of "blurry" is exactly the negative prompt "blurry"
    shared = PerpNegPipeline.from_pipe(pipe)(
        ["a red circle", "a square"], **emb.negative_kwargs(), **call_kwargs("sd")
    ).images
    torch.testing.assert_close(shared, stock)  # one row shared by the batch in PerpNegPipeline


@pytest.mark.parametrize("family", ["sd", "sd3", "flux"])
def test_one_row_embedding_serves_several_images_per_prompt(family):
    pipe = PerpNegPipeline.from_pipe(get_tiny(family))
    emb = null_embedding(pipe, family, "blurry", _sequence(family))
    shared = pipe("a red circle", num_images_per_prompt=2, **emb.negative_kwargs(), **call_kwargs(family)).images
    rows = pipe(["a red circle"] * 2, **emb.repeat(2).negative_kwargs(), **call_kwargs(family)).images
    torch.testing.assert_close(shared, rows)
    with_negatives = pipe(
        "a red circle", num_images_per_prompt=2, negatives=["a square"], **emb.negative_kwargs(), **call_kwargs(family)
    ).images  # and as Perp-Neg's unconditional branch
    assert with_negatives.shape == shared.shape and not torch.equal(with_negatives, shared)


def test_load_rejects_another_model_and_bad_tensors(tmp_path):
    sd = null_embedding(get_tiny("sd"), "sd")
    path = sd.save(str(tmp_path / "sd.safetensors"))
    with pytest.raises(ValueError, match="for a sd model but the pipeline is sdxl"):
        NegativeEmbedding.load(path, get_tiny("sdxl"))
    wider = NegativeEmbedding("sd", {"prompt_embeds": torch.zeros(1, 77, 999)})
    with pytest.raises(ValueError, match="trained for another model"):
        wider.check_compatible(get_tiny("sd"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        NegativeEmbedding("sd", {"prompt_embeds": torch.full((1, 77, 32), float("nan"))})
    with pytest.raises(ValueError, match="holds .*pooled_prompt_embeds.*, got \\['prompt_embeds'\\]"):
        NegativeEmbedding("sdxl", {"prompt_embeds": torch.zeros(1, 77, 64)})
    with pytest.raises(ValueError, match="one row"):
        NegativeEmbedding("sd", {"prompt_embeds": torch.zeros(2, 77, 32)})
    with pytest.raises(ValueError, match="family = 'sd4'"):
        NegativeEmbedding("sd4", {})
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        NegativeEmbedding.load(str(tmp_path / "text.safetensors"))


class _Payload:
    def __reduce__(self):  # what a malicious pickle does: run code on load
        return (print, ("this must never run",))


def test_bin_converter_reads_tensors_only(tmp_path, capsys):
    tensor = torch.randn(77, 32)
    torch.save(tensor, tmp_path / "neg.bin")
    emb = NegativeEmbedding.from_bin(str(tmp_path / "neg.bin"), "sd")
    assert emb.tensors["prompt_embeds"].shape == (1, 77, 32) and torch.equal(emb.tensors["prompt_embeds"][0], tensor)
    assert emb.metadata["converted_from"] == "neg.bin"
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"prompt_embeds": _Payload()}, f, protocol=2)  # torch.save's protocol: no warning
    with pytest.raises(ValueError, match="never unpickles objects"):
        NegativeEmbedding.from_bin(str(tmp_path / "evil.bin"), "sd")
    assert "must never run" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="not a negguide negative embedding"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        NegativeEmbedding.load(str(tmp_path / "other.safetensors"))


# ------------------------------------------------------------------ the trainer
def test_a_few_steps_change_the_embedding_and_raise_the_reward(family):
    trainer = ReNegTrainer(get_tiny(family), redness, _config(family))
    before_embedding = {k: v.clone() for k, v in trainer.embedding().tensors.items()}
    before = trainer.evaluate(0)
    trainer.train(progress=False)
    after = trainer.evaluate(0)
    for name, tensor in trainer.embedding().tensors.items():
        assert not torch.equal(tensor, before_embedding[name]), name
    assert after > before, (before, after)


def test_gradient_checkpointing_trains_the_same():
    from negguide.testing.tiny import tiny_pipeline

    plain = ReNegTrainer(get_tiny("sd"), redness, _config("sd", steps=2)).train(progress=False)
    pipe = tiny_pipeline("sd")
    trainer = ReNegTrainer(pipe, redness, _config("sd", steps=2, gradient_checkpointing=True))
    assert pipe.unet.is_gradient_checkpointing
    checkpointed = trainer.train(progress=False)
    torch.testing.assert_close(checkpointed.tensors["prompt_embeds"], plain.tensors["prompt_embeds"])


def test_resume_equals_not_stopping(tmp_path):
    whole = ReNegTrainer(
        get_tiny("sd3"), redness, _config("sd3", steps=4, checkpoint_every=2, output_dir=str(tmp_path / "a"))
    )
    want = whole.train(progress=False)
    first = ReNegTrainer(
        get_tiny("sd3"), redness, _config("sd3", steps=4, checkpoint_every=2, output_dir=str(tmp_path / "b"))
    )
    for _ in range(3):  # killed during step 3: the checkpoint of step 2 is what survives
        first.train_step()
        if first.step == 2:
            first.save_checkpoint(str(tmp_path / "b" / "checkpoint"))
    resumed = ReNegTrainer(
        get_tiny("sd3"), redness, _config("sd3", steps=4, checkpoint_every=2, output_dir=str(tmp_path / "b"))
    )
    assert resumed.step == 2
    got = resumed.train(progress=False)
    for name in want.tensors:
        assert torch.equal(got.tensors[name], want.tensors[name]), name
    assert [h["reward"] for h in resumed.history] == [h["reward"] for h in whole.history]
    assert (tmp_path / "b" / "reward_curve.png").stat().st_size > 1000
    assert NegativeEmbedding.load(str(tmp_path / "b" / "negative_embedding.safetensors")).metadata["steps"] == "4"


@pytest.mark.parametrize(
    "reward, config, match",
    [
        (lambda images, prompts: images.mean(dim=(1, 2, 3))[:1], {}, "shape \\[2\\]"),
        (lambda images, prompts: images.mean(dim=(1, 2, 3)).detach(), {}, "no gradient"),
        (lambda images, prompts: images.mean(dim=(1, 2, 3)) * float("nan"), {}, "NaN"),
    ],
)
def test_bad_rewards_stop_before_any_update(reward, config, match):
    trainer = ReNegTrainer(get_tiny("sd"), reward, _config("sd", **config))
    before = trainer.embedding().tensors["prompt_embeds"].clone()
    with pytest.raises(ValueError, match=match):
        trainer.train_step()
    assert torch.equal(trainer.embedding().tensors["prompt_embeds"], before)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: _config("sd", prompts=[]), "non-empty list"),
        (lambda: _config("sd", lr=-1.0), "lr"),
        (lambda: _config("sd", late_steps=9), "late_steps = 9 exceeds"),
        (lambda: _config("sd", steps=0), "steps = 0"),
        (
            lambda: ReNegTrainer(get_tiny("sd"), redness, _config("sd", batch_size=3, gradient_accumulation_steps=2)),
            "does not split",
        ),
        (lambda: ReNegTrainer(get_tiny("sd"), redness, _config("sd", output_dir="/proc/negguide")), "not writable"),
        (
            lambda: ReNegTrainer(get_tiny("sd"), redness, _config("sd"), init=null_embedding(get_tiny("sdxl"), "sdxl")),
            "for a sdxl model",
        ),
        (lambda: ReNegTrainer(get_tiny("sd"), "reward", _config("sd")), None),
    ],
)
def test_bad_input_raises(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_embedding_metadata_names_a_log_probability_reward():
    from negguide.reneg.trainer import describe_reward
    from negguide.shapeworld.reward import ShapeWorldReward

    assert describe_reward(ShapeWorldReward.from_pretrained()) == "ShapeWorldReward"
    assert describe_reward(ShapeWorldReward.from_pretrained(log_prob=True)) == "ShapeWorldReward(log_prob=True)"
    assert describe_reward(lambda images, prompts: images.mean((1, 2, 3))) == "function"


def picky(images, prompts):
    """A reward that knows circles and squares only (as a ShapeWorld reward knows its own vocabulary)."""
    unknown = [p for p in prompts if "circle" not in p and "square" not in p]
    if unknown:
        raise KeyError(f"cannot read {unknown[0]!r}")
    return redness(images, prompts)


@pytest.mark.parametrize(
    "reward, extra, match",
    [
        (picky, dict(prompts=["a red circle", "a purple hexagon"]), "cannot score the training prompts.*hexagon"),
        (redness, dict(height=33, width=32), "height = 33 is not a multiple of"),
    ],
)
def test_the_trainer_checks_prompts_and_size_before_any_step(reward, extra, match, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a training step ran before the input was checked")

    monkeypatch.setattr(ReNegTrainer, "loss", refuse)
    with pytest.raises(ValueError, match=match):
        ReNegTrainer(get_tiny("sd"), reward, _config("sd", **extra))
