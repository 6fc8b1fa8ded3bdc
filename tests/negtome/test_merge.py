"""NegToMe's pure math: chunked matching equals the dense argmax, merging equals the formula token by token."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from negguide.negtome.merge import (
    match_tokens,
    match_tokens_reference_code,
    merge_batch_group,
    negative_merge,
    others_mask,
    push_away,
)


def _dense_match(src, ref, valid=None):
    sim = torch.nn.functional.cosine_similarity(src.double()[..., :, None, :], ref.double()[..., None, :, :], dim=-1)
    if valid is not None:
        sim = sim.masked_fill(~valid[..., None, :], float("-inf"))
    return sim.max(dim=-1)


def _formula(src, ref, alpha, tau, valid=None):
    """h_i + alpha (h_i - r_j*) where max_j cos(h_i, r_j) > tau, one token at a time."""
    out = src.clone()
    for i in range(src.shape[0]):
        sims = [
            float(torch.nn.functional.cosine_similarity(src[i].double(), ref[j].double(), dim=0))
            for j in range(ref.shape[0])
        ]
        if valid is not None:
            sims = [s if bool(valid[j]) else float("-inf") for j, s in enumerate(sims)]
        j = max(range(len(sims)), key=lambda k: sims[k])
        if sims[j] > tau:
            out[i] = src[i] + alpha * (src[i] - ref[j])
    return out


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_matching_equals_dense_argmax(chunk):
    g = torch.Generator().manual_seed(0)
    src, ref = torch.randn(2, 10, 5, generator=g), torch.randn(2, 13, 5, generator=g)
    valid = torch.rand(2, 13, generator=g) > 0.3
    for v in (None, valid):
        sim, idx = match_tokens(src, ref, v, chunk=chunk)
        dense_sim, dense_idx = _dense_match(src, ref, v)
        assert torch.equal(idx, dense_idx)
        assert torch.allclose(sim.double(), dense_sim, atol=1e-6)


def test_negative_merge_equals_the_formula_token_by_token():
    g = torch.Generator().manual_seed(1)
    src, ref = torch.randn(12, 6, generator=g), torch.randn(9, 6, generator=g)
    valid = torch.rand(9, generator=g) > 0.4
    for alpha, tau, v in ((0.9, 0.2, None), (1.7, -0.1, valid), (0.5, 0.5, valid)):
        got = negative_merge(src, ref, alpha, tau, v, chunk=4)
        assert torch.allclose(got, _formula(src, ref, alpha, tau, v), atol=1e-6)


def test_reference_code_matching_maximises_over_sources():
    g = torch.Generator().manual_seed(2)
    src, ref = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    sim = torch.nn.functional.cosine_similarity(src[:, None], ref[None], dim=-1)  # [N_src, M_ref]
    want_sim, want_idx = sim.max(dim=-2)  # the reference code: per reference position, the best source
    got_sim, got_idx = match_tokens_reference_code(src, ref, chunk=3)
    assert torch.equal(got_idx, want_idx) and torch.allclose(got_sim, want_sim, atol=1e-6)
    merged = negative_merge(src, ref, 1.0, 0.0, legacy_matching=True)
    expected = torch.where((want_sim > 0)[:, None], src + (src - ref[want_idx]), src)
    assert torch.allclose(merged, expected, atol=1e-6)
    assert not torch.allclose(merged, negative_merge(src, ref, 1.0, 0.0)), "the two matchings should differ here"
    with pytest.raises(ValueError, match="as many reference tokens"):
        match_tokens_reference_code(src, ref[:5])


def test_first_reference_leaves_image_zero_and_uses_only_it():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 4, 6, 5, generator=g)  # [G, n, N, D]
    out = merge_batch_group(tokens, "first", 1.0, 0.0)
    assert torch.equal(out[:, 0], tokens[:, 0])
    for grp in range(2):
        for i in range(1, 4):
            assert torch.allclose(out[grp, i], _formula(tokens[grp, i], tokens[grp, 0], 1.0, 0.0), atol=1e-6)


def test_others_reference_never_matches_an_image_with_itself():
    g = torch.Generator().manual_seed(4)
    tokens = torch.randn(1, 3, 5, 4, generator=g)
    out = merge_batch_group(tokens, "others", 0.8, 0.1)
    for i in range(3):
        others = torch.cat([tokens[0, j] for j in range(3) if j != i])
        assert torch.allclose(out[0, i], _formula(tokens[0, i], others, 0.8, 0.1), atol=1e-6)
    assert others_mask(3, 2).tolist()[0] == [False, False, True, True, True, True]


def test_groups_are_independent_and_single_images_untouched():
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(2, 3, 5, 4, generator=g)
    both = merge_batch_group(tokens, "others", 0.9, 0.0)
    alone = merge_batch_group(tokens[1:], "others", 0.9, 0.0)
    assert torch.equal(both[1:], alone)
    assert torch.equal(merge_batch_group(tokens[:, :1], "others", 0.9, 0.0), tokens[:, :1])


def test_alpha_zero_and_dropout_mask_leave_tokens_exactly():
    g = torch.Generator().manual_seed(6)
    src, ref = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g)
    assert torch.equal(negative_merge(src, ref, 0.0, -1.0), src)
    keep = torch.zeros(7, dtype=torch.bool)
    assert torch.equal(negative_merge(src, ref, 1.0, -1.0, keep=keep), src)


@settings(max_examples=60, deadline=None)
@given(
    alpha=st.floats(0.0, 3.0),
    tau=st.floats(-1.0, 0.99),
    n=st.integers(1, 9),
    m=st.integers(1, 9),
    scale=st.sampled_from([1e-6, 1.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_pushed_tokens_move_away_from_their_match(alpha, tau, n, m, scale, seed):
    g = torch.Generator().manual_seed(seed)
    src, ref = torch.randn(n, 4, generator=g) * scale, torch.randn(m, 4, generator=g) * scale
    sim, idx = match_tokens(src, ref, chunk=4)
    out = push_away(src, ref, sim, idx, alpha, tau)
    assert torch.isfinite(out).all()
    matched = ref[idx]
    pushed = sim > tau
    # ||h' - r|| = (1 + alpha) ||h - r|| for pushed tokens; the others are untouched
    before, after = (src - matched).norm(dim=-1), (out - matched).norm(dim=-1)
    assert torch.allclose(after[pushed], (1 + alpha) * before[pushed], rtol=1e-4, atol=1e-6 * scale)
    assert torch.equal(out[~pushed], src[~pushed])


def test_merge_traces_under_torch_compile_without_graph_breaks():
    """No host syncs or Python branches on tensor values: fullgraph compilation succeeds."""
    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(2, 3, 16, 8, generator=g)
    for reference in ("first", "others"):
        compiled = torch.compile(merge_batch_group, fullgraph=True, backend="eager", dynamic=False)
        got = compiled(tokens, reference, 0.9, 0.2, None, False, 5)
        assert torch.allclose(got, merge_batch_group(tokens, reference, 0.9, 0.2, None, False, 5), atol=1e-6)
