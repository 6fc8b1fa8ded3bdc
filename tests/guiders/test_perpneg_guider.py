"""PerpNegGuider on tiny modular pipelines (SDXL, SD3, Flux): PerpNegPipeline's latents with the same settings,
diffusers' ClassifierFreeGuidance without negatives or disabled, and windows that skip the negative branches."""

from __future__ import annotations

import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance

from negguide.guiders import PerpNegGuider

SCALE = {"sdxl": 7.5, "sd3": 7.0, "flux": 4.0}


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to float32 noise: the pipeline batches all branches in one forward, the modular loop runs one
    forward per branch, and the guidance scale amplifies the difference."""
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * float(want.abs().max()))


def test_equals_perpneg_pipeline(modular, modular_family):
    family, scale = modular_family, SCALE[modular_family]
    options = dict(negatives=["red", "circle"], negative_weights=[1.5, 0.5], negative_windows=[(0.0, 1.0), (0.5, 1.0)])
    guider = PerpNegGuider(guidance_scale=scale, **options)
    got = modular.run(family, guider)
    want = modular.perpneg(family, scale, negative_mode="cfg", **options)
    close(got, want)
    assert not torch.allclose(got, modular.run(family, ClassifierFreeGuidance(guidance_scale=scale)), atol=1e-3)
    assert [r.branches for r in guider.step_records] == [["positive", "uncond", "negative:0"]] * 2 + [
        ["positive", "uncond", "negative:0", "negative:1"]
    ] * 2


@pytest.mark.parametrize(
    "options",
    [
        dict(negatives=["red"], negative_weights=[1.2], positives=["a square"], positive_weights=[0.7]),
        dict(negatives=["red", "circle"], negative_weights=[1.0, 2.0], mode="plain"),
        dict(negatives=["blue"], eps=1e-3),
    ],
    ids=["extra-positive", "plain", "eps"],
)
def test_every_setting_equals_the_pipeline(modular, options):
    call = dict(options)
    call["guidance_mode"] = call.pop("mode", "perp_neg")
    call["perp_neg_eps"] = call.pop("eps", 1e-8)
    got = modular.run("sdxl", PerpNegGuider(guidance_scale=6.0, **options))
    close(got, modular.perpneg("sdxl", 6.0, negative_mode="cfg", **call))


@pytest.mark.parametrize(
    "prompts, images", [(["a red shape", "a blue square"], 1), ("a red shape", 2)], ids=["two-prompts", "two-images"]
)
def test_batches_equal_the_pipeline(modular, prompts, images):
    # (several prompts with several images each are left out: diffusers' SDXL input step orders the pooled
    # embeddings image-major there and the prompt embeddings prompt-major, so the stock blocks differ from
    # StableDiffusionXLPipeline already)
    from helpers import call_kwargs, get_tiny

    from negguide import PerpNegPipeline

    options = dict(negatives=["red", "square"], negative_weights=[1.0, 0.7])
    got = modular.run(
        "sdxl", PerpNegGuider(guidance_scale=6.0, **options), prompt=prompts, num_images_per_prompt=images
    )
    pipe = PerpNegPipeline.from_pipe(get_tiny("sdxl"))
    pipe.set_progress_bar_config(disable=True)
    want = pipe(prompts, **options, **call_kwargs("sdxl", guidance_scale=6.0, num_images_per_prompt=images)).images
    assert got.shape[0] == 2
    close(got, want)


@pytest.mark.parametrize(
    "options", [dict(), dict(negatives=["red", "circle"], negative_weights=[0.0, 0.0])], ids=["none", "zero-weights"]
)
def test_without_negatives_is_classifier_free_guidance(modular, modular_family, options):
    scale = SCALE[modular_family]
    guider = PerpNegGuider(guidance_scale=scale, guidance_rescale=0.3, **options)
    got = modular.run(modular_family, guider)
    want = modular.run(modular_family, ClassifierFreeGuidance(guidance_scale=scale, guidance_rescale=0.3))
    assert torch.equal(got, want)
    assert guider.branch_texts() == [] and all(r.branches == ["positive", "uncond"] for r in guider.step_records)


@pytest.mark.parametrize("family", ["sdxl", "sd3"])  # Flux: test_flux_blocks_without_guidance_are_diffusers'
def test_negguide_blocks_with_a_stock_guider_compute_what_the_stock_blocks_compute(modular, family):
    cfg = ClassifierFreeGuidance(guidance_scale=SCALE[family])
    stock = modular.run(family, cfg, negguide=False)
    assert torch.equal(modular.run(family, cfg), stock)


def test_flux_blocks_without_guidance_are_diffusers(modular):
    stock = modular.run("flux", ClassifierFreeGuidance(guidance_scale=1.0), negguide=False)  # no guider is used
    assert torch.equal(modular.run("flux", ClassifierFreeGuidance(guidance_scale=1.0)), stock)


def test_flux_true_cfg_with_a_diffusers_guider_is_flux_pipelines(modular):
    # negguide's Flux blocks encode the unconditional prompt ("" by default) for any guider that asks for it
    from helpers import call_kwargs, get_tiny

    pipe = get_tiny("flux")
    want = pipe(
        modular.prompt, negative_prompt="", **call_kwargs("flux", steps=modular.steps, true_cfg_scale=4.0)
    ).images
    want = type(pipe)._unpack_latents(want, 32, 32, pipe.vae_scale_factor)
    got = modular.run("flux", ClassifierFreeGuidance(guidance_scale=4.0))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_disabled_is_classifier_free_guidance_disabled(modular, modular_family):
    family = modular_family
    guider = PerpNegGuider(guidance_scale=SCALE[family], negatives=["red"], enabled=False)
    got = modular.run(family, guider)
    assert torch.equal(got, modular.run(family, ClassifierFreeGuidance(guidance_scale=1.0)))  # the conditional only
    if family != "sdxl":  # diffusers' SDXL loop re-enables its guider (see test_a_guider_built_disabled_stays_off)
        assert torch.equal(
            got, modular.run(family, ClassifierFreeGuidance(guidance_scale=SCALE[family], enabled=False))
        )
    assert [r.branches for r in guider.step_records] == [["positive"]] * modular.steps


def test_a_guider_built_disabled_stays_off():
    # diffusers' SDXL denoise loop calls guider.enable() at every run: a guider built with enabled=False ignores it
    guider = PerpNegGuider(negatives=["red"], enabled=False)
    guider.enable()
    assert not guider._enabled and guider.num_conditions == 1
    guider = PerpNegGuider(negatives=["red"])
    guider.disable()
    assert guider.num_conditions == 1
    guider.enable()
    assert guider.num_conditions == 3


def test_windows_skip_the_negative_branches(modular, modular_family):
    family, scale = modular_family, SCALE[modular_family]
    rows = modular.StepRows(modular.denoiser(family))
    try:
        guider = PerpNegGuider(guidance_scale=scale, negatives=["red"], negative_windows=[(0.5, 1.0)])
        delayed = modular.predictions(family, guider)
    finally:
        rows.remove()
    plain = modular.predictions(family, ClassifierFreeGuidance(guidance_scale=scale))
    assert rows.per_step() == [2, 2, 3, 3] == [r.rows for r in guider.step_records]
    assert [torch.equal(a, b) for a, b in zip(delayed, plain)] == [True, True, False, False]


def test_a_window_that_never_opens_costs_nothing(modular, modular_family):
    family, scale = modular_family, SCALE[modular_family]
    rows = modular.StepRows(modular.denoiser(family))
    try:
        never = modular.run(
            family, PerpNegGuider(guidance_scale=scale, negatives=["red"], negative_windows=[(1.0, 1.0)])
        )
    finally:
        rows.remove()
    assert rows.per_step() == [2] * modular.steps
    assert torch.equal(never, modular.run(family, ClassifierFreeGuidance(guidance_scale=scale)))


def test_guider_window_bounds_every_branch(modular):
    guider = PerpNegGuider(guidance_scale=6.0, negatives=["red"], start=0.5)
    modular.run("sdxl", guider)
    assert [r.branches for r in guider.step_records] == [["positive"]] * 2 + [["positive", "uncond", "negative:0"]] * 2
