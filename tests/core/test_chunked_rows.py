"""max_rows_per_forward: the branch rows of a step run in chunks of at most that many rows, with the result of the
single batched forward (up to float summation order), on every family; the cap holds; bad values are refused."""

from __future__ import annotations

import pytest
import torch
from helpers import ForwardCounter, call_kwargs, get_tiny

from negguide import PerpNegPipeline
from negguide.core.chunking import RowChunking, concat_outputs, split_rows
from negguide.nag import NAGSettings
from negguide.negtome import NegToMeSettings

PROMPT = "a red shape"
NEGATIVES = ["a red circle", "a blue square"]
# a layer every forward of the family's denoiser runs exactly once, on the rows the forward really computes
FIRST_LAYER = {"sd": "conv_in", "sdxl": "conv_in", "sd3": "pos_embed", "flux": "x_embedder"}


def perp_of(family: str) -> PerpNegPipeline:
    pipe = PerpNegPipeline.from_pipe(get_tiny(family))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoiser_of(pipe):
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


class RowsPerForward:
    """The batch rows of every forward the denoiser's layers really ran (chunks included)."""

    def __init__(self, pipe, family: str):
        layer = getattr(denoiser_of(pipe), FIRST_LAYER[family])
        self.rows: list[int] = []
        self._handle = layer.register_forward_pre_hook(lambda module, args: self.rows.append(args[0].shape[0]))

    def remove(self):
        self._handle.remove()


def run(pipe, family: str, max_rows=None, **extra):
    kwargs = call_kwargs(family, steps=3, **extra)
    return pipe(PROMPT, negatives=NEGATIVES, positives=["a shape"], max_rows_per_forward=max_rows, **kwargs).images


@pytest.mark.parametrize("images", [1, 2])
def test_chunks_equal_the_batched_forward(family, images):
    pipe = perp_of(family)
    want = run(pipe, family, num_images_per_prompt=images)
    full_rows = [r.rows for r in pipe.step_records]
    assert max(full_rows) == 5 * images  # uncond, prompt, extra positive, 2 negatives
    scale = float(want.abs().max())
    for cap in (1, 2, 3):
        counter = RowsPerForward(pipe, family)
        calls = ForwardCounter(denoiser_of(pipe))
        try:
            got = run(pipe, family, max_rows=cap, num_images_per_prompt=images)
        finally:
            counter.remove()
            calls.remove()
        assert "forward" not in vars(denoiser_of(pipe))  # the chunking is undone after the call
        assert [r.rows for r in pipe.step_records] == full_rows
        assert max(counter.rows) <= cap
        assert sum(counter.rows) == sum(full_rows)  # every row computed once, no more
        assert len(counter.rows) == sum(-(-rows // cap) for rows in full_rows)
        assert calls.rows == full_rows  # the denoiser's own hooks see one call over the whole step
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_cap_at_or_above_the_rows_is_one_forward(family):
    pipe = perp_of(family)
    want = run(pipe, family)
    counter = RowsPerForward(pipe, family)
    try:
        got = run(pipe, family, max_rows=5)
    finally:
        counter.remove()
    assert counter.rows == [r.rows for r in pipe.step_records]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_no_branches_is_capped_too():
    """Without negatives or CFG the call is the plain diffusers call: its batch is capped all the same."""
    pipe = perp_of("sd")
    kwargs = call_kwargs("sd", steps=2, guidance_scale=1.0, num_images_per_prompt=3)
    want = pipe(PROMPT, **kwargs).images
    counter = RowsPerForward(pipe, "sd")
    try:
        got = pipe(
            PROMPT, max_rows_per_forward=2, **call_kwargs("sd", steps=2, guidance_scale=1.0, num_images_per_prompt=3)
        ).images
    finally:
        counter.remove()
    assert counter.rows == [2, 1, 2, 1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, [2]])
def test_bad_values_refused_before_compute(bad):
    pipe = perp_of("sd")
    calls = ForwardCounter(pipe.unet)
    try:
        with pytest.raises(ValueError, match="max_rows_per_forward"):
            run(pipe, "sd", max_rows=bad)
    finally:
        calls.remove()
    assert calls.calls == 0
    assert "forward" not in vars(pipe.unet)


def test_refused_with_negtome_and_nag():
    pipe = perp_of("sd")
    calls = ForwardCounter(pipe.unet)
    try:
        with pytest.raises(ValueError, match="NegToMe"):
            run(pipe, "sd", max_rows=2, negtome=NegToMeSettings())
        with pytest.raises(ValueError, match="NAG"):
            run(pipe, "sd", max_rows=2, negative_mode="both", nag=NAGSettings())
    finally:
        calls.remove()
    assert calls.calls == 0


def test_split_rows_slices_only_per_row_tensors():
    rows = 4
    call = {
        "hidden_states": torch.arange(rows * 6.0).reshape(rows, 6),
        "timestep": torch.tensor(7.0),  # 0-d (SD): shared
        "guidance": torch.full((rows,), 3.5),  # per row (Flux, expanded to the batch)
        "img_ids": torch.zeros(rows, 3),  # Flux's [tokens, 3] ids: shared even when tokens == rows
        "txt_ids": torch.zeros(rows, 3),
        "pooled_projections": torch.randn(rows, 5),
        "encoder_attention_mask": torch.ones(rows, 7),
        "added_cond_kwargs": {"text_embeds": torch.randn(rows, 5), "time_ids": torch.randn(rows, 6)},
        "other": torch.randn(rows + 1, 2),  # first dim not the row count: shared
        "joint_attention_kwargs": {"scale": 0.5},
        "return_dict": False,
    }
    parts = split_rows(call, rows, 3)
    assert [p["hidden_states"].shape[0] for p in parts] == [3, 1]
    for key in ("hidden_states", "guidance", "pooled_projections", "encoder_attention_mask"):
        assert torch.equal(torch.cat([p[key] for p in parts]), call[key])
    for key in ("text_embeds", "time_ids"):
        assert torch.equal(torch.cat([p["added_cond_kwargs"][key] for p in parts]), call["added_cond_kwargs"][key])
    for part in parts:
        for key in ("timestep", "img_ids", "txt_ids", "other"):
            assert part[key] is call[key]
        assert part["joint_attention_kwargs"] == {"scale": 0.5} and part["return_dict"] is False
    batch_major = split_rows({"x": torch.zeros(4, 2), "img_ids": torch.zeros(4, 9, 3)}, 4, 2)  # deprecated 3-D ids
    assert [p["img_ids"].shape[0] for p in batch_major] == [2, 2]


def test_concat_outputs_and_reversible_install():
    assert torch.equal(
        concat_outputs([(torch.zeros(2, 1),), (torch.ones(1, 1),)])[0], torch.tensor([[0.0], [0.0], [1.0]])
    )
    module = torch.nn.Linear(3, 2)
    x = torch.randn(5, 3)
    want = module(x)
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    with RowChunking(module, 2):
        got = module(x)
        assert "forward" in vars(module)
    assert "forward" not in vars(module)
    assert seen == [5]  # module hooks see the whole batch; the chunks run inside forward
    torch.testing.assert_close(got, want)
    with RowChunking(module, None):  # None: nothing installed
        assert "forward" not in vars(module)
