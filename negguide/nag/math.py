"""NAG's math: small pure functions on attention features ``[..., C]`` (``[rows, tokens, C]`` in the hooks).

Every reduction is over the last (feature) dimension, so each token of each row is guided on its own; every norm
has ``eps`` added. Work is done in at least float32 and the result is cast back to the positive's dtype.

For one guided layer, with the positive's features ``Z+`` and negative ``i``'s ``Z-_i`` (same queries), per token:

    Z~ = Z+ + sum_i s_i (Z+ - Z-_i)
    Z^ = Z~ * min(1, tau (||Z+||_1 + eps) / (||Z~||_1 + eps))
    Z  = Z+ + alpha (Z^ - Z+)                                   (= alpha Z^ + (1 - alpha) Z+)

With one negative this is the paper's formula (arXiv 2505.21179), its L1 norm ratio clamped at ``tau`` as the
reference code does; the reference's ``nag_scale`` is ``1 + s``. Writing the blend as ``Z+ + alpha (Z^ - Z+)``
makes a zero push return ``Z+`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from negguide.nag.settings import NAG_EPS


def l1_norm(z: torch.Tensor, eps: float = NAG_EPS) -> torch.Tensor:
    """||z||_1 + eps per token: [..., C] -> [..., 1]."""
    return z.abs().sum(dim=-1, keepdim=True) + eps


def extrapolate(z_pos: torch.Tensor, z_negs: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
    """Z~ = Z+ + sum_i s_i (Z+ - Z-_i): [..., C]."""
    guided = z_pos
    for z_neg, scale in zip(z_negs, scales):
        guided = guided + scale * (z_pos - z_neg)
    return guided


def normalize(z_guided: torch.Tensor, z_pos: torch.Tensor, tau: float, eps: float = NAG_EPS) -> torch.Tensor:
    """Z^ = Z~ min(1, tau (||Z+||_1 + eps) / (||Z~||_1 + eps)): the L1 norm of each token is at most tau times
    the positive's (plus eps): [..., C] x [..., C] -> [..., C]."""
    ratio = l1_norm(z_pos, eps) / l1_norm(z_guided, eps)  # [..., 1]; exactly 1 where Z~ == Z+
    return z_guided * (tau * ratio).clamp(max=1.0)


def nag_combine(
    z_pos: torch.Tensor,
    z_negs: Sequence[torch.Tensor],
    scales: Sequence[float],
    tau: float,
    alpha: float,
    eps: float = NAG_EPS,
) -> torch.Tensor:
    """Normalized attention guidance of ``z_pos`` [..., C] away from ``z_negs`` (each [..., C]) with one scale
    ``s_i >= 0`` per negative (see the module docstring for the equations). Negatives of scale 0 are skipped;
    with none left, or ``alpha == 0``, ``z_pos`` itself is returned."""
    if isinstance(eps, str):  # the removed ``mode`` argument, given by position
        raise TypeError(f"nag_combine takes no mode (got {eps!r}): NAG has one formula, the paper's")
    if len(z_negs) != len(scales):
        raise ValueError(f"{len(z_negs)} negative features but {len(scales)} scales: give one scale per negative")
    if tau < 1.0:
        raise ValueError(f"tau = {tau} is below 1: the bound would shrink unguided features too")
    for i, z_neg in enumerate(z_negs):
        if z_neg.shape != z_pos.shape:
            raise ValueError(f"negative {i} has shape {tuple(z_neg.shape)} but the positive {tuple(z_pos.shape)}")
    pairs = [(z, float(s)) for z, s in zip(z_negs, scales) if s != 0]
    if not pairs or alpha == 0:
        return z_pos
    work = torch.promote_types(z_pos.dtype, torch.float32)
    pos = z_pos.to(work)  # [..., C]
    guided = extrapolate(pos, [z.to(work) for z, _ in pairs], [s for _, s in pairs])
    bounded = normalize(guided, pos, tau, eps)
    return (pos + alpha * (bounded - pos)).to(z_pos.dtype)
