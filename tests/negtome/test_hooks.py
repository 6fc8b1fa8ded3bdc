"""NegToMe's hooks on the tiny models of all four families: the formula, exact no-ops, reversibility, composition."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import ForwardCounter, call_kwargs, get_tiny

from negguide.negtome import NegToMePipeline, NegToMeSettings, apply, remove
from negguide.negtome.hooks import noise_level
from negguide.negtome.merge import negative_merge
from negguide.perpneg.pipeline import PerpNegPipeline

ALL_STEPS = dict(window=(0.0, 1.0), min_feature_size=0)
BLOCKS = {"sd": ("down", "mid", "up"), "sdxl": ("down", "mid", "up"), "sd3": ("joint",), "flux": ("joint", "single")}


def _denoiser(pipe):
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def _kwargs(family, **extra):
    kw = call_kwargs(family, steps=3, num_images_per_prompt=3, **extra)
    if family == "flux":
        kw.setdefault("negative_prompt", "")  # true CFG on: two forwards per step, each its own group
    return kw


def _check_formula(raw, final, groups: int, rows: int, mode: str, alpha: float, tau: float) -> None:
    """An independent evaluation of the NegToMe merge (arXiv 2412.01339, Sec. 3) on one layer's raw output [rows(+refs), N, D].

    Tiny random models make many tokens near-duplicates (cosines equal to 1e-7), so a token may take any
    reference whose similarity ties with the best within 1e-5; everything else must match exactly.
    """
    size = rows // groups
    refs_per_group = (raw.shape[0] - rows) // groups
    assert torch.equal(final[rows:], raw[rows:]), "reference rows are never changed"
    for g in range(groups):
        for i in range(size):
            row = g * size + i
            if mode == "image":
                ref = raw[rows + g * refs_per_group : rows + (g + 1) * refs_per_group].reshape(-1, raw.shape[-1])
            elif mode == "first":
                if i == 0:
                    assert torch.equal(final[row], raw[row]), "the first image is the reference and stays"
                    continue
                ref = raw[g * size]
            else:
                ref = torch.cat([raw[g * size + j] for j in range(size) if j != i])
            h = raw[row]
            sim = torch.nn.functional.cosine_similarity(h[:, None].double(), ref[None].double(), dim=-1)  # [N, M]
            best, index = sim.max(dim=-1)
            expected = torch.where((best > tau)[:, None], h + alpha * (h - ref[index]), h)
            close = (final[row] - expected).abs().amax(-1) <= 2e-5 + 1e-5 * expected.abs().amax(-1)
            for t in (~close).nonzero().flatten().tolist():
                ties = (sim[t] >= best[t] - 1e-5).nonzero().flatten()
                options = h[t] + alpha * (h[t] - ref[ties])  # [ties, D]
                near_tau = abs(float(best[t]) - tau) < 1e-5
                ok = (options - final[row, t]).abs().amax(-1).min() <= 1e-4 or (
                    near_tau and torch.allclose(final[row, t], h[t])
                )
                assert ok, f"row {row} token {t}: not the formula's output (best cos {float(best[t]):.6f})"


class _Recorder:
    """Raw (before NegToMe) and final (after) outputs of hooked attention modules, image tokens only."""

    def __init__(self, hooked, text_tokens):
        self.raw, self.final, self.handles = [], [], []
        for h in hooked:
            self.handles.append(h.module.register_forward_hook(self._grab(self.raw, h, text_tokens), prepend=True))
            self.handles.append(h.module.register_forward_hook(self._grab(self.final, h, text_tokens)))

    @staticmethod
    def _grab(store, hooked, text_tokens):
        def hook(module, args, output):
            tokens = output[0] if isinstance(output, tuple) else output
            store.append(tokens[:, text_tokens:].detach().clone() if hooked.text_first else tokens.detach().clone())

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


# 'others' on every family; the other reference modes on one UNet and one transformer family
@pytest.mark.parametrize(
    "family, mode",
    [(f, "others") for f in ("sd", "sdxl", "sd3", "flux")]
    + [(f, m) for f in ("sd", "sd3") for m in ("first", "image")],
)
def test_hooked_outputs_equal_the_formula(family, mode):
    pipe = get_tiny(family)
    settings = NegToMeSettings(
        alpha=1.3,
        threshold=0.2,
        blocks=BLOCKS[family],
        batch_reference="first" if mode == "first" else "others",
        **ALL_STEPS,
    )
    reference = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(9))] if mode == "image" else None
    handle = apply(pipe, settings, reference_images=reference)
    recorder = _Recorder(handle.attention, 16)
    try:
        pipe(
            "a red circle", **_kwargs(family, max_sequence_length=16) if family in ("sd3", "flux") else _kwargs(family)
        )
    finally:
        recorder.remove()
        handle.remove()
    assert recorder.raw and len(recorder.raw) == len(recorder.final)
    groups = 1 if family == "flux" else 2
    changed = 0
    for raw, final in zip(recorder.raw, recorder.final):
        rows = raw.shape[0] - (groups if mode == "image" else 0)
        _check_formula(raw, final, groups, rows, mode, 1.3, 0.2)
        changed += int(not torch.equal(final, raw))
    assert changed > 0, "NegToMe should have changed some layer"


def _levels(pipe, family, **kw):
    levels = []
    signature = inspect.signature(_denoiser(pipe).forward)

    def record(module, args, kwargs):
        timestep = signature.bind_partial(*args, **kwargs).arguments["timestep"]
        levels.append(noise_level(timestep, family, pipe.scheduler))

    handle = _denoiser(pipe).register_forward_pre_hook(record, with_kwargs=True)
    try:
        pipe("a red circle", **kw)
    finally:
        handle.remove()
    return sorted(set(levels))


def test_closed_window_alpha_zero_and_removal_are_bit_identical(family):
    pipe = get_tiny(family)
    base = pipe("a red circle", **_kwargs(family)).images
    levels = _levels(pipe, family, **_kwargs(family))
    gap = (levels[0] + levels[1]) / 2  # a window between two of the run's noise levels: never open
    for settings in (NegToMeSettings(window=(gap, gap), min_feature_size=0), NegToMeSettings(alpha=0.0, **ALL_STEPS)):
        with apply(pipe, settings):
            assert torch.equal(pipe("a red circle", **_kwargs(family)).images, base)
    with apply(pipe, NegToMeSettings(alpha=1.0, threshold=-1.0, **ALL_STEPS)):
        assert not torch.equal(pipe("a red circle", **_kwargs(family)).images, base), "NegToMe should act"
    assert torch.equal(pipe("a red circle", **_kwargs(family)).images, base), "removal must restore the pipeline"
    assert not _denoiser(pipe)._forward_hooks and not _denoiser(pipe)._forward_pre_hooks


def test_window_opens_only_at_its_noise_levels():
    pipe = get_tiny("sd")
    levels = _levels(pipe, "sd", **_kwargs("sd"))
    low = (levels[-1] + levels[-2]) / 2  # only the first (noisiest) step
    handle = apply(pipe, NegToMeSettings(window=(low, 1.0), threshold=-1.0, min_feature_size=0))
    active = []
    probe = _denoiser(pipe).register_forward_hook(lambda m, a, o: active.append(handle.state.active))
    try:
        pipe("a red circle", **_kwargs("sd"))
    finally:
        probe.remove()
        handle.remove()
    assert active == [True, False, False] and handle.active_calls == 1


class _CountingProcessor(torch.nn.Module):
    """A user's own attention processor: NegToMe must keep calling it and pass its kwargs through."""

    def __init__(self):
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner, self.calls, self.seen = AttnProcessor2_0(), 0, []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, marker=None):
        self.calls += 1
        self.seen.append(marker)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def test_custom_processor_still_called_and_kwargs_pass_through():
    pipe = get_tiny("sd")
    before = dict(pipe.unet.attn_processors)
    custom = _CountingProcessor()
    pipe.unet.set_attn_processor(custom)
    try:
        base = pipe("a red circle", cross_attention_kwargs={"marker": 7}, **_kwargs("sd")).images
        with apply(pipe, NegToMeSettings(threshold=-1.0, **ALL_STEPS)) as handle:
            assert all(p is custom for p in pipe.unet.attn_processors.values()), "processors must not be replaced"
            custom.calls, custom.seen = 0, []
            out = pipe("a red circle", cross_attention_kwargs={"marker": 7}, **_kwargs("sd")).images
            assert handle.attention
        assert custom.calls > 0 and set(custom.seen) == {7}
        assert not torch.equal(out, base)
        assert all(p is custom for p in pipe.unet.attn_processors.values())
    finally:
        pipe.unet.set_attn_processor(before)


def test_composes_with_perp_neg_branches_as_separate_groups(family, monkeypatch):
    from negguide.negtome.hooks import NegToMeHandle

    pipe = PerpNegPipeline.from_pipe(get_tiny(family))
    settings = NegToMeSettings(alpha=1.1, threshold=0.1, blocks=BLOCKS[family], **ALL_STEPS)
    counter = ForwardCounter(_denoiser(pipe))
    recorders = []
    install = NegToMeHandle.install

    def install_and_record(handle):  # the pipeline installs NegToMe inside the call: record around its hooks
        result = install(handle)
        recorders.append(_Recorder(handle.attention, 16))
        return result

    monkeypatch.setattr(NegToMeHandle, "install", install_and_record)
    try:
        pipe("a red circle", negatives=["blue", "a square"], negtome=settings, **_kwargs(family))
    finally:
        counter.remove()
        for r in recorders:
            r.remove()
    assert counter.rows[0] == 4 * 3, "u, positive and two negatives in one forward"
    (recorder,) = recorders
    assert recorder.raw
    for raw, final in zip(recorder.raw, recorder.final):
        assert raw.shape[0] == 12
        _check_formula(raw, final, 4, raw.shape[0], "others", 1.1, 0.1)
    assert not _denoiser(pipe)._forward_hooks and not _denoiser(pipe)._forward_pre_hooks


def test_negtome_pipeline_equals_apply_on_the_diffusers_pipeline():
    base = get_tiny("sd3")
    settings = NegToMeSettings(threshold=0.0, **ALL_STEPS)
    with apply(base, settings):
        want = base("a red circle", **_kwargs("sd3")).images
    got = NegToMePipeline.from_pipe(base)("a red circle", negtome=settings, **_kwargs("sd3")).images
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reference_mask_limits_the_reference_tokens():
    pipe = get_tiny("sd")
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3))
    settings = NegToMeSettings(alpha=1.5, threshold=-1.0, **ALL_STEPS)
    outs = []
    for mask in (None, torch.ones(32, 32), torch.zeros(32, 32).index_fill_(0, torch.arange(8), 1.0)):
        with apply(pipe, settings, reference_images=[image], reference_masks=None if mask is None else [mask]):
            outs.append(pipe("a red circle", **_kwargs("sd")).images)
    assert torch.equal(outs[0], outs[1]), "a full mask equals no mask"
    assert not torch.equal(outs[0], outs[2]), "a partial mask changes which tokens can match"


def test_legacy_matching_refuses_a_reference_mask_before_any_compute():
    pipe = get_tiny("sd")
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3))
    settings = NegToMeSettings(legacy_matching=True, batch_reference="first", **ALL_STEPS)
    counter = ForwardCounter(_denoiser(pipe))
    try:
        with pytest.raises(ValueError, match="would ignore reference_masks"):
            with apply(pipe, settings, reference_images=[image], reference_masks=[torch.ones(32, 32)]):
                pipe("a red circle", **_kwargs("sd"))
    finally:
        counter.remove()
    assert counter.calls == 0 and not _denoiser(pipe)._forward_hooks
    with pytest.raises(ValueError, match="legacy_matching has no reference mask"):
        negative_merge(
            torch.randn(4, 8), torch.randn(4, 8), 1.0, 0.0, valid=torch.ones(4, dtype=torch.bool), legacy_matching=True
        )


def test_torch_compiled_denoiser_gives_the_same_images():
    pipe = get_tiny("sd")
    settings = NegToMeSettings(threshold=0.0, **ALL_STEPS)
    with apply(pipe, settings):
        want = pipe("a red circle", **_kwargs("sd")).images
    original = pipe.unet.forward
    pipe.unet.forward = torch.compile(original, backend="eager")
    try:
        with apply(pipe, settings):
            got = pipe("a red circle", **_kwargs("sd")).images
    finally:
        pipe.unet.forward = original
        torch._dynamo.reset()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ bad input, before any compute
@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: NegToMeSettings(alpha=-0.5), ValueError, "alpha = -0.5"),
        (lambda: NegToMeSettings(alpha=float("nan")), ValueError, "alpha"),
        (lambda: NegToMeSettings(threshold=1.5), ValueError, "threshold = 1.5"),
        (lambda: NegToMeSettings(window=(0.9, 0.2)), ValueError, "reversed"),
        (lambda: NegToMeSettings(window=(0.5, 1.5)), ValueError, "noise levels run from 0"),
        (lambda: NegToMeSettings(batch_reference="last"), ValueError, "batch_reference"),
        (lambda: NegToMeSettings(legacy_matching=True), ValueError, "legacy_matching"),
        (lambda: NegToMeSettings(dropout=2.0), ValueError, "dropout"),
        (lambda: NegToMeSettings(blocks=[3]), TypeError, "blocks"),
    ],
)
def test_bad_settings_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(settings=NegToMeSettings(blocks=("upper",))), ValueError, "matches no attention module"),
        (dict(reference_images=[torch.rand(3, 16, 16)]), ValueError, "reference images are 16x16"),
        (dict(reference_images=[torch.rand(1, 32, 32)]), ValueError, r"expected \[3, H, W\]"),
        (dict(reference_images=[torch.rand(3, 32, 32) * 3]), ValueError, "outside \\[0, 1\\]"),
        (dict(reference_images=[torch.rand(3, 32, 32)], reference_masks=[torch.ones(16, 16)]), ValueError, "masks are"),
        (dict(reference_masks=[torch.ones(32, 32)]), ValueError, "without reference_images"),
        (dict(settings="alpha=1"), TypeError, "NegToMeSettings"),
    ],
)
def test_bad_input_raises_before_any_denoiser_forward(kwargs, error, match):
    pipe = get_tiny("sd")
    counter = ForwardCounter(pipe.unet)
    try:
        with pytest.raises(error, match=match):
            negtome = NegToMePipeline.from_pipe(pipe)
            settings = kwargs.pop("settings", NegToMeSettings())
            if not isinstance(settings, NegToMeSettings):
                apply(pipe, settings)
            negtome("a red circle", negtome=settings, **kwargs, **_kwargs("sd"))
    finally:
        counter.remove()
    assert counter.calls == 0
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks


def test_pil_reference_of_the_wrong_mode_and_unsupported_pipeline():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from PIL import Image

    pipe = get_tiny("sd")
    with pytest.raises(ValueError, match="PIL mode 'RGBA'.*convert"):
        apply(pipe, NegToMeSettings(), reference_images=[Image.new("RGBA", (32, 32))])
    ddpm = DDPMPipeline(
        UNet2DModel(
            sample_size=8,
            block_out_channels=(8, 8),
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        ),
        DDPMScheduler(),
    )
    with pytest.raises(ValueError, match="cannot guide a pipeline with UNet2DModel"):
        apply(ddpm, NegToMeSettings())
    with pytest.raises(TypeError, match="takes a diffusers pipeline"):
        apply(object(), NegToMeSettings())
    assert remove(pipe) is False
