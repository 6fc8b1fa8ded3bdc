"""NAG on the tiny pipelines of all four families: exact no-ops, windows, reversibility and early, clear errors."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from helpers import call_kwargs, get_tiny

from negguide.nag import NAGSettings, apply, remove
from negguide.nag.hooks import ATTR, NAGHandle, NAGProgress
from negguide.nag.processor import NAGProcessor
from negguide.testing.tiny import tiny_components

PROMPT = "a red shape"


def denoiser_of(pipe):
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def options(family: str) -> dict:
    return {"max_sequence_length": 16} if family in ("sd3", "flux") else {}


def run(pipe, family, **extra):
    return pipe(PROMPT, **call_kwargs(family, **extra)).images


def nag(pipe, family, **settings):
    settings.setdefault("negatives", ["a red circle"])
    return apply(pipe, NAGSettings(**settings), encode_options=options(family))


class Calls:
    """Counts forward calls of a module (a pre-hook: it counts even when a later pre-hook raises)."""

    def __init__(self, module):
        self.count = 0
        self.handle = module.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.count += 1

    def remove(self):
        self.handle.remove()


@pytest.mark.parametrize(
    "settings",
    [dict(negative_weights=[0.0]), dict(alpha=0.0), dict(negatives=["blurry", "a red circle"], negative_weights=0.0)],
    ids=["scale-0", "alpha-0", "all-scales-0"],
)
def test_switched_off_is_bit_identical(family, settings):
    pipe = get_tiny(family)
    base = run(pipe, family)
    with nag(pipe, family, **settings):
        assert torch.equal(run(pipe, family), base)


def test_guides_then_remove_is_bit_identical(family):
    pipe = get_tiny(family)
    base = run(pipe, family)
    handle = nag(pipe, family, negatives=["a red circle", "blurry"], negative_weights=[3.0, 1.0])
    guided = run(pipe, family)
    assert remove(pipe) and not remove(pipe)
    assert not torch.equal(guided, base)
    assert torch.equal(run(pipe, family), base)
    assert getattr(denoiser_of(pipe), ATTR, None) is None and not handle._hooks


def _per_step(pipe, family, handle=None, drive=True):
    steps = []

    def callback(p, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return handle.progress.callback(p, i, t, kwargs) if handle is not None and drive else kwargs

    run(pipe, family, callback_on_step_end=callback)
    return steps


@pytest.mark.parametrize("drive", [True, False], ids=["callback", "scheduler"])
def test_outside_the_window_nothing_changes(family, drive):
    pipe = get_tiny(family)
    base = _per_step(pipe, family)
    with nag(pipe, family, negative_windows=[(0.5, 1.0)]) as handle:
        steps = _per_step(pipe, family, handle, drive)
    assert [torch.equal(a, b) for a, b in zip(steps, base)] == [True, True, False, False]
    assert handle.progress.num_steps is None and handle.progress.step == 0, "the callback rewinds after the run"


def test_windows_pick_the_negatives_of_each_step(family):
    pipe = get_tiny(family)
    seen = []
    handle = nag(pipe, family, negatives=["blurry", "a red circle"], negative_windows=[(0.0, 0.5), (0.5, 1.0)])
    watch = denoiser_of(pipe).register_forward_pre_hook(lambda m, a: seen.append(list(handle.state.active)))
    try:
        with handle:
            run(pipe, family, callback_on_step_end=handle.progress.callback)
    finally:
        watch.remove()
    assert seen == [[0], [0], [1], [1]]


def test_progress_positions():
    progress = NAGProgress()
    assert progress.position() == (0, 1)
    progress.set(2, 4)
    assert progress.position() == (2, 4)

    class Pipe:
        _num_timesteps = 4

    progress.callback(Pipe(), 2, None, {})
    assert progress.position() == (3, 4)
    progress.callback(Pipe(), 3, None, {})
    assert progress.position() == (0, 1)
    with pytest.raises(ValueError, match="step"):
        progress.set(5, 4)


def test_remove_restores_the_exact_processors(family):
    pipe = get_tiny(family)
    denoiser = denoiser_of(pipe)
    before = dict(denoiser.attn_processors)
    keys = list(denoiser.state_dict())
    handle = nag(pipe, family)
    during = denoiser.attn_processors
    guided = {t.name + ".processor" for t in handle.attention}
    assert guided and guided <= set(during)
    for name, proc in during.items():
        if name in guided:
            assert isinstance(proc, NAGProcessor) and proc.inner is before[name]
        else:
            assert proc is before[name]
    with pytest.raises(RuntimeError, match="already applied"):
        nag(pipe, family)
    handle.remove()
    after = denoiser.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert list(denoiser.state_dict()) == keys
    with handle:  # a handle is reusable as a context manager
        assert isinstance(denoiser.attn_processors[next(iter(guided))], NAGProcessor)
    assert all(denoiser.attn_processors[k] is before[k] for k in before)


class Counting(AttnProcessor2_0):
    """A custom processor with an extra keyword argument (diffusers passes it only if the signature has it)."""

    def __init__(self):
        self.calls, self.extra = 0, []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, boost=1.0):
        self.calls += 1
        self.extra.append(boost)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ModuleProcessor(torch.nn.Module):
    """A processor that is a module with weights (as IP-Adapter's): it must stay registered and restored."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))
        self.inner = AttnProcessor2_0()

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask) * self.gain


def test_custom_and_module_processors_are_wrapped_and_restored():
    pipe = get_tiny("sd")
    unet = pipe.unet
    original = dict(unet.attn_processors)
    names = [n for n in original if n.endswith("attn2.processor")]
    custom = {n: (Counting() if i % 2 == 0 else ModuleProcessor()) for i, n in enumerate(names)}
    unet.set_attn_processor({**original, **custom})
    try:
        keys = list(unet.state_dict())
        assert any(k.endswith("processor.gain") for k in keys)
        base = run(pipe, "sd", cross_attention_kwargs={"boost": 1.0})
        with nag(pipe, "sd"):
            assert list(unet.state_dict()) == keys, "module processors stay registered while wrapped"
            guided = run(pipe, "sd", cross_attention_kwargs={"boost": 2.0})
            counting = [p for p in custom.values() if isinstance(p, Counting)]
            assert counting and all(p.calls and p.extra[-1] == 2.0 for p in counting), "the wrapper passes it on"
        assert not torch.equal(guided, base)
        assert all(unet.attn_processors[n] is p for n, p in custom.items())
        assert list(unet.state_dict()) == keys
        assert torch.equal(run(pipe, "sd", cross_attention_kwargs={"boost": 1.0}), base)
    finally:
        unet.set_attn_processor(original)


# ------------------------------------------------------------------ errors, before any compute
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tau=0.5), ValueError, "tau"),
        (dict(alpha=1.5), ValueError, "alpha"),
        (dict(negative_weights=[-1.0]), ValueError, "negative_weights"),
        (dict(negative_weights=[1.0, 2.0]), ValueError, "one weight per negative"),
        (dict(negative_windows=[(0.8, 0.2)]), ValueError, "reversed"),
        (dict(mode="perpendicular"), TypeError, "mode"),  # the variant was removed (experiments/nag_shapeworld)
        (dict(blocks=[]), TypeError, "blocks"),
        (dict(eps=0.0), ValueError, "eps"),
    ],
)
def test_bad_settings_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        NAGSettings(negatives=["blurry"], **kwargs)


@pytest.mark.parametrize(
    "family, blocks, match",
    [
        ("sd3", ["single"], "sd3 models do not have"),
        ("sd", ["joint"], "sd models do not have"),
        ("sd", ["up_blocks.7"], "matches no"),
    ],
)
def test_unknown_blocks_raise_before_encoding(family, blocks, match):
    pipe = get_tiny(family)
    calls = Calls(pipe.text_encoder)
    try:
        with pytest.raises(ValueError, match=match):
            nag(pipe, family, blocks=blocks)
    finally:
        calls.remove()
    assert calls.count == 0 and not hasattr(denoiser_of(pipe), ATTR)


def test_pipeline_without_supported_attention_raises():
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    pipe = StableDiffusionPipeline(**{**tiny_components("sd"), "unet": unet})
    with pytest.raises(ValueError, match="no cross-attention"):
        nag(pipe, "sd")
    with pytest.raises(TypeError, match="diffusers pipeline"):
        apply(object(), NAGSettings(negatives=["blurry"]))
    with pytest.raises(TypeError, match="NAGSettings"):
        apply(get_tiny("sd"), {"negatives": ["blurry"]})
    with pytest.raises(ValueError, match="needs negatives"):
        apply(get_tiny("sd"), NAGSettings())


def test_bad_contexts_raise(family):
    pipe = get_tiny(family)
    denoiser = denoiser_of(pipe)
    width = denoiser.context_embedder.in_features if family in ("sd3", "flux") else 32 if family == "sd" else 64
    with pytest.raises(ValueError, match="width"):
        NAGHandle(denoiser, family, NAGSettings(), [torch.zeros(1, 16, width + 1)])
    with pytest.raises(ValueError, match="tokens, dim"):
        NAGHandle(denoiser, family, NAGSettings(), [torch.zeros(16, width)])
    with pytest.raises(ValueError, match="NaN"):
        NAGHandle(denoiser, family, NAGSettings(), [torch.full((1, 16, width), float("nan"))])
    with pytest.raises(ValueError, match="contexts were given"):
        NAGHandle(denoiser, family, NAGSettings(negatives=["a", "b"]), [torch.zeros(1, 16, width)])
    # a context with the wrong number of rows fails at the call, before the denoiser computes anything
    first = next(m for m in denoiser.modules() if isinstance(m, torch.nn.Linear))
    with NAGHandle(denoiser, family, NAGSettings(), [torch.zeros(3, 16, width)]).install():
        calls = Calls(first)
        try:
            with pytest.raises(ValueError, match="rows"):
                run(pipe, family, num_images_per_prompt=2)
        finally:
            calls.remove()
    assert calls.count == 0


def test_rows_none_leaves_the_call_alone_and_contexts_can_change(family):
    pipe = get_tiny(family)
    base = run(pipe, family)
    contexts = [apply_contexts(pipe, family)]
    handle = NAGHandle(denoiser_of(pipe), family, NAGSettings(), contexts, rows=lambda total: None)
    with handle:
        assert torch.equal(run(pipe, family), base)
        handle.rows = lambda total: slice(0, total)
        guided = run(pipe, family)
        handle.set_contexts([contexts[0] * 0.5])
        assert not torch.equal(run(pipe, family), guided)
        with pytest.raises(ValueError, match="2 contexts for 1 negatives"):
            handle.set_contexts(contexts * 2)


def apply_contexts(pipe, family):
    from negguide.nag.hooks import encode_negatives

    return encode_negatives(pipe, family, ["a red circle"], options(family))[0]


def test_flux_negatives_need_the_prompts_token_count():
    pipe = get_tiny("flux")
    with NAGHandle(pipe.transformer, "flux", NAGSettings(), [torch.zeros(1, 9, 32)]).install():
        with pytest.raises(ValueError, match="max_sequence_length"):
            run(pipe, "flux")
    assert torch.equal(run(pipe, "flux"), run(pipe, "flux"))
