"""Property tests on NAG's pure math (hypothesis) against the paper's formula written out independently."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from negguide.nag.math import extrapolate, nag_combine, normalize

SHAPE = (2, 5, 8)  # [rows, tokens, C]


def features(seed: int, count: int = 3, scale: float = 1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=dtype) * scale for _ in range(count)]


def paper(z_pos, z_neg, s, tau, alpha):
    """arXiv 2505.21179, one negative: extrapolate, clamp the L1 ratio at tau, blend (float64, no eps)."""
    tilde = z_pos + s * (z_pos - z_neg)
    ratio = tilde.abs().sum(-1, keepdim=True) / z_pos.abs().sum(-1, keepdim=True)
    hat = tilde * torch.minimum(ratio, torch.full_like(ratio, tau)) / ratio
    return alpha * hat + (1 - alpha) * z_pos


scales = st.floats(0.0, 8.0)
taus = st.floats(1.0, 6.0)
alphas = st.floats(0.0, 1.0)
modes = st.sampled_from(["plain", "perpendicular"])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    tau=taus,
    alpha=alphas,
    mode=modes,
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_zero_scale_returns_the_positive_exactly(seed, tau, alpha, mode, dtype):
    z_pos, z_neg, other = features(seed, dtype=dtype)
    assert torch.equal(nag_combine(z_pos, [z_neg], [0.0], tau, alpha, mode), z_pos)
    assert torch.equal(nag_combine(z_pos, [z_neg, other], [0.0, 0.0], tau, alpha, mode), z_pos)
    out = nag_combine(z_pos, [z_neg], [0.0], tau, alpha, mode, eps=1e-3)
    assert out.dtype == dtype and torch.equal(out, z_pos)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), s=scales, tau=taus, alpha=alphas)
def test_one_plain_negative_is_the_papers_formula(seed, s, tau, alpha):
    z_pos, z_neg, _ = features(seed)
    got = nag_combine(z_pos, [z_neg], [s], tau, alpha, "plain", eps=1e-12)
    torch.testing.assert_close(got, paper(z_pos, z_neg, s, tau, alpha), rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), s1=scales, s2=scales, mode=modes)
def test_large_tau_and_alpha_one_is_the_plain_extrapolation(seed, s1, s2, mode):
    z_pos, n1, n2 = features(seed)
    got = nag_combine(z_pos, [n1, n2], [s1, s2], tau=1e9, alpha=1.0, mode=mode)
    if mode == "plain":
        torch.testing.assert_close(got, z_pos + s1 * (z_pos - n1) + s2 * (z_pos - n2), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got, extrapolate(z_pos, [n1, n2], [s1, s2], mode), rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), s=scales, tau=taus, mode=modes, scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_the_l1_bound_holds_per_token(seed, s, tau, mode, scale):
    z_pos, n1, n2 = features(seed, scale=scale)
    eps = 1e-6
    bounded = nag_combine(z_pos, [n1, n2], [s, 1.0], tau, 1.0, mode, eps)  # alpha = 1: Z = Z^
    limit = tau * (z_pos.abs().sum(-1) + eps)  # [rows, tokens]
    assert (bounded.abs().sum(-1) <= limit * (1 + 1e-12)).all()
    guided = extrapolate(z_pos, [n1, n2], [s, 1.0], mode)
    small = guided.abs().sum(-1) <= tau * z_pos.abs().sum(-1) * (1 - 1e-9)
    # tokens already inside the bound are not rescaled (up to eps)
    torch.testing.assert_close(bounded[small], guided[small], rtol=1e-6, atol=0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), s=scales, tau=taus, alpha=alphas, c=st.floats(-3.0, 3.0))
def test_perpendicular_keeps_what_the_negative_shares_with_the_positive(seed, s, tau, alpha, c):
    z_pos, z_neg, _ = features(seed)
    assert torch.equal(nag_combine(z_pos, [z_pos.clone()], [s], tau, alpha, "perpendicular"), z_pos)
    along = z_pos * c  # differs from the positive only along the positive itself
    torch.testing.assert_close(nag_combine(z_pos, [along], [s], tau, alpha, "perpendicular", eps=1e-300), z_pos)
    push = extrapolate(z_pos, [z_neg], [1.0], "perpendicular", eps=1e-300) - z_pos  # exact projection
    cos = (push * z_pos).sum(-1) / (push.norm(dim=-1) * z_pos.norm(dim=-1) + 1e-30)
    assert cos.abs().max() < 1e-9  # the push is orthogonal to Z+, token by token
    # the negative's part along Z+ is ignored: adding any multiple of Z+ to the negative changes nothing
    shifted = nag_combine(z_pos, [z_neg + c * z_pos], [s], tau, alpha, "perpendicular", eps=1e-300)
    torch.testing.assert_close(shifted, nag_combine(z_pos, [z_neg], [s], tau, alpha, "perpendicular", eps=1e-300))


def test_perpendicular_pushes_only_what_the_negative_does_not_share():
    """A negative Z- = a Z+ + q (q orthogonal to Z+: e.g. "a red circle" against "a red shape"): perpendicular NAG
    pushes away from q only and keeps the amount of Z+; plain NAG also rescales Z+ by 1 + s (1 - a)."""
    g = torch.Generator().manual_seed(3)
    z_pos = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    q = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    q = q - (q * z_pos).sum(-1, keepdim=True) / (z_pos * z_pos).sum(-1, keepdim=True) * z_pos
    a, s = 1.5, 2.0
    z_neg = a * z_pos + q
    perp = extrapolate(z_pos, [z_neg], [s], "perpendicular", eps=1e-300)
    torch.testing.assert_close(perp, z_pos - s * q)
    plain = extrapolate(z_pos, [z_neg], [s], "plain")
    torch.testing.assert_close(plain, (1 + s * (1 - a)) * z_pos - s * q)


def test_each_token_is_guided_on_its_own():
    z_pos, z_neg, _ = features(1)
    whole = nag_combine(z_pos, [z_neg], [3.0], 2.0, 0.5)
    for r in range(SHAPE[0]):
        for t in range(SHAPE[1]):
            one = nag_combine(z_pos[r, t][None], [z_neg[r, t][None]], [3.0], 2.0, 0.5)
            torch.testing.assert_close(whole[r, t], one[0], rtol=0, atol=0)


def test_zero_features_stay_finite_and_normalize_is_exact_at_ratio_one():
    zeros = torch.zeros(SHAPE)
    out = nag_combine(zeros, [torch.randn(SHAPE)], [2.0], 2.5, 0.5)
    assert torch.isfinite(out).all()
    z_pos = torch.randn(SHAPE)
    assert torch.equal(normalize(z_pos, z_pos, 1.0), z_pos)


def test_bad_arguments_raise():
    z_pos, z_neg, _ = features(0)
    with pytest.raises(ValueError, match="one scale per negative"):
        nag_combine(z_pos, [z_neg], [1.0, 2.0], 2.5, 0.5)
    with pytest.raises(ValueError, match="shape"):
        nag_combine(z_pos, [z_neg[:, :2]], [1.0], 2.5, 0.5)
    with pytest.raises(ValueError, match="tau"):
        nag_combine(z_pos, [z_neg], [1.0], 0.5, 0.5)
    with pytest.raises(ValueError, match="mode"):
        nag_combine(z_pos, [z_neg], [1.0], 2.5, 0.5, "sideways")
