"""View-dependent Perp-Neg weights for novel views and text-to-3D, and the score-distillation gradient.

Azimuth ``a`` in degrees (0 = front, +-180 = back), elevation in degrees. Each scheme maps a camera to
a blend of the front/side/back prompts (the positive) and Perp-Neg weights on view negatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from negguide.guidance.combine import DEFAULT_EPS, perp_neg_combine

SCHEMES = ("threestudio", "stable-dreamfusion")

# threestudio's shifted exponential decays f(a, b, c; r) = a * exp(-b r) + c
THREESTUDIO_F_FS = (4.0, 0.5, -2.426)  # front negative while between front and side
THREESTUDIO_F_SF = (4.0, 0.5, -2.426)  # side negative while between front and side
THREESTUDIO_F_SB = (1.0, 0.5, -0.606)  # side negative while between side and back
THREESTUDIO_F_FSB = (1.0, 0.5, 0.967)  # front negative while between side and back


@dataclass(frozen=True)
class ViewWeights:
    """A camera's prompt blend: positive = sum of ``positive_blend[v] * e_v``; negatives with Perp-Neg weights."""

    positive_blend: dict = field(default_factory=dict)  # view name -> blend coefficient, sums to 1
    negative_weights: dict = field(default_factory=dict)  # view name -> w_i >= 0


def shifted_exp_decay(a: float, b: float, c: float, r: float) -> float:
    """f(a, b, c; r) = a exp(-b r) + c."""
    return a * math.exp(-b * r) + c


def _check_angles(azimuth: float, elevation: float) -> tuple[float, float]:
    for name, value in (("azimuth", azimuth), ("elevation", elevation)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of degrees, got {value!r}")
    if not -90.0 <= elevation <= 90.0:
        raise ValueError(f"elevation = {elevation} must lie in [-90, 90] degrees")
    # the schemes depend on |azimuth| only: fold into [0, 180] symmetrically (a and -a give bit-identical results)
    folded = abs(azimuth) % 360.0
    if folded > 180.0:
        folded = 360.0 - folded
    return folded, elevation


def view_weights(
    azimuth: float,
    elevation: float = 0.0,
    scheme: str = "threestudio",
    overhead_elevation: float | None = None,
    negative_w: float = 2.0,
    front_decay: float = 2.0,
    side_decay: float = 10.0,
) -> ViewWeights:
    """Front/side/back blend and negative weights for one camera (Perp-Neg sec. 4; threestudio, stable-dreamfusion).

    ``threestudio``: |a| < 90: r = 1 - |a|/90, positive r*front + (1-r)*side, negatives front f_fs(r), side f_sf(1-r);
    |a| >= 90: r = 2 - |a|/90, positive r*side + (1-r)*back, negatives side f_sb(r), front f_fsb(r);
    ``stable-dreamfusion``: |a| < 90: r = 1 - |a|/90, negatives front exp(-front_decay r) w (0 where r > 0.8), side
    exp(-side_decay (1-r)) w (0 where r < 0.2); |a| >= 90: r = 2 - |a|/90, negatives side exp(-side_decay r) w / 2
    (0 where r > 0.8) and front w, with w = ``negative_w`` (its -2 written as a positive weight under this library's
    sign convention).
    ``overhead_elevation``: above this elevation the overhead prompt alone, no negatives. Default (None): 60 degrees
    for ``threestudio``, which has this rule; off for ``stable-dreamfusion``, whose published scheme ignores the
    elevation. Give a number to apply the rule to either scheme, or ``math.inf`` to turn it off.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme = {scheme!r} is not known; choose one of {SCHEMES}")
    azimuth, elevation = _check_angles(azimuth, elevation)
    if overhead_elevation is None:
        overhead_elevation = 60.0 if scheme == "threestudio" else math.inf
    elif isinstance(overhead_elevation, bool) or not isinstance(overhead_elevation, (int, float)):
        raise TypeError(f"overhead_elevation = {overhead_elevation!r} must be a number of degrees or None")
    if elevation > overhead_elevation:
        return ViewWeights({"overhead": 1.0}, {})
    a = abs(azimuth)
    if scheme == "threestudio":
        if a < 90.0:
            r = 1.0 - a / 90.0
            pos = {"front": r, "side": 1.0 - r}
            neg = {
                "front": shifted_exp_decay(*THREESTUDIO_F_FS, r),
                "side": shifted_exp_decay(*THREESTUDIO_F_SF, 1.0 - r),
            }
        else:
            r = 2.0 - a / 90.0
            pos = {"side": r, "back": 1.0 - r}
            neg = {"side": shifted_exp_decay(*THREESTUDIO_F_SB, r), "front": shifted_exp_decay(*THREESTUDIO_F_FSB, r)}
    else:
        if a < 90.0:
            r = 1.0 - a / 90.0
            pos = {"front": r, "side": 1.0 - r}
            neg = {
                "front": 0.0 if r > 0.8 else math.exp(-r * front_decay) * negative_w,
                "side": 0.0 if r < 0.2 else math.exp(-(1.0 - r) * side_decay) * negative_w,
            }
        else:
            r = 2.0 - a / 90.0
            pos = {"side": r, "back": 1.0 - r}
            neg = {
                "side": 0.0 if r > 0.8 else math.exp(-r * side_decay) * negative_w / 2.0,
                "front": negative_w,
            }
    # the decays cross zero only by rounding (f_fs(1) = 1.2e-4): clamp so weights stay valid Perp-Neg weights
    neg = {k: max(0.0, v) for k, v in neg.items()}
    return ViewWeights(pos, neg)


def blend_view_embeddings(weights: ViewWeights, view_embeds: dict) -> torch.Tensor:
    """The positive text embedding of a camera: sum over views of blend coefficient times that view's embedding."""
    missing = [v for v in weights.positive_blend if v not in view_embeds]
    if missing:
        raise ValueError(f"view_embeds lacks {missing}; give embeddings for {sorted(weights.positive_blend)}")
    return sum(c * view_embeds[v] for v, c in weights.positive_blend.items())


def sds_gradient(
    noise: torch.Tensor,
    uncond: torch.Tensor,
    positive: torch.Tensor,
    guidance_scale: float = 100.0,
    negatives: Sequence[torch.Tensor] = (),
    negative_weights=(),
    weighting: torch.Tensor | float = 1.0,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Score-distillation gradient w(t) (e_hat - eps) with e_hat the Perp-Neg prediction (Poole et al. 2022, eq. 3).

    ``negative_weights`` may be [K] or per-camera [K, B]; ``weighting`` is w(t), a scalar or a [B] tensor.
    Returns a tensor shaped like ``noise``: use ``latents.backward(gradient=...)`` or the usual SDS surrogate loss.
    """
    guided = perp_neg_combine(uncond, positive, guidance_scale, negatives, negative_weights, eps=eps)
    w = torch.as_tensor(weighting, dtype=noise.dtype, device=noise.device)
    if w.ndim == 1:
        w = w.reshape(-1, *([1] * (noise.ndim - 1)))  # [B] -> [B, 1, ..., 1]
    return w * (guided - noise)
