"""Input checks shared by the reward callables ``(images [B, 3, H, W] in [0, 1], prompts) -> Tensor[B]``."""

from __future__ import annotations

import torch


def check_images_and_prompts(
    images, prompts, min_size: int = 1, single_prompt: bool = True, value_range: bool = True
) -> list[str]:
    """Validate a reward call; return the prompts as a list of ``B`` strings (with ``single_prompt``, one str is
    repeated). ``value_range`` also checks [0, 1] (one host sync); ``min_size`` is the smallest side in pixels."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, 3, H, W] in [0, 1], got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}; use images.float() / 255")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must have shape [B, 3, H, W], got {tuple(images.shape)}; add a batch dim with images[None]"
            " or move channels first with images.permute(0, 3, 1, 2)"
        )
    if images.shape[0] == 0 or min(images.shape[2:]) < min_size:
        raise ValueError(
            f"images of shape {tuple(images.shape)} are empty or smaller than {min_size}x{min_size} pixels"
        )
    batch = images.shape[0]
    if isinstance(prompts, str) and single_prompt:
        prompts = [prompts] * batch
    elif isinstance(prompts, (list, tuple)):
        prompts = list(prompts)
    else:
        one = " or one str" if single_prompt else ""
        raise TypeError(f"prompts must be a list of str (one per image){one}, got {type(prompts).__name__}")
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for {batch} images; pass one prompt per image")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"every prompt must be a str, got {type(p).__name__} ({p!r}) at prompts[{i}]")
    if value_range:
        with torch.no_grad():
            lo, hi = float(images.min()), float(images.max())
        if not (lo >= -1e-3 and hi <= 1.0 + 1e-3):  # also catches NaN
            raise ValueError(
                f"images must hold values in [0, 1], got min {lo:.3g} max {hi:.3g}; map [-1, 1] images with"
                " (x + 1) / 2 and uint8 ones with x / 255"
            )
    return prompts
