"""DiffusionNFT loss (Zheng et al., arXiv 2509.16117): implicit policies, adaptive x0 weighting, KL to the reference.

Velocity form (flow matching, the paper's setting), with x_t = (1 - s) x0 + s eps and x0 = x_t - s v:

    v+ = beta v_theta + (1 - beta) v_old        v- = (1 + beta) v_old - beta v_theta
    L+- = mean_ps((x0+- - x0)^2) / sg(max(mean_ps|x0+- - x0|, eps))    x0+- = x_t - s v+-
    loss = mean_B((r L+ + (1 - r) L-) / beta) + kl_weight * mean_B(mean_ps (v_theta - v_ref)^2)

(mean_ps: per-sample mean over every dim but the batch one; mean_B: mean over the batch; sg: stop-gradient.)

x0 form (any parameterisation: epsilon or v prediction through :func:`x0_from_prediction`): the same loss with
x0+ = beta x0_theta + (1 - beta) x0_old and x0- = (1 + beta) x0_old - beta x0_theta. The implicit policies are affine
combinations whose coefficients sum to 1, so for a flow model with x0_* = x_t - s v_* the x0 form's x0+- equal the
velocity form's x0+- exactly (up to float rounding): identical policy terms, identical adaptive weights, identical
gradients. Only the KL term differs: it is measured on x0, and x0_theta - x0_ref = -s (v_theta - v_ref), so the x0
form's per-sample KL is s^2 times the velocity form's. Scaling choice: by default (``kl_scale=None``) the x0 form's KL
is the plain x0 MSE; pass ``kl_scale=native_kl_scale(...)`` ([B]: 1/s^2 for flow, ab/(1-ab) for epsilon, 1/(1-ab) for
v prediction) to measure it in the model's own output space, as the reference does; with 1/s^2 the two forms agree
to the eps of :func:`native_kl_scale`. The policy term needs no timestep weighting: the adaptive weight makes each
L+- homogeneous of degree 1 in the x0 error, whatever the parameterisation.

Pure tensor functions with no host syncs (torch.compile friendly): the value checks that must read tensors live in
:func:`check_loss_inputs`, to run once before training (or per batch while debugging).
"""

from __future__ import annotations

import math

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim but the batch one: [B, ...] -> [B]."""
    return x.flatten(1).mean(dim=1)


def _per_sample(value, like: torch.Tensor, name: str) -> torch.Tensor:
    """A float, 0-dim or [B] tensor -> [B, 1, ..., 1] broadcastable against ``like`` ([B, ...])."""
    v = torch.as_tensor(value, device=like.device)
    if v.ndim == 1 and v.shape[0] == like.shape[0]:
        return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))  # [B] -> [B, 1, ..., 1]
    if v.ndim == 0:
        return v
    raise ValueError(f"{name} must be a number or have shape [{like.shape[0]}] (one per sample), got {tuple(v.shape)}")


def _check_number(name: str, value, low: float, high: float, low_open: bool, hint: str = "") -> None:
    """Raise a ValueError naming ``value`` unless it is a real number in [low, high] (or (low, high])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python number, got {type(value).__name__} {value!r}")
    inside = (low < value if low_open else low <= value) and value <= high
    if not (math.isfinite(value) and inside):
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}{hint}")


def _check_settings(beta, kl_weight, eps, policy_weight) -> None:
    """Validate the Python-number settings of the loss (no tensor reads)."""
    _check_number("beta", beta, 0.0, 1.0, True, "; the reference uses 1.0 (0.1 for OCR and multi-reward)")
    _check_number("kl_weight", kl_weight, 0.0, math.inf, False, "; the reference uses 1e-4")
    _check_number("eps", eps, 0.0, math.inf, True)
    _check_number("policy_weight", policy_weight, 0.0, math.inf, True, "; the reference's code uses 5.0")


def _check_shapes(r: torch.Tensor, **tensors) -> None:
    """Every named tensor [B, ...] with one shape (ndim >= 2), and r of shape [B]."""
    shape = None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ValueError(f"{name} must be batched [B, ...] with ndim >= 2, got shape {tuple(t.shape)}")
        if shape is None:
            shape, first = t.shape, name
        elif t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {first} has {tuple(shape)}: they must agree")
    if not isinstance(r, torch.Tensor) or r.shape != shape[:1]:
        got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
        raise ValueError(f"r must be a tensor of shape [{shape[0]}] (one optimality probability per sample), got {got}")


def implicit_policies(pred_theta: torch.Tensor, pred_old: torch.Tensor, beta: float):
    """Implicit positive/negative policies p+ = b p_theta + (1-b) p_old, p- = (1+b) p_old - b p_theta (DiffusionNFT)."""
    pred_old = pred_old.detach()
    return beta * pred_theta + (1.0 - beta) * pred_old, (1.0 + beta) * pred_old - beta * pred_theta


def adaptive_x0_loss(x0_pred: torch.Tensor, x0: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """mean_ps((x0_pred - x0)^2) / sg(max(mean_ps|x0_pred - x0|, eps)), the adaptive weighting: [B, ...] -> [B].

    The weight is floored at ``eps`` (a clamp, as the DiffusionNFT reference code does), not offset by it: the two
    agree to a relative eps / mean|e| wherever the error is not tiny. negguide 0.1 added eps (its bundled ShapeWorld
    LoRA was trained that way; the difference there is below 1e-4 relative)."""
    err = x0_pred - x0
    weight = per_sample_mean(err.detach().abs()).clamp(min=eps)  # [B], stop-gradient
    return per_sample_mean(err * err) / weight


def kl_penalty(pred: torch.Tensor, pred_ref: torch.Tensor) -> torch.Tensor:
    """mean_ps((pred - sg(pred_ref))^2), DiffusionNFT's KL-to-reference surrogate: [B, ...] -> [B]."""
    diff = pred - pred_ref.detach()
    return per_sample_mean(diff * diff)


def _combine(x0, x0_plus, x0_minus, r, beta, kl, kl_weight, eps, policy_weight, deviation):
    """Weight L+- by r, 1 - r and 1/beta, add the KL term; returns (loss, detached diagnostics)."""
    loss_plus = adaptive_x0_loss(x0_plus, x0, eps)  # [B]
    loss_minus = adaptive_x0_loss(x0_minus, x0, eps)  # [B]
    policy = ((r * loss_plus + (1.0 - r) * loss_minus) / beta).mean()
    kl_mean = kl.mean()
    loss = policy_weight * policy + kl_weight * kl_mean
    stats = {
        "policy": policy,
        "loss_plus": loss_plus.mean(),
        "loss_minus": loss_minus.mean(),
        "kl": kl_mean,
        "old_deviation": deviation.mean(),
    }
    return loss, {k: v.detach() for k, v in stats.items()}


def nft_loss(
    x0,
    x_t,
    sigma,
    v_theta,
    v_old,
    v_ref,
    r,
    beta: float = 1.0,
    kl_weight: float = 1e-4,
    eps: float = 1e-5,
    policy_weight: float = 1.0,
):
    """DiffusionNFT loss for flow-matching (velocity) models; returns (scalar loss, detached diagnostics).

    x0, x_t, v_theta (with grad), v_old and v_ref (no grad; None: no KL term): [B, ...]; sigma: float or [B]; r: [B].
    Computed in at least float32. Diagnostics: policy, loss_plus, loss_minus, kl, old_deviation (0-dim tensors).
    """
    named = dict(x0=x0, x_t=x_t, v_theta=v_theta, v_old=v_old) | ({} if v_ref is None else dict(v_ref=v_ref))
    _check_shapes(r, **named)
    _check_settings(beta, kl_weight, eps, policy_weight)
    work = torch.promote_types(v_theta.dtype, torch.float32)
    x0, x_t, v_theta, v_old, r = (t.to(work) for t in (x0, x_t, v_theta, v_old.detach(), r.detach()))
    s = _per_sample(sigma, x_t, "sigma").to(work)  # [B, 1, ..., 1] or 0-dim
    v_plus, v_minus = implicit_policies(v_theta, v_old, beta)
    kl = kl_penalty(v_theta, v_ref.to(work)) if v_ref is not None else v_theta.new_zeros(v_theta.shape[0])  # [B]
    deviation = per_sample_mean((v_theta - v_old).detach() ** 2)  # [B]
    return _combine(x0, x_t - s * v_plus, x_t - s * v_minus, r, beta, kl, kl_weight, eps, policy_weight, deviation)


def nft_loss_x0(
    x0,
    x0_theta,
    x0_old,
    x0_ref,
    r,
    beta: float = 1.0,
    kl_weight: float = 1e-4,
    eps: float = 1e-5,
    kl_scale=None,
    policy_weight: float = 1.0,
):
    """DiffusionNFT loss in x0 space (any parameterisation); returns (scalar loss, detached diagnostics).

    x0_theta (with grad), x0_old, x0_ref (no grad; None: no KL term): x0 predictions [B, ...] of the current, old and
    reference policies; r: [B]. KL per sample = kl_scale * mean_ps (x0_theta - x0_ref)^2 (kl_scale: None = 1, float
    or [B]; see the module docstring and :func:`native_kl_scale`).
    """
    named = dict(x0=x0, x0_theta=x0_theta, x0_old=x0_old) | ({} if x0_ref is None else dict(x0_ref=x0_ref))
    _check_shapes(r, **named)
    _check_settings(beta, kl_weight, eps, policy_weight)
    work = torch.promote_types(x0_theta.dtype, torch.float32)
    x0, x0_theta, x0_old, r = (t.to(work) for t in (x0, x0_theta, x0_old.detach(), r.detach()))
    x0_plus, x0_minus = implicit_policies(x0_theta, x0_old, beta)
    if x0_ref is None:
        kl = x0_theta.new_zeros(x0_theta.shape[0])  # [B]
    else:
        kl = kl_penalty(x0_theta, x0_ref.to(work))  # [B]
        if kl_scale is not None:
            kl = kl * _per_sample(kl_scale, x0_theta, "kl_scale").to(work).reshape(-1)  # [B] or 0-dim -> flat
    deviation = per_sample_mean((x0_theta - x0_old).detach() ** 2)  # [B]
    return _combine(x0, x0_plus, x0_minus, r, beta, kl, kl_weight, eps, policy_weight, deviation)


def x0_from_flow(v: torch.Tensor, x_t: torch.Tensor, sigma) -> torch.Tensor:
    """x0 = x_t - s v for flow matching, x_t = (1 - s) x0 + s eps and v = eps - x0 (sigma: float or [B])."""
    return x_t - _per_sample(sigma, x_t, "sigma") * v


def x0_from_prediction(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar, prediction_type: str = "epsilon", eps: float = 1e-8
) -> torch.Tensor:
    """x0 from an epsilon / v / sample prediction: x_t = sqrt(ab) x0 + sqrt(1-ab) eps, v = sqrt(ab) eps - sqrt(1-ab) x0.

    ``alpha_bar``: the scheduler's ``alphas_cumprod`` at each sample's timestep (number, 0-dim or [B]); sqrt(ab) is
    floored at ``eps`` for the epsilon division (epsilon prediction is ill-posed at ab = 0: use v prediction there).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}; flow-matching "
            "models use x0_from_flow"
        )
    if model_output.shape != x_t.shape:
        raise ValueError(f"model_output has shape {tuple(model_output.shape)} but x_t has {tuple(x_t.shape)}")
    ab = _per_sample(alpha_bar, x_t, "alpha_bar")  # [B, 1, ..., 1] or 0-dim
    if not ab.is_floating_point():
        ab = ab.to(torch.float32)
    if prediction_type == "sample":
        return model_output
    if prediction_type == "epsilon":
        return (x_t - (1.0 - ab).clamp_min(0.0).sqrt() * model_output) / ab.sqrt().clamp_min(eps)
    return ab.sqrt() * x_t - (1.0 - ab).clamp_min(0.0).sqrt() * model_output


def native_kl_scale(prediction_type: str, alpha_bar=None, sigma=None, eps: float = 1e-8) -> torch.Tensor:
    """Factor [B] taking the x0-space KL to the model's output space: flow 1/s^2, epsilon ab/(1-ab), v 1/(1-ab)."""
    if prediction_type == "flow":
        if sigma is None:
            raise ValueError("native_kl_scale('flow') needs sigma")
        s = torch.as_tensor(sigma)
        return 1.0 / (s * s + eps)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be 'flow' or one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if alpha_bar is None:
        raise ValueError(f"native_kl_scale({prediction_type!r}) needs alpha_bar")
    ab = torch.as_tensor(alpha_bar)
    if prediction_type == "sample":
        return torch.ones_like(ab)
    return (ab if prediction_type == "epsilon" else torch.ones_like(ab)) / (1.0 - ab + eps)


def check_loss_inputs(r: torch.Tensor | None = None, **tensors) -> None:
    """Value checks the loss skips to stay sync-free: r in [0, 1], every named tensor finite. Syncs with the host."""
    for name, t in tensors.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "inf"
            raise ValueError(f"{name} contains {kind} values; check the model outputs and the rollout samples")
    if r is not None:
        if not bool(torch.isfinite(r).all()) or bool(((r < 0) | (r > 1)).any()):
            bad = r[~(torch.isfinite(r) & (r >= 0) & (r <= 1))][:5].tolist()
            raise ValueError(
                f"r must be optimality probabilities in [0, 1], got values {bad}; map rewards with "
                "optimality_probability"
            )


def native_target(x0: torch.Tensor, eps: torch.Tensor, level, prediction_type: str) -> torch.Tensor:
    """What the model regresses in its own training loss, for x_t made from (x0, eps) at ``level``: flow v = eps - x0
    (level: sigma, unused); epsilon: eps; v_prediction: sqrt(ab) eps - sqrt(1 - ab) x0 (level: alpha_bar)."""
    if prediction_type == "flow":
        return eps - x0
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        ab = _per_sample(level, x0, "alpha_bar")
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0
    raise ValueError(f"prediction_type = {prediction_type!r} is not one of ('flow', 'epsilon', 'v_prediction')")


def positive_only_loss(fit: torch.Tensor, r: torch.Tensor, kl: torch.Tensor | None = None, kl_weight: float = 1e-4):
    """The positive-only (reward-filtered fine-tuning) baseline: each sample's regression loss ``fit`` [B] counts
    when r > 0.5 (reward above its prompt group's mean), the others weigh 0.

        loss = mean_B(1[r > 0.5] * fit) + kl_weight * mean_B(kl)

    ``fit``: the model's own training loss on the sample (mean_ps (pred - native_target)^2; objective
    "positive-only") or NFT's adaptive x0 loss (DiffusionNFT's positive term at beta = 1 with r -> the 0/1 filter;
    "positive-only-x0"). The mean is over the whole batch (dropped samples count as zeros), so micro-batches and
    processes add up exactly as for nft_loss. Returns (loss, detached diagnostics) like nft_loss.
    """
    keep = (r.detach() > 0.5).to(fit.dtype)  # [B]
    policy = (keep * fit).mean()
    kl_mean = kl.mean() if kl is not None else fit.new_zeros(())
    loss = policy + kl_weight * kl_mean
    stats = {
        "policy": policy,
        "loss_plus": fit.mean(),
        "loss_minus": torch.zeros_like(policy),
        "kl": kl_mean,
        "old_deviation": torch.zeros_like(policy),
        "kept": keep.mean(),
    }
    return loss, {k: v.detach() for k, v in stats.items()}
