"""Combiners: pure functions from branch predictions to the guided prediction.

Every prediction is batched, ``[B, ...]`` (``[B, C, H, W]`` latents or ``[B, N, D]`` tokens). All reductions are
per sample: a sum over every dimension but the batch one, so samples never leak into each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from negguide.guidance.constants import DEFAULT_EPS


def per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> for each sample: [B, ...] x [B, ...] -> [B]."""
    return (a * b).flatten(1).sum(dim=1)


def _expand_like(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] with as many dims as ``like``."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def perpendicular(a: torch.Tensor, b: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """perp(a, b) = a - <a, b> / (||b||^2 + eps) * b, per sample (Perp-Neg, Armandpour et al. 2023, eq. 7).

    Evaluated on per-sample max-normalised copies of a and b, so that neither zero nor huge differences overflow:
    with m_a = max|a|, m_b = max|b|: coef * b = m_a <a/m_a, b/m_b> / (||b/m_b||^2 + eps / m_b^2) * (b/m_b).
    """
    if a.shape != b.shape:
        raise ValueError(f"perpendicular needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    work = torch.promote_types(a.dtype, torch.float32)  # at least float32 for the sums
    a32, b32 = a.to(work), b.to(work)
    tiny = torch.finfo(work).tiny
    m_a = a32.flatten(1).abs().amax(dim=1).clamp_min(tiny)  # [B]
    m_b = b32.flatten(1).abs().amax(dim=1).clamp_min(tiny)  # [B]
    a_n = a32 / _expand_like(m_a, a32)
    b_n = b32 / _expand_like(m_b, b32)
    coef = m_a * per_sample_dot(a_n, b_n) / (per_sample_dot(b_n, b_n) + eps / (m_b * m_b))  # [B]
    return (a32 - _expand_like(coef, a32) * b_n).to(a.dtype)


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance u + s (c - u) (Ho & Salimans 2022), written exactly as diffusers writes it."""
    return uncond + guidance_scale * (cond - uncond)


def _weights_matrix(weights, count: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Weights given as [K] (one per prompt) or [K, B] (one per prompt and sample) -> [K, B] tensor."""
    w = torch.as_tensor(weights, dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
    if w.ndim == 1:
        w = w[:, None].expand(count, batch)
    if tuple(w.shape) != (count, batch):
        raise ValueError(f"weights must have shape [{count}] or [{count}, {batch}], got {tuple(w.shape)}")
    return w


def perp_neg_combine(
    uncond: torch.Tensor,
    positive: torch.Tensor,
    guidance_scale: float,
    negatives: Sequence[torch.Tensor] = (),
    negative_weights=(),
    extra_positives: Sequence[torch.Tensor] = (),
    positive_weights=(),
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Perp-Neg guidance (Armandpour et al. 2023, eq. 9 generalised to several positives and negatives).

        D_pos = e(c_pos) - u,   D_i = e(c_neg_i) - u
        e_hat = u + s * (D_pos + sum_k v_k perp(D_pos_k, D_pos) - sum_i w_i perp(D_i, D_pos))

    With no extra positives and no negatives this is exactly ``cfg_combine`` (same floating-point operations).
    Weights are [K] or [K, B] (per-sample weights, e.g. view-dependent ones).
    """
    if len(negatives) == 0 and len(extra_positives) == 0:
        return cfg_combine(uncond, positive, guidance_scale)
    batch = uncond.shape[0]
    direction = positive - uncond  # D_pos, [B, ...]
    guided = direction
    if extra_positives:
        v = _weights_matrix(positive_weights, len(extra_positives), batch, uncond)
        for k, extra in enumerate(extra_positives):
            guided = guided + _expand_like(v[k], uncond).to(uncond.dtype) * perpendicular(
                extra - uncond, direction, eps
            )
    if negatives:
        w = _weights_matrix(negative_weights, len(negatives), batch, uncond)
        for i, negative in enumerate(negatives):
            guided = guided - _expand_like(w[i], uncond).to(uncond.dtype) * perpendicular(
                negative - uncond, direction, eps
            )
    return uncond + guidance_scale * guided


def plain_negative_combine(
    positive: torch.Tensor,
    guidance_scale: float,
    negatives: Sequence[torch.Tensor],
    negative_weights,
) -> torch.Tensor:
    """Plain negative prompting: the negatives replace the unconditional branch, u' = sum_i w_i e_i / sum_i w_i.

    With one negative of any positive weight this is diffusers' ``negative_prompt`` (u' = e(c_neg)) bit for bit.
    """
    if len(negatives) == 0:
        raise ValueError("plain_negative_combine needs at least one negative prediction")
    if len(negatives) == 1:
        base = negatives[0]
    else:
        w = _weights_matrix(negative_weights, len(negatives), positive.shape[0], positive)
        total = w.sum(dim=0)  # [B]
        base = sum(_expand_like(w[i] / total, positive).to(positive.dtype) * n for i, n in enumerate(negatives))
    return cfg_combine(base, positive, guidance_scale)
