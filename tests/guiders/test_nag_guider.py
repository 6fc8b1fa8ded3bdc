"""NAGGuider on tiny modular pipelines (SDXL, SD3, Flux): the NAG pipeline path's latents, NAG's processors only
on the conditional batch and restored after it, windows, and exact no-ops."""

from __future__ import annotations

import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance

from negguide.guiders import NAGGuider
from negguide.nag import NAGSettings
from negguide.nag.hooks import ATTR

CFG = {"sdxl": 5.0, "sd3": 5.0, "flux": 4.0}
NAG = dict(negatives=["red", "circle"], negative_weights=[3.0, 1.0], negative_windows=[(0.0, 1.0), (0.5, 1.0)])


def processors(denoiser) -> dict:
    return {name: id(module.processor) for name, module in denoiser.named_modules() if hasattr(module, "processor")}


@pytest.mark.parametrize("cfg", [False, True], ids=["nag-only", "with-cfg"])
def test_equals_the_nag_pipeline_path(modular, modular_family, cfg):
    family = modular_family
    scale = CFG[family] if cfg else 1.0
    guider = NAGGuider(guidance_scale=scale, **NAG)
    got = modular.run(family, guider)
    # Flux's pipeline runs true CFG only with a negative prompt; "" is the unconditional prompt negguide's Flux
    # blocks encode for a guider that needs one
    extra = {"negative_prompt": ""} if family == "flux" and cfg else {}
    want = modular.perpneg(family, scale, negative_mode="nag", nag=NAGSettings(**NAG), **extra)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * float(want.abs().max()))
    assert not torch.allclose(got, modular.run(family, ClassifierFreeGuidance(guidance_scale=scale)), atol=1e-3)
    assert [r.branches for r in guider.step_records] == [["positive", "uncond"] if cfg else ["positive"]] * 4


def test_nag_guides_only_the_conditional_batch_and_restores_the_processors(modular, modular_family):
    denoiser = modular.denoiser(modular_family)
    before = processors(denoiser)
    seen: list = []
    hook = denoiser.register_forward_pre_hook(lambda m, a: seen.append(getattr(m, ATTR, None) is not None))
    try:
        modular.run(modular_family, NAGGuider(guidance_scale=CFG[modular_family], negatives=["red"]))
    finally:
        hook.remove()
    assert seen == [True, False] * modular.steps  # (conditional, unconditional) per step
    assert processors(denoiser) == before and getattr(denoiser, ATTR, None) is None


def test_windows_pick_the_steps(modular, modular_family):
    family, scale = modular_family, CFG[modular_family]
    delayed = modular.predictions(
        family, NAGGuider(guidance_scale=scale, negatives=["red"], negative_windows=[(0.5, 1.0)])
    )
    plain = modular.predictions(family, ClassifierFreeGuidance(guidance_scale=scale))
    assert [torch.equal(a, b) for a, b in zip(delayed, plain)] == [True, True, False, False]


@pytest.mark.parametrize(
    "settings", [dict(negative_weights=[0.0]), dict(alpha=0.0), dict()], ids=["scale-0", "alpha-0", "no-negatives"]
)
def test_switched_off_is_classifier_free_guidance(modular, modular_family, settings):
    settings = {"negatives": ["red"], **settings} if settings else {}
    scale = CFG[modular_family]
    got = modular.run(modular_family, NAGGuider(guidance_scale=scale, **settings))
    assert torch.equal(got, modular.run(modular_family, ClassifierFreeGuidance(guidance_scale=scale)))


def test_a_failed_forward_leaves_no_processor_behind(modular):
    denoiser = modular.denoiser("sdxl")
    before = processors(denoiser)

    def fail(module, args, kwargs, output):
        raise RuntimeError("the denoiser failed")

    hook = denoiser.register_forward_hook(fail, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="the denoiser failed"):
            modular.run("sdxl", NAGGuider(guidance_scale=5.0, negatives=["red"]))
    finally:
        hook.remove()
    assert processors(denoiser) == before and getattr(denoiser, ATTR, None) is None
