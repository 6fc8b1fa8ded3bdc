"""DiffusionNFT pure math: optimality probability, loss (velocity and x0 forms), gradients (EMAs: test_nft_ema.py).

Gradients come from torch.autograd and are compared with the closed forms derived in the comments. Notation:
d = v_theta - v_old, e = (x_t - s v_old) - x0 (the old policy's x0 error), n = elements per sample, B = batch size,
m(x) = mean|x| per sample. The adaptive weights are stop-gradient, so with a = s beta d:
    dLoss/dv_theta = s / (B n) * [ -2 r (e - a) / w+  +  2 (1 - r) (e + a) / w- ],   w+- = max(m(e -+ a), eps).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from negguide.nft import (
    adaptive_x0_loss,
    advantage_to_probability,
    check_loss_inputs,
    group_advantages,
    group_stats,
    native_kl_scale,
    nft_loss,
    nft_loss_x0,
    optimality_probability,
    x0_from_flow,
    x0_from_prediction,
)

FAST = settings(max_examples=40, deadline=None)
SHAPE = (3, 2, 4, 4)  # [B, C, H, W], n = 32 elements per sample
N = 32


def batch(seed: int, shape=SHAPE, dtype=torch.float64):
    """x0, x_t, sigma [B], v_theta (leaf with grad), v_old, v_ref."""
    g = torch.Generator().manual_seed(seed)
    x0, noise, v_old, v_ref, d = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(5))
    sigma = torch.rand(shape[0], generator=g, dtype=dtype) * 0.8 + 0.1
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
    v_theta = (v_old + 0.3 * d).requires_grad_(True)
    return x0, x_t, sigma, v_theta, v_old, v_ref


def grad_of(loss, v):
    (g,) = torch.autograd.grad(loss, v)
    return g


def flat_dot(a, b):
    return (a * b).flatten(1).sum(1)


# ----------------------------------------------------------------------------------------------- advantages


def test_optimality_probability_expected_numbers():
    r = optimality_probability(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), ["a", "a", "b", "b"])
    std = math.sqrt(1.25)  # population std of 1, 2, 3, 4
    a = 0.5 / (std + 1e-4)
    torch.testing.assert_close(r, torch.tensor([0.5 - a / 10, 0.5 + a / 10] * 2, dtype=torch.float64))


def test_epoch_std_given_and_clipping():
    rewards = torch.tensor([0.0, 1.0, 5.0, 5.2])
    r = optimality_probability(rewards, torch.tensor([3, 3, 7, 7]), epoch_std=0.01)
    # A = +-0.5 / 0.0101 -> clipped to +-5 -> r = 0 / 1; second group: +-0.1 / 0.0101 = +-9.9 -> clipped too.
    torch.testing.assert_close(r, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    r = optimality_probability(rewards, [0, 0, 1, 1], epoch_std=1.0 - 1e-4)  # A = +-0.5, +-0.1
    torch.testing.assert_close(r, torch.tensor([0.45, 0.55, 0.49, 0.51]))
    assert advantage_to_probability(torch.tensor([-100.0, 0.0, 1.0, 100.0]), clip=2.0).tolist() == [0.0, 0.5, 0.75, 1.0]


def test_int_and_string_groups_agree_and_order_free():
    rewards = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7, 0.2])
    by_int = optimality_probability(rewards, torch.tensor([0, 1, 0, 1, 0, 1]))
    by_str = optimality_probability(rewards, ["cat", "dog", "cat", "dog", "cat", "dog"])
    torch.testing.assert_close(by_int, by_str)
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    permuted = optimality_probability(rewards[perm], torch.tensor([0, 1, 0, 1, 0, 1])[perm])
    torch.testing.assert_close(permuted, by_int[perm])


def grouped_rewards():
    """(rewards [B] float64, group ids [B]) with 1..5 groups of 2..6 samples each."""
    sizes = st.lists(st.integers(2, 6), min_size=1, max_size=5)
    return sizes.flatmap(
        lambda ss: st.tuples(
            st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=sum(ss), max_size=sum(ss)),
            st.just([g for g, size in enumerate(ss) for _ in range(size)]),
        )
    )


@FAST
@given(grouped_rewards(), st.floats(-50, 50))
def test_probability_properties(data, shift):
    values, ids = data
    rewards = torch.tensor(values, dtype=torch.float64)
    ids_t = torch.tensor(ids)
    r = optimality_probability(rewards, ids_t)
    assert bool(((r >= 0) & (r <= 1)).all())
    a = group_advantages(rewards, ids_t)
    for g in set(ids):  # the advantage has mean 0 within every prompt group
        assert abs(float(a[ids_t == g].mean())) < 1e-9 * max(1.0, float(a.abs().max()))
    torch.testing.assert_close(optimality_probability(rewards + shift, ids_t), r, atol=1e-9, rtol=0)
    # per-group constants change the epoch std, so r is invariant to them only for a fixed epoch std
    per_group = torch.tensor([shift * (g + 1) for g in ids], dtype=torch.float64)
    std = float(rewards.std(correction=0))
    torch.testing.assert_close(
        optimality_probability(rewards + per_group, ids_t, epoch_std=std),
        optimality_probability(rewards, ids_t, epoch_std=std),
        atol=1e-9,
        rtol=0,
    )


@FAST
@given(st.floats(-1e6, 1e6, allow_nan=False), st.integers(2, 8), grouped_rewards())
def test_tied_group_gives_exactly_one_half(value, size, data):
    values, ids = data
    rewards = torch.tensor([value] * size + values, dtype=torch.float64)
    ids = [-1] * size + ids
    r = optimality_probability(rewards, ids)
    assert (r[:size] == 0.5).all()
    assert group_stats(rewards, ids)["std"][0] == 0


def test_group_stats_expected():
    stats = group_stats(torch.tensor([1.0, 3.0, 2.0, 2.0]), ["a", "a", "b", "b"])
    assert stats["keys"] == ["a", "b"] and stats["count"].tolist() == [2, 2]
    assert stats["mean"].tolist() == [2.0, 2.0] and stats["std"].tolist() == [1.0, 0.0]
    assert float(stats["tied_fraction"]) == 0.5 and float(stats["epoch_std"]) == pytest.approx(math.sqrt(0.5))


@pytest.mark.parametrize(
    "rewards, ids, message",
    [
        (torch.tensor([1.0, 2.0, 3.0]), ["a", "a", "b"], r"G = 1 .*G must be >= 2"),
        (torch.tensor([1.0, float("nan"), 3.0, 4.0]), [0, 0, 1, 1], r"NaN at sample indices \[1\]"),
        (torch.tensor([1.0, float("inf"), 3.0, 4.0]), [0, 0, 1, 1], r"inf"),
        (torch.tensor([1.0, 2.0, 3.0, 4.0]), [0, 0, 1], r"group_ids has 3 entries but rewards has 4"),
        (torch.ones(4, 1), [0, 0, 1, 1], r"shape \[B\]"),
    ],
)
def test_bad_rewards_raise(rewards, ids, message):
    with pytest.raises(ValueError, match=message):
        optimality_probability(rewards, ids)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="clip"):
        optimality_probability(torch.tensor([1.0, 2.0]), [0, 0], clip=0.0)
    with pytest.raises(ValueError, match="epoch_std"):
        optimality_probability(torch.tensor([1.0, 2.0]), [0, 0], epoch_std=float("nan"))
    with pytest.raises(TypeError, match="group_ids"):
        optimality_probability(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))


# ----------------------------------------------------------------------------------------------- loss values


def test_loss_expected_numbers():
    # B = 1, two elements. beta = 0.5: v+ = [1.5, 2] -> x0+ = [0.25, 0] = x0 -> L+ = 0;
    # v- = 1.5 v_old - 0.5 v_theta = [2.5, 2] -> x0- = [-0.25, 0], err [-0.5, 0] -> L- = 0.125 / 0.25 = 0.5.
    # policy = (0.8 * 0 + 0.2 * 0.5) / 0.5 = 0.2; KL = mean([0, 1]) = 0.5, * 0.1 -> loss 0.25.
    f = lambda *v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    loss, stats = nft_loss(
        f(0.25, 0),
        f(1, 1),
        torch.tensor([0.5], dtype=torch.float64),
        f(1, 2),
        f(2, 2),
        f(1, 1),
        torch.tensor([0.8], dtype=torch.float64),
        beta=0.5,
        kl_weight=0.1,
        eps=1e-12,
    )
    assert float(loss) == pytest.approx(0.25, abs=1e-9)
    assert float(stats["loss_plus"]) == 0 and float(stats["loss_minus"]) == pytest.approx(0.5)
    assert float(stats["kl"]) == pytest.approx(0.5) and float(stats["old_deviation"]) == pytest.approx(0.5)
    assert float(adaptive_x0_loss(f(0.0, 0.0), f(0.0, 0.0))) == 0.0  # eps keeps 0 / 0 away


@FAST
@given(st.integers(0, 10_000), st.floats(0.05, 1.0), st.floats(0, 1e-2))
def test_batch_is_mean_of_single_samples(seed, beta, kl_weight):
    x0, x_t, s, v, v_old, v_ref = batch(seed)
    r = torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    loss, _ = nft_loss(x0, x_t, s, v, v_old, v_ref, r, beta=beta, kl_weight=kl_weight)
    singles = [
        nft_loss(
            x0[i : i + 1],
            x_t[i : i + 1],
            s[i : i + 1],
            v[i : i + 1],
            v_old[i : i + 1],
            v_ref[i : i + 1],
            r[i : i + 1],
            beta=beta,
            kl_weight=kl_weight,
        )[0]
        for i in range(3)
    ]
    torch.testing.assert_close(loss, torch.stack(singles).mean())


def test_diagnostics_detached_and_low_precision():
    x0, x_t, s, v, v_old, v_ref = (t.detach().to(torch.bfloat16) for t in batch(0))
    v.requires_grad_(True)
    loss, stats = nft_loss(x0, x_t, s, v, v_old, None, torch.full((3,), 0.7))
    assert loss.dtype == torch.float32 and loss.requires_grad and loss.ndim == 0
    assert all(not t.requires_grad and t.ndim == 0 for t in stats.values()) and float(stats["kl"]) == 0
    loss.backward()
    assert v.grad is not None and v.grad.dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------- gradients


@FAST
@given(st.integers(0, 10_000), st.floats(0.05, 1.0))
def test_r_half_no_gradient_at_old_policy(seed, beta):
    x0, x_t, s, _, v_old, _ = batch(seed)
    v = v_old.clone().requires_grad_(True)
    loss, _ = nft_loss(x0, x_t, s, v, v_old, None, torch.full((3,), 0.5, dtype=torch.float64), beta=beta, kl_weight=0)
    assert grad_of(loss, v).abs().max() < 1e-12


@FAST
@given(st.integers(0, 10_000), st.floats(0.05, 1.0))
def test_r_half_pulls_only_toward_old_policy(seed, beta):
    # When the adaptive weights agree (here: the old policy reconstructs x0, e = 0, so w+ = w- = max(s beta m(d), eps)),
    # the gradient is exactly c * (v_theta - v_old) with c = 2 s^2 beta / (B n max(s beta m(d), eps)) > 0 per sample,
    # and a gradient step shrinks ||v_theta - v_old||.
    x0, x_t, s, v, v_old, _ = batch(seed)
    x0 = x_t - s.view(-1, 1, 1, 1) * v_old
    half = torch.full((3,), 0.5, dtype=torch.float64)
    g = grad_of(nft_loss(x0, x_t, s, v, v_old, None, half, beta=beta, kl_weight=0)[0], v)
    d = (v - v_old).detach()
    c = 2 * s**2 * beta / (3 * N * (s * beta * d.abs().flatten(1).mean(1)).clamp(min=1e-5))
    torch.testing.assert_close(g, c.view(-1, 1, 1, 1) * d)
    stepped = v.detach() - 0.1 / c.max() * g
    assert ((stepped - v_old).flatten(1).norm(dim=1) < d.flatten(1).norm(dim=1)).all()


@FAST
@given(st.integers(0, 10_000), st.floats(0.05, 1.0))
def test_r_half_is_neutral_about_old_policy(seed, beta):
    # Any e: swapping d -> -d swaps the implicit positive and negative policies (and their weights), so at r = 0.5
    # the loss is even in d and its gradient odd: nothing pushes toward the data rather than away from it.
    x0, x_t, s, v, v_old, _ = batch(seed)
    half = torch.full((3,), 0.5, dtype=torch.float64)
    mirror = (2 * v_old - v.detach()).requires_grad_(True)
    loss_a = nft_loss(x0, x_t, s, v, v_old, None, half, beta=beta, kl_weight=0)[0]
    loss_b = nft_loss(x0, x_t, s, mirror, v_old, None, half, beta=beta, kl_weight=0)[0]
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(grad_of(loss_a, v), -grad_of(loss_b, mirror))


def test_r_half_flat_along_old_error():
    # A finding of the adaptive weighting (documented, not a bug of this code): with a = s beta d = c e, |c| < 1,
    # w+- = max((1 -+ c) m(e), eps), so L+- = (1 -+ c) m(e) up to eps, whose sum is flat in c: the r = 0.5 gradient
    # vanishes there (to O(eps)) instead of pulling v_theta back to v_old along the old policy's error direction.
    x0, x_t, s, _, v_old, _ = batch(1)
    sv = s.view(-1, 1, 1, 1)
    e = x_t - sv * v_old - x0
    v = (v_old + 0.6 * e / (sv * 0.5)).requires_grad_(True)  # c = 0.6, beta = 0.5
    half = torch.full((3,), 0.5, dtype=torch.float64)
    g = grad_of(nft_loss(x0, x_t, s, v, v_old, None, half, beta=0.5, kl_weight=0)[0], v)
    assert g.abs().max() < 1e-6 * e.abs().max()


@FAST
@given(st.integers(0, 10_000), st.floats(0, 1), st.floats(0.05, 1.0))
def test_gradient_at_old_policy_follows_r(seed, r_value, beta):
    # At v_theta = v_old: dLoss/dv_theta = (1 - 2r) * 2 s e / (B n max(m(e), eps)), independent of beta.
    x0, x_t, s, _, v_old, _ = batch(seed)
    v = v_old.clone().requires_grad_(True)
    r = torch.full((3,), r_value, dtype=torch.float64)
    g = grad_of(nft_loss(x0, x_t, s, v, v_old, None, r, beta=beta, kl_weight=0)[0], v)
    sv = s.view(-1, 1, 1, 1)
    e = x_t - sv * v_old - x0
    expected = (1 - 2 * r_value) * 2 * sv * e / (3 * N * e.abs().flatten(1).mean(1).view(-1, 1, 1, 1).clamp(min=1e-5))
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("r_value, toward_data", [(1.0, True), (0.0, False)])
def test_r_one_toward_data_r_zero_away(r_value, toward_data):
    x0, x_t, s, _, v_old, _ = batch(2)
    v = v_old.clone().requires_grad_(True)
    r = torch.full((3,), r_value, dtype=torch.float64)
    g = grad_of(nft_loss(x0, x_t, s, v, v_old, None, r, kl_weight=0)[0], v)
    err = lambda vel: (x_t - s.view(-1, 1, 1, 1) * vel - x0).flatten(1).norm(dim=1)  # noqa: E731  ||x0_pred - x0||
    closer = err(v.detach() - 1e-2 * g) < err(v_old)
    assert closer.all() if toward_data else (~closer).all()


def test_kl_pulls_toward_reference():
    # r = 0.5 at v_theta = v_old: the policy gradient is 0, leaving 2 kl_weight (v_theta - v_ref) / (B n).
    x0, x_t, s, _, v_old, v_ref = batch(3)
    v = v_old.clone().requires_grad_(True)
    half = torch.full((3,), 0.5, dtype=torch.float64)
    g = grad_of(nft_loss(x0, x_t, s, v, v_old, v_ref, half, kl_weight=0.3)[0], v)
    torch.testing.assert_close(g, 2 * 0.3 * (v_old - v_ref) / (3 * N))


# ----------------------------------------------------------------------------------------------- x0 form


@FAST
@given(st.integers(0, 10_000), st.floats(0.05, 1.0), st.floats(1e-4, 1.0))
def test_x0_form_equals_velocity_form_for_flow(seed, beta, kl_weight):
    x0, x_t, s, v, v_old, v_ref = batch(seed)
    r = torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    to_x0 = lambda vel: x0_from_flow(vel, x_t, s)  # noqa: E731
    # policy terms and their gradients: identical
    lv, sv = nft_loss(x0, x_t, s, v, v_old, None, r, beta=beta, kl_weight=0)
    lx, sx = nft_loss_x0(x0, to_x0(v), to_x0(v_old), None, r, beta=beta, kl_weight=0)
    torch.testing.assert_close(lx, lv)
    torch.testing.assert_close(grad_of(lx, v), grad_of(lv, v))
    # KL: x0 form = mean_B(s^2 * velocity KL per sample); with kl_scale = 1 / s^2 (+ eps) the forms agree
    kl_v = ((v - v_ref) ** 2).flatten(1).mean(1).detach()
    _, sx = nft_loss_x0(x0, to_x0(v), to_x0(v_old), to_x0(v_ref), r, beta=beta, kl_weight=kl_weight)
    torch.testing.assert_close(sx["kl"], (s**2 * kl_v).mean())
    lv, _ = nft_loss(x0, x_t, s, v, v_old, v_ref, r, beta=beta, kl_weight=kl_weight)
    lx, _ = nft_loss_x0(
        x0,
        to_x0(v),
        to_x0(v_old),
        to_x0(v_ref),
        r,
        beta=beta,
        kl_weight=kl_weight,
        kl_scale=native_kl_scale("flow", sigma=s, eps=1e-15),
    )
    torch.testing.assert_close(lx, lv)
    torch.testing.assert_close(grad_of(lx, v), grad_of(lv, v))


@FAST
@given(st.integers(0, 10_000), st.floats(0.01, 0.99))
def test_prediction_to_x0_inverts_forward_process(seed, ab_low):
    g = torch.Generator().manual_seed(seed)
    x0, noise = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(2))
    ab = torch.linspace(ab_low, 0.99, 3, dtype=torch.float64)  # alphas_cumprod per sample, [B]
    a, b = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    x_t = a * x0 + b * noise
    torch.testing.assert_close(x0_from_prediction(noise, x_t, ab, "epsilon"), x0)
    torch.testing.assert_close(x0_from_prediction(a * noise - b * x0, x_t, ab, "v_prediction"), x0)
    torch.testing.assert_close(x0_from_prediction(x0, x_t, ab, "sample"), x0)
    s = ab  # any sigma in (0, 1): x_t = (1 - s) x0 + s eps, v = eps - x0
    sv = s.view(-1, 1, 1, 1)
    torch.testing.assert_close(x0_from_flow(noise - x0, (1 - sv) * x0 + sv * noise, s), x0)
    # native KL scale: x0-space squared differences -> the prediction's own space
    d_eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    dx0 = x0_from_prediction(noise + d_eps, x_t, ab, "epsilon") - x0_from_prediction(noise, x_t, ab, "epsilon")
    torch.testing.assert_close(
        native_kl_scale("epsilon", alpha_bar=ab, eps=0) * (dx0**2).flatten(1).mean(1), (d_eps**2).flatten(1).mean(1)
    )
    dx0 = x0_from_prediction(d_eps, x_t, ab, "v_prediction") - x0_from_prediction(0 * d_eps, x_t, ab, "v_prediction")
    torch.testing.assert_close(
        native_kl_scale("v_prediction", alpha_bar=ab, eps=0) * (dx0**2).flatten(1).mean(1),
        (d_eps**2).flatten(1).mean(1),
    )


# ----------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("beta", [0.0, 1.5, -0.1, float("nan")])
def test_beta_outside_range_raises(beta):
    x0, x_t, s, v, v_old, v_ref = batch(0)
    with pytest.raises(ValueError, match=rf"beta must be in \(0.0, 1.0\], got {beta}"):
        nft_loss(x0, x_t, s, v, v_old, v_ref, torch.full((3,), 0.5), beta=beta)
    with pytest.raises(ValueError, match="beta"):
        nft_loss_x0(x0, v, v_old, v_ref, torch.full((3,), 0.5), beta=beta)


def test_shape_and_setting_errors():
    x0, x_t, s, v, v_old, v_ref = batch(0)
    r = torch.full((3,), 0.5)
    with pytest.raises(ValueError, match=r"v_old has shape \(2, 2, 4, 4\) but x0 has \(3, 2, 4, 4\)"):
        nft_loss(x0, x_t, s, v, v_old[:2], v_ref, r)
    with pytest.raises(ValueError, match=r"r must be a tensor of shape \[3\]"):
        nft_loss(x0, x_t, s, v, v_old, v_ref, torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="sigma"):
        nft_loss(x0, x_t, s[:2], v, v_old, v_ref, r)
    with pytest.raises(ValueError, match="kl_weight"):
        nft_loss(x0, x_t, s, v, v_old, v_ref, r, kl_weight=-1.0)
    with pytest.raises(ValueError, match="prediction_type"):
        x0_from_prediction(v, x_t, 0.5, "flow")


def test_check_loss_inputs():
    x0, x_t, s, v, v_old, v_ref = batch(0)
    check_loss_inputs(torch.tensor([0.0, 0.5, 1.0]), x0=x0, v_theta=v, v_ref=None)
    with pytest.raises(ValueError, match=r"r must be optimality probabilities in \[0, 1\], got values \[1.2"):
        check_loss_inputs(torch.tensor([0.0, 1.2, 1.0]))
    bad = v_old.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="v_old contains NaN"):
        check_loss_inputs(torch.full((3,), 0.5), x0=x0, v_old=bad)


def test_loss_has_no_graph_breaks():
    # fullgraph=True fails on a graph break, e.g. a Python branch on a tensor value (a host sync) inside the loss
    x0, x_t, s, v, v_old, v_ref = batch(4, dtype=torch.float32)
    r = torch.full((3,), 0.25)
    loss, _ = torch.compile(nft_loss, backend="eager", fullgraph=True)(x0, x_t, s, v, v_old, v_ref, r, beta=0.5)
    torch.testing.assert_close(loss, nft_loss(x0, x_t, s, v, v_old, v_ref, r, beta=0.5)[0])
    loss, _ = torch.compile(nft_loss_x0, backend="eager", fullgraph=True)(x0, v, v_old, v_ref, r, kl_scale=s)
    torch.testing.assert_close(loss, nft_loss_x0(x0, v, v_old, v_ref, r, kl_scale=s)[0])


def test_adaptive_weight_is_floored_at_eps_as_the_reference_does():
    """The reference code clamps the adaptive weight at 1e-5 (max(mean|e|, eps)); adding eps differs for tiny errors."""
    x0 = torch.zeros(2, 4, dtype=torch.float64)
    tiny = torch.full((2, 4), 2e-6, dtype=torch.float64)  # mean|e| = 2e-6 < eps: the floor decides
    torch.testing.assert_close(adaptive_x0_loss(tiny, x0), torch.full((2,), (2e-6) ** 2 / 1e-5, dtype=torch.float64))
    big = torch.full((2, 4), 0.5, dtype=torch.float64)  # mean|e| > eps: L = mean(e^2) / mean|e| = 0.5 exactly
    torch.testing.assert_close(adaptive_x0_loss(big, x0), torch.full((2,), 0.5, dtype=torch.float64))
