"""PerpNegPipeline on the tiny models of every family: identity when off, the math when on, batching, windows."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import ForwardCounter, call_kwargs, get_tiny

from negguide import PerpNegPipeline
from negguide.core.families import get_adapter, get_nested, set_nested

PROMPT = "a red shape"
SCALE_ARG = {"sd": "guidance_scale", "sdxl": "guidance_scale", "sd3": "guidance_scale", "flux": "true_cfg_scale"}


def perp_of(pipe) -> PerpNegPipeline:
    wrapped = PerpNegPipeline.from_pipe(pipe)
    wrapped.set_progress_bar_config(disable=True)
    return wrapped


def denoiser_of(pipe):
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


# ----------------------------------------------------------------------------- independent reference
def reference_perp(a, b, eps=1e-8):
    """perp(a, b) one sample at a time, written out independently of the library."""
    rows = []
    for ai, bi in zip(a.double(), b.double()):
        rows.append(ai - float((ai * bi).sum()) / (float((bi * bi).sum()) + eps) * bi)
    return torch.stack(rows).to(a.dtype)


def reference_latents(pipe, family, prompt, negatives, weights, scale, kwargs):
    """The diffusers pipeline with its guidance off and a test hook that evaluates the Perp-Neg formula
    (Armandpour et al., arXiv 2304.04968) from separate, unbatched forwards of each branch (each prompt encoded on its own)."""
    adapter = get_adapter(family)
    batch = 1 if isinstance(prompt, str) else len(prompt)
    _, uncond = adapter.encode_pair(pipe, {"prompt": prompt, **kwargs}, batch, 1, torch.device("cpu"))
    options = {"max_sequence_length": kwargs["max_sequence_length"]} if "max_sequence_length" in kwargs else {}
    neg_conds = [adapter.encode(pipe, [n] * batch, 1, torch.device("cpu"), options) for n in negatives]
    denoiser = denoiser_of(pipe)
    names = list(inspect.signature(denoiser.forward).parameters)

    def hook(module, args, kw, output):
        call = dict(zip(names, args)) | dict(kw)

        def run(cond):
            branch = dict(call)
            for key in adapter.conditioning_keys:
                if cond is not None:
                    set_nested(branch, key, cond[key])
            return module.forward(**branch)[0]

        pos = run(None)
        u = run(uncond)
        d_pos = pos - u
        guided = d_pos.clone()
        for w, cond in zip(weights, neg_conds):
            guided = guided - w * reference_perp(run(cond) - u, d_pos)
        return (u + scale * guided,)

    handle = denoiser.register_forward_hook(hook, with_kwargs=True)
    try:
        off = {SCALE_ARG[family]: 1.0}
        return pipe(prompt, **{**kwargs, **off}).images
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- identity when off
@pytest.mark.parametrize("how", ["no negatives", "zero weights"])
def test_off_is_bit_identical_to_diffusers(family, how):
    # (Flux runs CFG only with a negative prompt, as two forwards; test_plain_mode_... covers that case)
    pipe = get_tiny(family)
    extra = {}
    expected = pipe(PROMPT, **call_kwargs(family, **extra)).images
    options = {} if how == "no negatives" else {"negatives": ["red", "circle"], "negative_weights": [0.0, 0.0]}
    got = perp_of(pipe)(PROMPT, **options, **call_kwargs(family, **extra)).images
    assert torch.equal(got, expected)


def test_plain_mode_equals_diffusers_negative_prompt(family):
    pipe = get_tiny(family)
    expected = pipe(PROMPT, negative_prompt="red", **call_kwargs(family)).images
    got = perp_of(pipe)(PROMPT, negatives=["red"], guidance_mode="plain", **call_kwargs(family)).images
    if family == "flux":
        # diffusers' Flux runs its two branches as two forwards; negguide batches them into one
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, expected)


# ----------------------------------------------------------------------------- the math
def test_final_latents_equal_the_formula(family):
    pipe = get_tiny(family)
    negatives, weights = ["red", "circle"], [1.5, 0.5]
    kwargs = call_kwargs(family)
    scale = 4.0 if family == "flux" else 7.5
    kwargs[SCALE_ARG[family]] = scale
    got = perp_of(pipe)(PROMPT, negatives=negatives, negative_weights=weights, **kwargs).images
    expected = reference_latents(pipe, family, PROMPT, negatives, weights, scale, call_kwargs(family))
    assert not torch.equal(got, pipe(PROMPT, **call_kwargs(family, **{SCALE_ARG[family]: scale})).images)
    # float32 noise only: batched vs unbatched forwards, amplified by the guidance scale (SD latents reach ~15)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-5 * float(expected.abs().max()))


def test_negative_equal_to_positive_is_no_negative(family):
    pipe = get_tiny(family)
    extra = {"negative_prompt": ""} if family == "flux" else {}
    plain = pipe(PROMPT, **call_kwargs(family, **extra)).images
    same = perp_of(pipe)(PROMPT, negatives=[PROMPT], negative_weights=[2.0], **call_kwargs(family)).images
    torch.testing.assert_close(same, plain, rtol=1e-4, atol=1e-4)


def test_batch_equals_single_runs(family):
    pipe = perp_of(get_tiny(family))
    prompts = ["a red shape", "a blue square"]
    options = dict(negatives=["red", "square"], negative_weights=[1.0, 0.7])
    batched = pipe(
        prompts, **options, **call_kwargs(family, generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    ).images
    for i, seed in enumerate((3, 4)):
        single = pipe(
            prompts[i], **options, **call_kwargs(family, generator=torch.Generator().manual_seed(seed))
        ).images
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-4, atol=1e-4)


def test_num_images_per_prompt_and_shared_learned_embedding():
    pipe = get_tiny("sd")
    learned = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))
    kwargs = call_kwargs("sd", num_images_per_prompt=2)
    got = perp_of(pipe)(
        [PROMPT, "a cat"], negative_prompt_embeds=learned, **call_kwargs("sd", num_images_per_prompt=2)
    ).images
    prompt_embeds, _ = pipe.encode_prompt([PROMPT, "a cat"], "cpu", 1, False)
    expected = pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=learned.expand(2, -1, -1), **kwargs).images
    assert got.shape[0] == 4 and torch.equal(got, expected)


# ----------------------------------------------------------------------------- cost and windows
def test_one_forward_per_step_with_all_branches(family):
    pipe = perp_of(get_tiny(family))
    counter = ForwardCounter(denoiser_of(pipe))
    try:
        pipe(PROMPT, negatives=["red", "circle", "blue"], positives=["a square"], **call_kwargs(family, steps=3))
    finally:
        counter.remove()
    assert counter.calls == 3
    assert counter.rows == [2 + 1 + 3] * 3  # u, positive, one extra positive, three negatives
    assert [r.rows for r in pipe.step_records] == counter.rows


def test_window_skips_the_branch_and_matches_no_negative_outside(family):
    pipe = perp_of(get_tiny(family))
    steps = 4
    seen: dict = {"with": [], "without": []}

    def grab(key):
        def callback(p, i, t, kw):
            seen[key].append(kw["latents"].clone())
            return kw

        return callback

    extra = {"negative_prompt": ""} if family == "flux" else {}
    counter = ForwardCounter(denoiser_of(pipe))
    try:
        pipe(
            PROMPT,
            negatives=["red"],
            negative_windows=[(0.5, 1.0)],
            callback_on_step_end=grab("with"),
            **call_kwargs(family, steps=steps),
        )
    finally:
        counter.remove()
    pipe(PROMPT, callback_on_step_end=grab("without"), **call_kwargs(family, steps=steps, **extra))
    assert counter.rows == [2, 2, 3, 3]
    for i in range(2):  # the window is closed for the first half: exactly no negative
        assert torch.equal(seen["with"][i], seen["without"][i])
    assert not torch.allclose(seen["with"][-1], seen["without"][-1])
    # a window that never opens is the same as no negative, and costs nothing
    never = pipe(PROMPT, negatives=["red"], negative_windows=[(1.0, 1.0)], **call_kwargs(family, steps=steps)).images
    assert torch.equal(never, seen["without"][-1])


# ----------------------------------------------------------------------------- bad input, before compute
BAD = [
    (
        dict(negatives=["red"], negative_weights=[1.0, 2.0]),
        ValueError,
        "negative_weights has 2 entries but negatives has 1",
    ),
    (dict(negatives=["red"], negative_weights=[-1.0]), ValueError, "negative"),
    (dict(negatives=["red"], negative_weights=[float("nan")]), ValueError, "not finite"),
    (dict(negatives=["red"], negative_weights=[float("inf")]), ValueError, "not finite"),
    (dict(negatives=["red"], negative_windows=[(0.5, 1.5)]), ValueError, "outside"),
    (dict(negatives=["red"], negative_windows=[(0.8, 0.2)]), ValueError, "reversed"),
    (
        dict(negatives=["red", "blue"], negative_windows=[(0.1, 0.2)]),
        ValueError,
        "one .start, end. window per negative",
    ),
    (dict(negatives=[3]), TypeError, "negatives"),
    (dict(negatives=["red"], guidance_mode="sideways"), ValueError, "mode"),
    (dict(negative_prompt_embeds=torch.zeros(1, 77, 7)), ValueError, "shape"),
    (dict(negative_prompt_embeds=torch.zeros(3, 77, 32)), ValueError, "3 rows"),
    (dict(negative_prompt_embeds=torch.full((1, 77, 32), float("nan"))), ValueError, "NaN"),
    (dict(negatives=["red"], not_an_argument=1), TypeError, "not_an_argument"),
]


@pytest.mark.parametrize("options,error,match", BAD)
def test_bad_input_is_rejected_before_any_forward(options, error, match):
    pipe = perp_of(get_tiny("sd"))
    counter = ForwardCounter(pipe.unet)
    try:
        with pytest.raises(error, match=match):
            pipe(PROMPT, **options, **call_kwargs("sd"))
    finally:
        counter.remove()
    assert counter.calls == 0


def test_unsupported_pipeline_class_is_rejected():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        block_out_channels=(8, 16),
        sample_size=8,
        in_channels=3,
        out_channels=3,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    with pytest.raises(ValueError, match="cannot guide a pipeline with UNet2DModel"):
        PerpNegPipeline.from_pipe(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))


def test_nested_keys_helpers_do_not_mutate_the_callers_dict():
    outer = {"added_cond_kwargs": {"text_embeds": 1, "time_ids": 2}}
    copy = dict(outer)
    set_nested(copy, "added_cond_kwargs.text_embeds", 5)
    assert outer["added_cond_kwargs"]["text_embeds"] == 1 and get_nested(copy, "added_cond_kwargs.text_embeds") == 5
