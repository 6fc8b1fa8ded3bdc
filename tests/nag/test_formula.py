"""NAG's hooks on one denoiser call of each family's tiny model: every guided layer's output equals the formula
evaluated independently, with Z+ and Z- from separate unhooked calls of the same attention modules."""

from __future__ import annotations

import contextlib
import inspect
from unittest import mock

import pytest
import torch
from helpers import call_kwargs, get_tiny

from negguide.nag import NAGSettings
from negguide.nag.hooks import NAGHandle, select_attention

EPS = 1e-6
TAU, ALPHA, WEIGHTS = 1.5, 0.6, [12.0, 4.0]  # strong enough for the L1 clamp to bite on some tokens


def denoiser_of(pipe):
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def noise_call(family: str, seed: int = 0) -> dict:
    """The denoiser's arguments at the first step of a 2-image run, latents and text replaced by float32 noise."""
    pipe = get_tiny(family)
    denoiser, seen = denoiser_of(pipe), {}

    def grab(module, args, kwargs):
        seen.setdefault("call", inspect.signature(module.forward).bind(*args, **kwargs).arguments)

    hook = denoiser.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        pipe("a red shape", **call_kwargs(family, steps=1, num_images_per_prompt=2))
    finally:
        hook.remove()
    call, g = dict(seen["call"]), torch.Generator().manual_seed(seed)
    for key in ("sample", "hidden_states", "encoder_hidden_states", "pooled_projections"):
        if key in call:
            call[key] = torch.randn(call[key].shape, generator=g)
    return call


def contexts_for(family: str, seed: int = 1) -> list:
    denoiser, g = denoiser_of(get_tiny(family)), torch.Generator().manual_seed(seed)
    if family in ("sd3", "flux"):
        width, tokens = denoiser.context_embedder.in_features, 16 if family == "flux" else 9
    else:
        width, tokens = select_attention(denoiser, family, ("down", "mid", "up"))[0].module.to_k.in_features, 77
    return [torch.randn(1, tokens, width, generator=g) for _ in WEIGHTS]


def reference(z_pos, z_negs, mode):
    """Z~ = Z+ + sum_i s_i push_i; Z^ = Z~ min(1, tau ||Z+||_1 / ||Z~||_1); Z = alpha Z^ + (1 - alpha) Z+ (float64)."""
    zp, tilde = z_pos.double(), z_pos.double()
    for z_neg, s in zip(z_negs, WEIGHTS):
        push = zp - z_neg.double()
        if mode == "perpendicular":
            push = push - (push * zp).sum(-1, keepdim=True) / ((zp * zp).sum(-1, keepdim=True) + EPS) * zp
        tilde = tilde + s * push
    ratio = TAU * (zp.abs().sum(-1, keepdim=True) + EPS) / (tilde.abs().sum(-1, keepdim=True) + EPS)
    out = ALPHA * tilde * ratio.clamp(max=1.0) + (1 - ALPHA) * zp
    return out.to(z_pos.dtype), int((ratio < 1).sum())


def traced(attn, text_tokens: int, fn, *args, **kwargs):
    """(``fn(*args, **kwargs)``, the image features of ``attn``'s call in it): the input of attn.to_out[0], or for
    attention without an output projection (Flux single blocks) its output after the ``text_tokens``."""
    seen = []
    if hasattr(attn, "to_out"):
        hook = attn.to_out[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    else:
        hook = attn.register_forward_hook(lambda m, a, out: seen.append(out[:, text_tokens:]))
    try:
        output = fn(*args, **kwargs)
    finally:
        hook.remove()
    assert len(seen) == 1
    return output, seen[0]


class Recorder:
    """Every call of the guided attention modules and the inputs of every block, during the hooked run."""

    def __init__(self, modules, blocks):
        self.calls = {id(m): [] for m in modules}
        self.block_inputs: dict = {}
        self.hooks = []
        for m in modules:
            self.hooks.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self.hooks.append(m.register_forward_hook(self._post))
        for b in blocks:
            self.hooks.append(b.register_forward_pre_hook(self._block, with_kwargs=True))

    def _block(self, module, args, kwargs):
        self.block_inputs.setdefault(id(module), inspect.signature(module.forward).bind(*args, **kwargs).arguments)

    def _pre(self, module, args, kwargs):
        self.calls[id(module)].append([args, kwargs, None])

    def _post(self, module, args, output):
        self.calls[id(module)][-1][2] = output

    def remove(self):
        for h in self.hooks:
            h.remove()


def _put(full, rows, part):
    out = full.clone()
    out[rows] = part
    return out


def check_unet(recorder, targets, contexts, rows, mode) -> int:
    clamped = 0
    for t in targets:
        m = t.module
        assert not m.residual_connection and m.rescale_output_factor == 1.0
        ((args, kwargs, hooked),) = recorder.calls[id(m)]  # the negatives never go through the module's __call__
        hs, text = args[0], kwargs["encoder_hidden_states"]
        plus_out, z_pos = traced(m, 0, m, hs, encoder_hidden_states=text)
        count = hs[rows].shape[0]
        z_negs = [traced(m, 0, m, hs[rows], encoder_hidden_states=c.expand(count, -1, -1))[1] for c in contexts]
        z, n = reference(z_pos[rows], z_negs, mode)
        clamped += n
        expected = _put(plus_out, rows, m.to_out[1](m.to_out[0](z)))
        torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(hooked[: rows.start], plus_out[: rows.start]), "unguided rows are untouched"
    return clamped


def check_mmdit(denoiser, recorder, targets, contexts, rows, mode) -> int:
    guided = {id(t.module): t.kind for t in targets}
    blocks = list(denoiser.transformer_blocks) + list(getattr(denoiser, "single_transformer_blocks", []))
    last = max(i for i, b in enumerate(blocks) if id(b.attn) in guided)
    first = recorder.block_inputs[id(blocks[0])]
    count = first["hidden_states"][rows].shape[0]
    streams = [denoiser.context_embedder(c.expand(count, -1, -1)) for c in contexts]
    clamped = 0
    for block in blocks[: last + 1]:
        call = dict(recorder.block_inputs[id(block)])
        call["hidden_states"], call["temb"] = call["hidden_states"][rows], call["temb"][rows]
        kind = guided.get(id(block.attn))
        z_negs = []
        for i, stream in enumerate(streams):
            call["encoder_hidden_states"] = stream
            if kind is None:
                streams[i] = block.forward(**call)[0]
                continue
            (streams[i], _), z_neg = traced(block.attn, stream.shape[1], block.forward, **call)
            z_negs.append(z_neg)
        if kind is None:
            continue
        args, kwargs, hooked = recorder.calls[id(block.attn)][-1]  # the positive call comes after the negatives'
        assert len(recorder.calls[id(block.attn)]) == len(contexts) + 1
        text_tokens = recorder.block_inputs[id(blocks[0])]["encoder_hidden_states"].shape[1]
        plus_out, z_pos = traced(block.attn, text_tokens, block.attn, *args, **kwargs)
        z, n = reference(z_pos[rows], z_negs, mode)
        clamped += n
        if kind == "single":
            expected = _put(plus_out, rows, torch.cat([plus_out[rows][:, :text_tokens], z], dim=1))
            torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)
        else:
            image = _put(plus_out[0], rows, block.attn.to_out[1](block.attn.to_out[0](z)))
            torch.testing.assert_close(hooked[0], image, rtol=1e-5, atol=1e-5)
            assert torch.equal(hooked[1], plus_out[1]), "the positive's text stream is not guided"
    return clamped


@pytest.mark.parametrize("mode", ["plain", "perpendicular"])
@pytest.mark.parametrize("half", [False, True], ids=["all-rows", "second-half"])
def test_guided_layers_follow_the_formula(family, mode, half):
    pipe = get_tiny(family)
    denoiser, call, contexts = denoiser_of(pipe), noise_call(family), contexts_for(family)
    settings = NAGSettings(negative_weights=WEIGHTS, tau=TAU, alpha=ALPHA, mode=mode, eps=EPS)
    handle = NAGHandle(denoiser, family, settings, contexts, rows=(lambda n: slice(n // 2, n)) if half else None)
    targets = handle.attention
    blocks = list(getattr(denoiser, "transformer_blocks", [])) + list(
        getattr(denoiser, "single_transformer_blocks", [])
    )
    recorder = Recorder([t.module for t in targets], blocks)
    try:
        with torch.no_grad(), handle:
            guided = denoiser(**call)[0]
    finally:
        recorder.remove()
    with torch.no_grad():
        plain = denoiser(**call)[0]
        total = guided.shape[0]
        rows = slice(total // 2, total) if half else slice(0, total)
        if family in ("sd", "sdxl"):
            clamped = check_unet(recorder, targets, contexts, rows, mode)
        else:
            clamped = check_mmdit(denoiser, recorder, targets, contexts, rows, mode)
    assert clamped > 0, "the L1 bound was exercised"
    assert not torch.equal(guided[rows], plain[rows])
    if half:
        assert torch.equal(guided[: rows.start], plain[: rows.start])


@contextlib.contextmanager
def no_host_reads():
    """Any read of a tensor's value on the host (a device sync on an accelerator) raises inside the block."""

    def read(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    names = ("item", "tolist", "__bool__", "__float__", "__int__")
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(mock.patch.object(torch.Tensor, name, read))
        yield


def test_hooks_read_no_tensor_values_on_the_host(family):
    denoiser, call, contexts = denoiser_of(get_tiny(family)), noise_call(family), contexts_for(family)
    with torch.no_grad(), no_host_reads():
        denoiser(**call)  # the model itself reads nothing either
    settings = NAGSettings(negative_weights=WEIGHTS, mode="perpendicular", negative_windows=[(0.0, 1.0), (0.0, 0.5)])
    handle = NAGHandle(denoiser, family, settings, contexts, rows=lambda n: slice(n // 2, n))
    with torch.no_grad(), handle, no_host_reads():
        denoiser(**call)
