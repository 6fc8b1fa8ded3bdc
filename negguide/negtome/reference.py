"""Reference images for NegToMe's reference mode: checked, VAE-encoded once, noised to the step's level.

The encoded reference rides along in the denoiser's batch (one extra row per reference and group), so its tokens
exist at every hooked attention layer; the hooks push the generated images' tokens away from them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _pil_to_array(image, name: str, modes: tuple) -> np.ndarray:
    if image.mode not in modes:
        fix = 'image.convert("RGB")' if modes == ("RGB",) else 'mask.convert("L")'
        raise ValueError(f"{name} has PIL mode {image.mode!r}; expected {' or '.join(modes)}: use {fix}")
    return np.asarray(image)


def prepare_images(images) -> torch.Tensor:
    """PIL RGB image(s) or a float tensor [3,H,W] / [R,3,H,W] in [0, 1] -> float32 tensor [R, 3, H, W]."""
    from PIL import Image

    if isinstance(images, (Image.Image, torch.Tensor)):
        images = [images]
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError(
            f"reference_images must be a PIL image, a tensor or a non-empty list of them, got {type(images).__name__}"
        )
    out = []
    for i, image in enumerate(images):
        name = f"reference_images[{i}]"
        if isinstance(image, Image.Image):
            tensor = torch.from_numpy(_pil_to_array(image, name, ("RGB",)).copy()).permute(2, 0, 1).float() / 255.0
            out.append(tensor[None])
            continue
        if not isinstance(image, torch.Tensor):
            raise TypeError(
                f"{name} is a {type(image).__name__}; give a PIL image or a float tensor [3, H, W] in [0, 1]"
            )
        tensor = image[None] if image.ndim == 3 else image
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"{name} has shape {tuple(image.shape)}; expected [3, H, W] or [R, 3, H, W] (RGB)")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} has dtype {tensor.dtype}; give floats in [0, 1] (e.g. image.float() / 255)")
        tensor = tensor.detach().float().cpu()
        if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
            raise ValueError(f"{name} has values outside [0, 1]; scale it to [0, 1] (a [-1, 1] tensor: (x + 1) / 2)")
        out.append(tensor)
    sizes = {tuple(t.shape[-2:]) for t in out}
    if len(sizes) != 1:
        raise ValueError(f"reference images have different sizes {sorted(sizes)}: resize them to the output size")
    return torch.cat(out)


def prepare_masks(masks, count: int, size: tuple) -> torch.Tensor | None:
    """Masks (True/white = the region to avoid): PIL L/1 or tensors [H,W] / [R,H,W] -> bool [R, H, W]."""
    if masks is None:
        return None
    from PIL import Image

    if isinstance(masks, (Image.Image, torch.Tensor)):
        masks = [masks]
    out = []
    for i, mask in enumerate(masks):
        name = f"reference_masks[{i}]"
        if isinstance(mask, Image.Image):
            tensor = torch.from_numpy(_pil_to_array(mask, name, ("L", "1")).copy()).float()
            tensor = tensor / (255.0 if mask.mode == "L" else 1.0)
        elif isinstance(mask, torch.Tensor):
            tensor = mask.detach().float().cpu()
        else:
            raise TypeError(f"{name} is a {type(mask).__name__}; give a PIL 'L' image or a tensor [H, W]")
        tensor = tensor[None] if tensor.ndim == 2 else tensor
        if tensor.ndim != 3:
            raise ValueError(f"{name} has shape {tuple(mask.shape)}; expected [H, W] or [R, H, W]")
        out.append(tensor > 0.5)
    result = torch.cat(out)
    if result.shape[0] != count:
        raise ValueError(
            f"reference_masks has {result.shape[0]} masks for {count} reference images: give one per image"
        )
    if tuple(result.shape[-2:]) != tuple(size):
        raise ValueError(
            f"reference masks are {tuple(result.shape[-2:])} but the images are {tuple(size)}: resize them"
        )
    if not result.flatten(1).any(dim=1).all():
        raise ValueError("a reference mask is empty (all False): it would exclude the whole reference image")
    return result


def token_mask(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Image-space masks [R, H, W] -> valid reference tokens [R * h * w] of an h x w feature map (any overlap)."""
    small = F.adaptive_max_pool2d(masks[:, None].float(), (height, width))  # [R, 1, h, w]
    return small.flatten() > 0


def encode_images(vae, images: torch.Tensor, dtype, device) -> torch.Tensor:
    """[R, 3, H, W] in [0, 1] -> the model's latent space [R, C, h, w] (scaled and shifted like the pipeline's)."""
    pixels = (images * 2 - 1).to(device=device, dtype=vae.dtype)
    latents = vae.encode(pixels).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).to(dtype)


def noised(clean: torch.Tensor, noise: torch.Tensor, level: float, scheduler, flow: bool) -> torch.Tensor:
    """The reference at noise level ``level`` in the denoiser's input space.

    Flow matching: (1 - sigma) x0 + sigma eps with sigma = level. Otherwise the variance-preserving form
    sqrt(a_t) x0 + sqrt(1 - a_t) eps, which is what every epsilon/v scheduler feeds the UNet after
    ``scale_model_input``.
    """
    if flow:
        return (1.0 - level) * clean + level * noise
    alphas = scheduler.alphas_cumprod
    index = min(max(int(round(level * scheduler.config.num_train_timesteps)), 0), len(alphas) - 1)
    a_t = float(alphas[index])
    return a_t**0.5 * clean + (1.0 - a_t) ** 0.5 * noise
