"""Rewards -> optimality probability r in [0, 1] (DiffusionNFT, Zheng et al., arXiv 2509.16117).

    A = (R - mean of R over the samples of the same prompt) / (std of all rewards of the epoch + eps)
    r = clip(clip(A, -c, c) / (2 c) + 0.5, 0, 1)            (c = 5: clip(A, -5, 5) / 10 + 0.5)

Run once per epoch on the rewards of the whole epoch (gathered from every process), so every prompt group is
complete. The std is the population std (ddof 0, as numpy's ``np.std`` in the reference), in float64.
These functions validate tensor values and so sync with the host: they belong outside the training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def group_index(group_ids, batch: int | None = None) -> tuple[torch.Tensor, list]:
    """Group ids (int tensor [B] or list of prompts) -> (index [B] int64 in 0..G-1, the G keys in first-seen order)."""
    if isinstance(group_ids, torch.Tensor):
        if group_ids.ndim != 1 or group_ids.is_floating_point() or group_ids.is_complex():
            raise TypeError(
                f"group_ids as a tensor must be 1-D integers, got dtype {group_ids.dtype} shape "
                f"{tuple(group_ids.shape)}; pass one int per sample or a list of prompt strings"
            )
        ids = group_ids.tolist()
    elif isinstance(group_ids, (str, bytes)) or not isinstance(group_ids, Sequence):
        raise TypeError(f"group_ids must be a 1-D int tensor or a list of prompts, got {type(group_ids).__name__}")
    else:
        ids = list(group_ids)
    if batch is not None and len(ids) != batch:
        raise ValueError(f"group_ids has {len(ids)} entries but rewards has {batch}: give one group id per sample")
    keys: dict = {}
    index = [keys.setdefault(key, len(keys)) for key in ids]
    device = group_ids.device if isinstance(group_ids, torch.Tensor) else None
    return torch.tensor(index, dtype=torch.int64, device=device), list(keys)


def check_rewards(rewards: torch.Tensor, group_ids, min_group_size: int = 2) -> tuple[torch.Tensor, list]:
    """Validate rewards [B] and their grouping; returns ``group_index(group_ids)``. Syncs with the host."""
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a torch.Tensor of shape [B], got {type(rewards).__name__}")
    if rewards.ndim != 1:
        raise ValueError(
            f"rewards must have shape [B] (one reward per sample), got {tuple(rewards.shape)}; "
            "a reward callable must return Tensor[B]"
        )
    if rewards.shape[0] == 0:
        raise ValueError("rewards is empty: need at least one prompt group of G >= 2 samples")
    if not rewards.is_floating_point():
        raise TypeError(f"rewards must be floating point, got {rewards.dtype}")
    bad = ~torch.isfinite(rewards)
    if bool(bad.any()):
        where = bad.nonzero().flatten().tolist()
        kind = "NaN" if bool(torch.isnan(rewards).any()) else "inf"
        raise ValueError(
            f"rewards contain {kind} at sample indices {where[:10]} (values "
            f"{rewards[bad][:10].tolist()}); fix the reward function before training"
        )
    index, keys = group_index(group_ids, batch=rewards.shape[0])
    counts = torch.bincount(index.cpu(), minlength=len(keys))  # [G]
    small = (counts < min_group_size).nonzero().flatten().tolist()
    if small:
        g = small[0]
        raise ValueError(
            f"prompt group {keys[g]!r} has G = {int(counts[g])} sample(s); DiffusionNFT compares samples "
            f"of the same prompt, so G must be >= {min_group_size} (raise the samples per prompt); "
            f"{len(small)} of {len(keys)} groups are too small"
        )
    return index, keys


def epoch_reward_std(rewards: torch.Tensor) -> torch.Tensor:
    """Population std (ddof 0) of all rewards of the epoch, float64 0-dim (DiffusionNFT's global std)."""
    return rewards.detach().to(torch.float64).std(correction=0)


def _group_means(rewards64: torch.Tensor, index: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-group mean of rewards, [B] float64 -> [G]; shifted by each group's first reward, so tied groups are exact."""
    positions = torch.arange(rewards64.shape[0], device=rewards64.device)  # [B]
    first = torch.full((groups,), rewards64.shape[0], device=rewards64.device, dtype=torch.int64)
    first = first.scatter_reduce_(0, index, positions, reduce="amin")  # [G] index of each group's first sample
    shift = rewards64[first]  # [G]
    sums = torch.zeros(groups, dtype=torch.float64, device=rewards64.device)
    sums = sums.index_add_(0, index, rewards64 - shift[index])  # [G]
    counts = torch.bincount(index, minlength=groups).to(torch.float64)  # [G], every count >= 1
    return shift + sums / counts


def group_advantages(rewards: torch.Tensor, group_ids, epoch_std=None, eps: float = 1e-4) -> torch.Tensor:
    """A = (R - per-prompt mean R) / (epoch-wide std + eps) (DiffusionNFT advantage), float64 [B]."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    index, keys = check_rewards(rewards, group_ids)
    index = index.to(rewards.device)
    r64 = rewards.detach().to(torch.float64)
    std = (
        epoch_reward_std(rewards)
        if epoch_std is None
        else torch.as_tensor(epoch_std, dtype=torch.float64, device=rewards.device)
    )
    if std.ndim != 0 or not bool(torch.isfinite(std)) or bool(std < 0):
        raise ValueError(f"epoch_std must be a finite scalar >= 0, got {std.tolist()}")
    means = _group_means(r64, index, len(keys))  # [G]
    return (r64 - means[index]) / (std + eps)  # [B]


def advantage_to_probability(advantages: torch.Tensor, clip: float = 5.0) -> torch.Tensor:
    """r = clip(clip(A, -c, c) / (2c) + 0.5, 0, 1): the optimality probability of DiffusionNFT ([B] -> [B])."""
    if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0 (the reference uses 5.0), got {clip!r}")
    return (advantages.clamp(-clip, clip) / (2.0 * clip) + 0.5).clamp(0.0, 1.0)


def optimality_probability(
    rewards: torch.Tensor, group_ids, epoch_std=None, clip: float = 5.0, eps: float = 1e-4
) -> torch.Tensor:
    """Rewards [B] grouped by prompt -> r [B] in [0, 1], dtype of ``rewards`` (DiffusionNFT optimality probability).

    ``epoch_std``: the std of all rewards of the epoch when it was computed elsewhere (e.g. over rewards gathered from
    every process); by default the population std of ``rewards``.
    """
    a = group_advantages(rewards, group_ids, epoch_std=epoch_std, eps=eps)
    return advantage_to_probability(a, clip=clip).to(rewards.dtype)


def group_stats(rewards: torch.Tensor, group_ids) -> dict:
    """Per-prompt statistics for logging: keys, count, mean, std (ddof 0) per group, epoch mean/std, tied fraction.

    ``tied_fraction`` is the share of groups whose rewards are all equal: they get r = 0.5 and teach nothing.
    """
    index, keys = check_rewards(rewards, group_ids, min_group_size=1)
    index = index.to(rewards.device)
    r64 = rewards.detach().to(torch.float64)
    means = _group_means(r64, index, len(keys))  # [G]
    sq = torch.zeros_like(means).index_add_(0, index, (r64 - means[index]) ** 2)  # [G]
    counts = torch.bincount(index, minlength=len(keys))  # [G]
    stds = (sq / counts.to(torch.float64)).sqrt()
    return {
        "keys": keys,
        "count": counts,
        "mean": means,
        "std": stds,
        "epoch_mean": r64.mean(),
        "epoch_std": epoch_reward_std(rewards),
        "tied_fraction": (stds == 0).to(torch.float64).mean(),
    }
