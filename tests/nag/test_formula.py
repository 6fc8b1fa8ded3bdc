"""NAG's hooks on one denoiser call of each family's tiny model (and of deeper SD3 and Flux transformers): every
guided layer's output equals the formula evaluated independently, with Z+ and Z- from separate unhooked calls of
the same attention modules (on MMDiTs: whole unhooked block calls carrying each negative's text stream), and on
MMDiTs the image stream's layers run once per call."""

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


def reference(z_pos, z_negs):
    """Z~ = Z+ + sum_i s_i (Z+ - Z-_i); Z^ = Z~ min(1, tau ||Z+||_1 / ||Z~||_1); Z = alpha Z^ + (1 - alpha) Z+
    (float64)."""
    zp, tilde = z_pos.double(), z_pos.double()
    for z_neg, s in zip(z_negs, WEIGHTS):
        tilde = tilde + s * (zp - z_neg.double())
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


def check_unet(recorder, targets, contexts, rows) -> int:
    clamped = 0
    for t in targets:
        m = t.module
        assert not m.residual_connection and m.rescale_output_factor == 1.0
        ((args, kwargs, hooked),) = recorder.calls[id(m)]  # the negatives never go through the module's __call__
        hs, text = args[0], kwargs["encoder_hidden_states"]
        plus_out, z_pos = traced(m, 0, m, hs, encoder_hidden_states=text)
        count = hs[rows].shape[0]
        z_negs = [traced(m, 0, m, hs[rows], encoder_hidden_states=c.expand(count, -1, -1))[1] for c in contexts]
        z, n = reference(z_pos[rows], z_negs)
        clamped += n
        expected = _put(plus_out, rows, m.to_out[1](m.to_out[0](z)))
        torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(hooked[: rows.start], plus_out[: rows.start]), "unguided rows are untouched"
    return clamped


def check_mmdit(denoiser, recorder, targets, contexts, rows, whole_block: bool) -> int:
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
        # the whole-block pass calls the attention once per negative; the other pass computes them without it
        assert len(recorder.calls[id(block.attn)]) == (len(contexts) if whole_block else 0) + 1
        text_tokens = recorder.block_inputs[id(blocks[0])]["encoder_hidden_states"].shape[1]
        plus_out, z_pos = traced(block.attn, text_tokens, block.attn, *args, **kwargs)
        z, n = reference(z_pos[rows], z_negs)
        clamped += n
        if kind == "single":
            expected = _put(plus_out, rows, torch.cat([plus_out[rows][:, :text_tokens], z], dim=1))
            torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)
        else:
            image = _put(plus_out[0], rows, block.attn.to_out[1](block.attn.to_out[0](z)))
            torch.testing.assert_close(hooked[0], image, rtol=1e-5, atol=1e-5)
            assert torch.equal(hooked[1], plus_out[1]), "the positive's text stream is not guided"
    return clamped


def blocks_of(denoiser) -> list:
    return list(getattr(denoiser, "transformer_blocks", [])) + list(getattr(denoiser, "single_transformer_blocks", []))


def guided_call(denoiser, family, call, contexts, half, blocks=None, whole_block=False):
    """(NAG's output, the plain output, rows, clamped tokens, tokens per Linear) of one call, checked against the
    formula layer by layer."""
    settings = NAGSettings(negative_weights=WEIGHTS, tau=TAU, alpha=ALPHA, eps=EPS, blocks=blocks)
    handle = NAGHandle(denoiser, family, settings, contexts, rows=(lambda n: slice(n // 2, n)) if half else None)
    targets = handle.attention
    recorder, tokens = Recorder([t.module for t in targets], blocks_of(denoiser)), Tokens(denoiser)
    try:
        with torch.no_grad(), handle:
            guided = denoiser(**call)[0]
    finally:
        recorder.remove()
        tokens.remove()
    with torch.no_grad():
        plain = denoiser(**call)[0]
        total = guided.shape[0]
        rows = slice(total // 2, total) if half else slice(0, total)
        if family in ("sd", "sdxl"):
            clamped = check_unet(recorder, targets, contexts, rows)
        else:
            clamped = check_mmdit(denoiser, recorder, targets, contexts, rows, whole_block)
    return guided, plain, rows, clamped, tokens.counts


@pytest.mark.parametrize("half", [False, True], ids=["all-rows", "second-half"])
def test_guided_layers_follow_the_formula(family, half):
    denoiser, call, contexts = denoiser_of(get_tiny(family)), noise_call(family), contexts_for(family)
    guided, plain, rows, clamped, _ = guided_call(denoiser, family, call, contexts, half)
    assert clamped > 0, "the L1 bound was exercised"
    assert not torch.equal(guided[rows], plain[rows])
    if half:
        assert torch.equal(guided[: rows.start], plain[: rows.start])


class Tokens:
    """The tokens (rows x sequence) every Linear of the denoiser's blocks projects, by module name."""

    def __init__(self, denoiser):
        self.counts: dict = {}
        self.hooks = [
            module.register_forward_hook(self._count(name))
            for name, module in denoiser.named_modules()
            if isinstance(module, torch.nn.Linear) and "transformer_blocks." in name
        ]

    def _count(self, name):
        def hook(module, args, output):
            self.counts[name] = self.counts.get(name, 0) + args[0].shape[:-1].numel()

        return hook

    def remove(self):
        for h in self.hooks:
            h.remove()


def deep_mmdit(family: str, fused: bool = False):
    """(denoiser, call, contexts): an SD3.5-layout (qk norms, dual attention) or Flux transformer with several
    blocks, random weights, float32 noise inputs of 2 rows; text streams of 5 (positive) and 7 / 5 (negatives)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    if family == "sd3":
        denoiser = SD3Transformer2DModel(
            sample_size=8, patch_size=1, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
            qk_norm="rms_norm", dual_attention_layers=(0,),
        )  # fmt: skip
        call = dict(hidden_states=torch.randn(2, 4, 6, 6, generator=g), timestep=torch.tensor([500.0, 500.0]))
        lengths = (7, 5)
    else:
        denoiser = FluxTransformer2DModel(
            patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=[2, 2, 4],
        )  # fmt: skip
        grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).reshape(16, 2)
        call = dict(
            hidden_states=torch.randn(2, 16, 8, generator=g),
            timestep=torch.tensor([0.5, 0.5]),
            img_ids=torch.cat([torch.zeros(16, 1), grid.float()], 1),
            txt_ids=torch.zeros(5, 3),
        )
        lengths = (5, 5)  # Flux: the prompt's token count (rotary positions)
    denoiser.eval()
    if fused:
        with torch.no_grad():
            denoiser.fuse_qkv_projections()
    call.update(encoder_hidden_states=torch.randn(2, 5, 16, generator=g), pooled_projections=torch.randn(2, 8))
    contexts = [torch.randn(1, n, 16, generator=g) for n in lengths]
    return denoiser, call, contexts


class Custom:
    """A processor that is not diffusers' own (any other class): NAG runs its blocks whole once per negative."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        extra = {} if image_rotary_emb is None else {"image_rotary_emb": image_rotary_emb}
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **extra)


def expected_tokens(denoiser, blocks: list, guided: set, total: int, g: int, text: int, image: int, negs: list):
    """{Linear name: tokens} that the method needs for the blocks up to the last guided one: the positive's
    (``total`` rows) once, plus for each negative (``g`` rows, ``negs`` text tokens each) only its text stream:
    its keys and values at every block, its queries, output projection and feed-forward where its stream goes on."""
    names = {id(b): n for n, b in denoiser.named_modules()}
    last = max(i for i, b in enumerate(blocks) if id(b.attn) in guided)
    want = {}
    for i, block in enumerate(blocks[: last + 1]):
        on = i < last and not getattr(block, "context_pre_only", False)  # the negatives' streams go on
        fused = getattr(block.attn, "fused_projections", False)
        single = hasattr(block, "proj_mlp")
        for name, module in block.named_modules():
            if not isinstance(module, torch.nn.Linear) or name.startswith(("norm", "attn2")) or ".norm" in name:
                continue
            qkv = name in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj")
            if fused and (qkv or name == "attn.add_v_proj"):
                count = 0  # the fused layers below compute them
            elif single:  # [text; image] in one set of layers
                kv = name in ("attn.to_k", "attn.to_v", "attn.to_qkv")
                count = total * (text + image) + (g * sum(negs) if on or kv else 0)
            elif name.startswith(("attn.add_", "attn.to_added_qkv", "attn.to_add_out", "ff_context")):
                kv = name in ("attn.add_k_proj", "attn.add_v_proj", "attn.to_added_qkv")
                count = total * text + (g * sum(negs) if on or kv else 0)
            else:  # the image stream's layers: the positive's tokens only
                count = total * image
            want[f"{names[id(block)]}.{name}"] = count
    return want


@pytest.mark.parametrize(
    "family, blocks, fused",
    [
        ("sd3", None, False),  # every joint block guided; the last one is context_pre_only; dual attention
        ("sd3", ["transformer_blocks.1"], False),  # an unguided block carries the streams; then the last guided one
        ("flux", None, False),
        ("flux", ["single_transformer_blocks.1"], False),  # joint and single blocks carry the streams, unguided
        ("flux", ["transformer_blocks.1", "single_transformer_blocks.0"], True),  # fused QKV projections
    ],
    ids=["sd3-all", "sd3-middle", "flux-all", "flux-last-single", "flux-fused"],
)
def test_deeper_mmdits_follow_the_formula_running_the_image_stream_once(family, blocks, fused):
    denoiser, call, contexts = deep_mmdit(family, fused)
    guided, plain, rows, clamped, tokens = guided_call(denoiser, family, call, contexts, True, blocks)
    assert clamped > 0 and not torch.equal(guided[rows], plain[rows])
    assert torch.equal(guided[: rows.start], plain[: rows.start])
    targets = {id(t.module) for t in NAGHandle(denoiser, family, NAGSettings(blocks=blocks), contexts).attention}
    image = 36 if family == "sd3" else 16
    want = expected_tokens(denoiser, blocks_of(denoiser), targets, 2, 1, 5, image, [c.shape[1] for c in contexts])
    assert {k: tokens.get(k, 0) for k in want} == want


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_other_processors_run_the_whole_block_per_negative(family):
    """Any processor but diffusers' own: the block runs again per negative (the image output discarded), with
    the same features; the image stream's layers then see the negatives' rows too."""
    denoiser, call, contexts = deep_mmdit(family)
    denoiser.set_attn_processor({k: Custom(v) for k, v in denoiser.attn_processors.items()})
    guided, plain, rows, clamped, tokens = guided_call(denoiser, family, call, contexts, True, whole_block=True)
    assert clamped > 0 and torch.equal(guided[: rows.start], plain[: rows.start])
    image = 36 if family == "sd3" else 16
    assert tokens["transformer_blocks.0.ff.net.2"] == 2 * image + len(contexts) * image


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
    settings = NAGSettings(negative_weights=WEIGHTS, negative_windows=[(0.0, 1.0), (0.0, 0.5)])
    handle = NAGHandle(denoiser, family, settings, contexts, rows=lambda n: slice(n // 2, n))
    with torch.no_grad(), handle, no_host_reads():
        denoiser(**call)
