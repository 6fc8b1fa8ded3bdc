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


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), tau=taus, alpha=alphas, dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_zero_scale_returns_the_positive_exactly(seed, tau, alpha, dtype):
    z_pos, z_neg, other = features(seed, dtype=dtype)
    assert torch.equal(nag_combine(z_pos, [z_neg], [0.0], tau, alpha), z_pos)
    assert torch.equal(nag_combine(z_pos, [z_neg, other], [0.0, 0.0], tau, alpha), z_pos)
    assert torch.equal(nag_combine(z_pos, [z_pos.clone()], [3.0], tau, alpha), z_pos)  # no push: Z+ bit for bit
    out = nag_combine(z_pos, [z_neg], [0.0], tau, alpha, eps=1e-3)
    assert out.dtype == dtype and torch.equal(out, z_pos)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), s=scales, tau=taus, alpha=alphas)
def test_one_negative_is_the_papers_formula(seed, s, tau, alpha):
    z_pos, z_neg, _ = features(seed)
    got = nag_combine(z_pos, [z_neg], [s], tau, alpha, eps=1e-12)
    torch.testing.assert_close(got, paper(z_pos, z_neg, s, tau, alpha), rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), s1=scales, s2=scales)
def test_large_tau_and_alpha_one_is_the_plain_extrapolation(seed, s1, s2):
    z_pos, n1, n2 = features(seed)
    got = nag_combine(z_pos, [n1, n2], [s1, s2], tau=1e9, alpha=1.0)
    torch.testing.assert_close(got, z_pos + s1 * (z_pos - n1) + s2 * (z_pos - n2), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got, extrapolate(z_pos, [n1, n2], [s1, s2]), rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), s=scales, tau=taus, scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_the_l1_bound_holds_per_token(seed, s, tau, scale):
    z_pos, n1, n2 = features(seed, scale=scale)
    eps = 1e-6
    bounded = nag_combine(z_pos, [n1, n2], [s, 1.0], tau, 1.0, eps)  # alpha = 1: Z = Z^
    limit = tau * (z_pos.abs().sum(-1) + eps)  # [rows, tokens]
    assert (bounded.abs().sum(-1) <= limit * (1 + 1e-12)).all()
    guided = extrapolate(z_pos, [n1, n2], [s, 1.0])
    small = guided.abs().sum(-1) <= tau * z_pos.abs().sum(-1) * (1 - 1e-9)
    # tokens already inside the bound are not rescaled (up to eps)
    torch.testing.assert_close(bounded[small], guided[small], rtol=1e-6, atol=0)


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
    with pytest.raises(TypeError, match="no mode"):  # the removed perpendicular variant's argument
        nag_combine(z_pos, [z_neg], [1.0], 2.5, 0.5, "perpendicular")
