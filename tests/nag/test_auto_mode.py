"""PerpNegPipeline's negative_mode: NAG where CFG is off, CFG-based guidance where it is on, loud when neither acts."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import call_kwargs, get_tiny

from negguide.nag import NAGSettings
from negguide.nag.processor import NAGProcessor
from negguide.negtome import NegToMeSettings
from negguide.perpneg import PerpNegPipeline
from negguide.perpneg.pipeline import NegativeIgnoredWarning

PROMPT = "a red shape"
NEGATIVE = ["a red circle"]


def scale_name(family: str) -> str:
    return "true_cfg_scale" if family == "flux" else "guidance_scale"


def kwargs(family: str, scale: float, **extra) -> dict:
    return call_kwargs(family, **{scale_name(family): scale}, **extra)


class NAGSpy:
    """Counts the guided attention calls that ran with NAG active (the processor wrapper saw active negatives)."""

    def __init__(self, monkeypatch):
        self.active = 0
        original = NAGProcessor._run
        spy = self

        def counted(processor, *args, **kw):
            if processor.handle.state.on:
                spy.active += 1
            return original(processor, *args, **kw)

        monkeypatch.setattr(NAGProcessor, "_run", counted)


def pipeline(family: str) -> PerpNegPipeline:
    return PerpNegPipeline.from_pipe(get_tiny(family))


def test_auto_picks_nag_when_cfg_is_off(family, monkeypatch):
    pipe, spy = pipeline(family), NAGSpy(monkeypatch)
    base = pipe(PROMPT, **kwargs(family, 1.0)).images
    with warnings.catch_warnings():
        warnings.simplefilter("error", NegativeIgnoredWarning)
        guided = pipe(PROMPT, negatives=NEGATIVE, **kwargs(family, 1.0)).images
    assert spy.active > 0
    assert pipe.step_records == []  # no extra denoiser rows: the diffusers call ran with NAG's hooks
    assert not torch.equal(guided, base)


def test_auto_picks_cfg_based_guidance_when_cfg_is_on(family, monkeypatch):
    pipe, spy = pipeline(family), NAGSpy(monkeypatch)
    pipe(PROMPT, negatives=NEGATIVE, **kwargs(family, 4.0))
    assert spy.active == 0
    assert all(r.branches == ["uncond", "positive", "negative:0"] for r in pipe.step_records)


def test_cfg_free_flag_sends_negatives_to_nag(family, monkeypatch):
    pipe, spy = pipeline(family), NAGSpy(monkeypatch)
    pipe.negguide_cfg_free = True
    pipe(PROMPT, negatives=NEGATIVE, **kwargs(family, 4.0))
    assert spy.active > 0
    assert all("negative:0" not in r.branches for r in pipe.step_records)  # CFG runs, the negative is NAG's


def test_both_runs_nag_and_perp_neg(family, monkeypatch):
    pipe, spy = pipeline(family), NAGSpy(monkeypatch)
    pipe(PROMPT, negatives=NEGATIVE, negative_mode="both", nag=NAGSettings(alpha=0.5), **kwargs(family, 4.0))
    assert spy.active > 0
    assert all(r.branches == ["uncond", "positive", "negative:0"] for r in pipe.step_records)


def test_nag_on_perp_neg_rows_equals_nag_alone_on_cfg(family):
    """NAG guides only the positive branch's rows of the batched step: with CFG on, 'nag' equals plain CFG + NAG."""
    pipe = pipeline(family)
    plain = pipe(PROMPT, **kwargs(family, 4.0, **({"negative_prompt": ""} if family == "flux" else {}))).images
    guided = pipe(PROMPT, negatives=NEGATIVE, negative_mode="nag", **kwargs(family, 4.0)).images
    assert guided.shape == plain.shape and not torch.equal(guided, plain)
    assert all(r.branches == ["uncond", "positive"] for r in pipe.step_records)


def test_warns_when_negatives_cannot_act(family):
    pipe = pipeline(family)
    with pytest.warns(NegativeIgnoredWarning, match=f"{scale_name(family)}.*negative_mode='nag'"):
        pipe(PROMPT, negatives=NEGATIVE, negative_mode="cfg", **kwargs(family, 0.0))


def test_no_negatives_is_the_plain_diffusers_call(family):
    pipe = pipeline(family)
    inner = get_tiny(family)
    for mode in ("auto", "nag", "both"):
        assert torch.equal(
            pipe(PROMPT, negative_mode=mode, **kwargs(family, 1.0)).images, inner(PROMPT, **kwargs(family, 1.0)).images
        )


def test_bad_mode_and_settings_are_rejected():
    pipe = pipeline("sd")
    with pytest.raises(ValueError, match="negative_mode"):
        pipe(PROMPT, negative_mode="nope", **kwargs("sd", 1.0))
    with pytest.raises(TypeError, match="NAGSettings"):
        pipe(PROMPT, nag={"tau": 2.0}, **kwargs("sd", 1.0))


def test_nag_composes_with_negtome(family, monkeypatch):
    pipe, spy = pipeline(family), NAGSpy(monkeypatch)
    out = pipe(
        PROMPT,
        negatives=NEGATIVE,
        negtome=NegToMeSettings(window=(0.0, 1.0), min_feature_size=0),
        **kwargs(family, 1.0, num_images_per_prompt=2),
    ).images
    assert spy.active > 0 and torch.isfinite(out).all()


def test_zero_weight_negatives_stay_off_on_the_nag_path(family, monkeypatch):
    pipe, spy = pipeline(family), NAGSpy(monkeypatch)
    base = pipe(PROMPT, **kwargs(family, 1.0)).images
    got = pipe(PROMPT, negatives=NEGATIVE, negative_weights=[0.0], **kwargs(family, 1.0)).images
    assert spy.active == 0 and torch.equal(got, base)


def test_warns_when_negative_prompt_meets_cfg_off(family):
    """diffusers drops negative_prompt where CFG is off: negguide says so and names what would make it act."""
    pipe = pipeline(family)
    with pytest.warns(NegativeIgnoredWarning, match=f"negative_prompt is ignored at {scale_name(family)}.*negatives="):
        pipe(PROMPT, negative_prompt="a red circle", **kwargs(family, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NegativeIgnoredWarning)
        pipe(PROMPT, negative_prompt="a red circle", **kwargs(family, 4.0))


def test_nag_composes_with_a_learned_negative_embedding_and_a_lora_in_one_call(monkeypatch):
    """CFG on with a learned unconditional branch (a ReNeg embedding), a LoRA on the UNet, and the negatives
    through NAG, in one call: each of the three changes the output, and NAG guides."""
    from peft import LoraConfig

    from negguide.reneg import null_embedding
    from negguide.testing import tiny_pipeline

    pipe = PerpNegPipeline.from_pipe(tiny_pipeline("sd"))  # its own modules: the LoRA stays out of other tests
    learned = null_embedding(pipe, "sd", "a blue square").negative_kwargs()
    both = dict(negatives=NEGATIVE, negative_mode="nag", **learned, **kwargs("sd", 4.0))
    without_lora = pipe(PROMPT, **both).images
    without_nag = pipe(PROMPT, **learned, **kwargs("sd", 4.0)).images
    pipe.unet.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    spy = NAGSpy(monkeypatch)
    guided = pipe(PROMPT, **both).images
    assert spy.active > 0
    assert not torch.equal(guided, without_lora) and not torch.equal(without_lora, without_nag)
    plain_u = pipe(PROMPT, negatives=NEGATIVE, negative_mode="nag", **kwargs("sd", 4.0)).images
    assert not torch.equal(guided, plain_u)  # the learned unconditional branch is in use
