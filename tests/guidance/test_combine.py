"""Property tests on the pure Perp-Neg math (hypothesis) and expected values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from negguide.guidance import cfg_combine, perp_neg_combine, perpendicular, plain_negative_combine

SHAPE = (3, 4, 5, 5)


def tensors(seed: int, scale: float = 1.0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) * scale for _ in range(4)]


def reference_perp(a, b, eps=1e-8):
    """The formula written out one sample at a time, independently of the library."""
    out = []
    for ai, bi in zip(a, b):
        coef = float((ai * bi).sum()) / (float((bi * bi).sum()) + eps)
        out.append(ai - coef * bi)
    return torch.stack(out)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_removed_part_is_orthogonal_to_positive_direction(seed, scale):
    a, b, _, _ = tensors(seed, scale)
    p = perpendicular(a, b, eps=0.0)  # exact orthogonality; eps only guards ||b|| = 0
    cos = (p * b).flatten(1).sum(1) / (p.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1))
    assert cos.abs().max() < 1e-9
    torch.testing.assert_close(perpendicular(a, b), reference_perp(a, b), rtol=1e-9, atol=1e-12 * scale)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.floats(0.01, 100.0), d=st.floats(0.01, 100.0))
def test_scaling_invariance(seed, c, d):
    a, b, _, _ = tensors(seed)
    # linear in a, invariant to the scale (and sign) of b
    torch.testing.assert_close(perpendicular(c * a, b), c * perpendicular(a, b), rtol=1e-9, atol=1e-9)
    # eps = 0: the property of the projection itself (eps only guards a zero positive direction)
    torch.testing.assert_close(perpendicular(a, -d * b, eps=0.0), perpendicular(a, b, eps=0.0), rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), magnitude=st.sampled_from([0.0, 1e-30, 1e-20, 1e20, 1e30]))
def test_finite_for_zero_or_huge_differences(seed, magnitude):
    u, pos, neg, _ = [t.float() for t in tensors(seed)]
    pos_far = u + magnitude * (pos - u)
    neg_far = u + magnitude * (neg - u)
    for p, n in ((pos_far, neg), (pos, neg_far), (pos_far, neg_far)):
        out = perp_neg_combine(u, p, 7.5, [n], [1.0])
        assert torch.isfinite(out).all()
    # zero positive direction: nothing to project on, the negative direction is removed whole
    out = perp_neg_combine(u, u.clone(), 2.0, [neg], [1.0])
    torch.testing.assert_close(out, u - 2.0 * (neg - u))


def test_negative_equal_to_positive_changes_nothing():
    u, pos, _, _ = tensors(1)
    torch.testing.assert_close(perp_neg_combine(u, pos, 7.5, [pos.clone()], [1.5]), cfg_combine(u, pos, 7.5))


def test_no_negatives_is_cfg_bit_for_bit():
    u, pos, _, _ = [t.float() for t in tensors(2)]
    assert torch.equal(perp_neg_combine(u, pos, 5.0), u + 5.0 * (pos - u))


def test_per_sample_projection_does_not_mix_samples():
    u, pos, neg, extra = tensors(3)
    batched = perp_neg_combine(u, pos, 4.0, [neg], [1.2], [extra], [0.5])
    for i in range(u.shape[0]):
        single = perp_neg_combine(u[i : i + 1], pos[i : i + 1], 4.0, [neg[i : i + 1]], [1.2], [extra[i : i + 1]], [0.5])
        torch.testing.assert_close(batched[i : i + 1], single)


def test_matches_written_out_formula_with_several_prompts():
    u, pos, n1, n2 = tensors(4)
    extra = tensors(5)[0]
    s, w, v = 6.0, [1.0, 0.5], [0.7]
    d_pos = pos - u
    expected = u + s * (
        d_pos
        + v[0] * reference_perp(extra - u, d_pos)
        - w[0] * reference_perp(n1 - u, d_pos)
        - w[1] * reference_perp(n2 - u, d_pos)
    )
    torch.testing.assert_close(perp_neg_combine(u, pos, s, [n1, n2], w, [extra], v), expected)


def test_per_sample_weights():
    u, pos, neg, _ = tensors(6)
    weights = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)  # [K=1, B=3]
    out = perp_neg_combine(u, pos, 3.0, [neg], weights)
    for i, w in enumerate([0.0, 1.0, 2.0]):
        torch.testing.assert_close(
            out[i : i + 1], perp_neg_combine(u[i : i + 1], pos[i : i + 1], 3.0, [neg[i : i + 1]], [w])
        )
    with pytest.raises(ValueError, match="shape"):
        perp_neg_combine(u, pos, 3.0, [neg], torch.ones(2, 3))


def test_plain_negative_replaces_unconditional():
    u, pos, n1, n2 = tensors(7)
    assert torch.equal(plain_negative_combine(pos, 7.0, [n1], [2.0]), n1 + 7.0 * (pos - n1))
    mixed = plain_negative_combine(pos, 7.0, [n1, n2], [1.0, 3.0])
    base = 0.25 * n1 + 0.75 * n2
    torch.testing.assert_close(mixed, base + 7.0 * (pos - base))
    # plain negative prompting removes the shared part too; Perp-Neg keeps it
    shared = pos.clone()
    assert not torch.allclose(plain_negative_combine(pos, 7.0, [shared], [1.0]), cfg_combine(u, pos, 7.0))
    assert math.isfinite(float(perp_neg_combine(u, pos, 7.0, [shared], [1.0]).abs().max()))
