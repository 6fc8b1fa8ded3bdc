"""Old-policy and evaluation EMAs of DiffusionNFT (Zheng et al., arXiv 2509.16117).

    after each epoch:  theta_old <- d theta_old + (1 - d) theta,   d = min(0.001 * step, 0.5)   (soft old-policy update)
    for evaluation:    theta_ema <- d theta_ema + (1 - d) theta,   d = min((1 + step) / (10 + step), 0.9)

``step`` is the number of optimizer steps taken so far (the reference's ``global_step``). d = 0 copies theta exactly
(the old policy equals the current one: fully on-policy); d = 1 keeps the target unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def _check_step(step) -> None:
    """Raise unless ``step`` is an int >= 0."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0 (optimizer steps taken so far), got {step!r}")


def old_policy_decay(step: int, rate: float = 0.001, max_decay: float = 0.5, flat: int = 0) -> float:
    """d = min(rate * (step - flat), max_decay), 0 before ``flat`` steps: DiffusionNFT's soft old-policy update."""
    _check_step(step)
    for name, value in (("rate", rate), ("max_decay", max_decay)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if max_decay > 1:
        raise ValueError(f"max_decay must be in [0, 1], got {max_decay!r}")
    if step < flat:
        return 0.0
    return min(rate * (step - flat), float(max_decay))


def eval_ema_decay(step: int, max_decay: float = 0.9) -> float:
    """d = min((1 + step) / (10 + step), max_decay): the warm-up EMA decay of DiffusionNFT's evaluation weights."""
    _check_step(step)
    if not (isinstance(max_decay, (int, float)) and 0 <= max_decay <= 1):
        raise ValueError(f"max_decay must be in [0, 1], got {max_decay!r}")
    return min((1.0 + step) / (10.0 + step), float(max_decay))


def _pairs(target, source) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Match tensors of two lists (by position) or two dicts (by key), checking shapes: [(name, target, source)]."""
    if isinstance(target, Mapping) != isinstance(source, Mapping):
        raise TypeError("target and source must both be dicts of tensors or both be lists of tensors")
    if isinstance(target, Mapping):
        missing, extra = sorted(set(target) - set(source)), sorted(set(source) - set(target))
        if missing or extra:
            raise ValueError(
                f"target and source have different keys: only in target {missing[:5]}, only in source {extra[:5]}"
            )
        pairs = [(str(k), target[k], source[k]) for k in target]
    elif isinstance(target, Sequence) and isinstance(source, Sequence):
        if len(target) != len(source):
            raise ValueError(f"target has {len(target)} tensors but source has {len(source)}")
        pairs = [(f"[{i}]", t, s) for i, (t, s) in enumerate(zip(target, source))]
    else:
        raise TypeError(f"target and source must be lists or dicts of tensors, got {type(target).__name__}")
    for name, t, s in pairs:
        if not (isinstance(t, torch.Tensor) and isinstance(s, torch.Tensor)):
            raise TypeError(f"entry {name} is not a pair of tensors")
        if t.shape != s.shape:
            raise ValueError(f"entry {name}: target shape {tuple(t.shape)} != source shape {tuple(s.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"entry {name}: target must be floating point to be averaged, got {t.dtype}")
    return pairs


@torch.no_grad()
def ema_update_(target, source, decay: float) -> None:
    """In place: target <- decay * target + (1 - decay) * source, over lists or dicts of tensors (no autograd)."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0.0 <= decay <= 1.0):
        raise ValueError(f"decay must be a number in [0, 1], got {decay!r}")
    for _, t, s in _pairs(target, source):
        t.lerp_(s.to(device=t.device, dtype=t.dtype), 1.0 - decay)  # t + (1 - d)(s - t); exact copy at d = 0
