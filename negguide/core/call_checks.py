"""Checks of a pipeline call's standard diffusers arguments, before any compute.

diffusers leaves many bad values to fail deep inside torch (a float64 embedding, a missing pooled embedding, a
negative height) or to pass silently (``height=0`` taken as the default, zero steps giving an image after no
denoising). negguide's pipelines refuse them first, with a message that names the value and the fix.
"""

from __future__ import annotations

import math
import numbers

import torch

#: the most images one call may generate (prompts x num_images_per_prompt): a typo such as 10**6 would otherwise try
#: to allocate the whole batch at once
MAX_IMAGES_PER_CALL = 1024
#: the largest image side a call may ask for, in pixels (a typo such as 51200 would otherwise allocate for minutes)
MAX_SIDE = 8192
#: the most denoising steps a call may ask for (the schedulers are trained on 1000 timesteps)
MAX_INFERENCE_STEPS = 1000
#: the longest T5 prompt the transformer families encode (their text encoders' own limit)
MAX_SEQUENCE_LENGTH = 512
#: embeddings whose pooled companion the family needs when they are given instead of a prompt
POOLED_COMPANION = {
    "sdxl": {"prompt_embeds": "pooled_prompt_embeds", "negative_prompt_embeds": "negative_pooled_prompt_embeds"},
    "sd3": {"prompt_embeds": "pooled_prompt_embeds", "negative_prompt_embeds": "negative_pooled_prompt_embeds"},
    "flux": {"prompt_embeds": "pooled_prompt_embeds", "negative_prompt_embeds": "negative_pooled_prompt_embeds"},
}
EMBEDDING_ARGUMENTS = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_prompt(prompt) -> int:
    """``prompt``: a string or a non-empty list of strings (or None when embeddings are given); returns its rows."""
    if prompt is None or isinstance(prompt, str):
        return 1
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("prompt is an empty list: give at least one prompt")
    bad = [i for i, p in enumerate(prompt) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompt[{bad[0]}] is a {type(prompt[bad[0]]).__name__}; every prompt must be a string")
    return len(prompt)


def check_call(
    family: str, call: dict, model_dtype: torch.dtype | None = None, size_multiple: int | None = None
) -> None:
    """Refuse bad standard arguments of a family pipeline call (``call``: its keyword arguments) before compute.
    ``size_multiple``: what height and width must be a multiple of (the VAE's factor times the patch size)."""
    rows = check_prompt(call.get("prompt"))
    embeds = call.get("prompt_embeds")
    if call.get("prompt") is None and isinstance(embeds, torch.Tensor) and embeds.ndim >= 1:
        rows = embeds.shape[0]
    images = call.get("num_images_per_prompt", 1)
    if images is not None:
        if not _is_int(images) or images < 1:
            raise ValueError(f"num_images_per_prompt = {images!r} must be an integer >= 1")
        if rows * images > MAX_IMAGES_PER_CALL:
            raise ValueError(
                f"{rows} prompts x num_images_per_prompt {images} = {rows * images} images in one call; the limit is "
                f"{MAX_IMAGES_PER_CALL}: split the batch into several calls"
            )
    for name in ("height", "width"):
        value = call.get(name)
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= MAX_SIDE:
            raise ValueError(
                f"{name} = {value!r} must be a number of pixels from 1 to {MAX_SIDE} (or None for the model's default)"
            )
    check_size(family, size_multiple, call.get("height"), call.get("width"))
    steps = call.get("num_inference_steps")
    custom_schedule = call.get("timesteps") is not None or call.get("sigmas") is not None
    if steps is not None and not custom_schedule and (not _is_int(steps) or not 1 <= steps <= MAX_INFERENCE_STEPS):
        raise ValueError(f"num_inference_steps = {steps!r} must be an integer from 1 to {MAX_INFERENCE_STEPS}")
    length = call.get("max_sequence_length")
    if length is not None and (not _is_int(length) or not 0 <= length <= MAX_SEQUENCE_LENGTH):
        raise ValueError(f"max_sequence_length = {length!r} must be an integer from 0 to {MAX_SEQUENCE_LENGTH}")
    for name in ("guidance_scale", "true_cfg_scale"):
        value = call.get(name)
        if value is not None and (
            not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value)
        ):
            raise ValueError(f"{name} = {value!r} must be a finite number (1 or less turns CFG off)")
    for name in EMBEDDING_ARGUMENTS:
        value = call.get(name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} has dtype {value.dtype}; embeddings are floating-point tensors")
        if model_dtype is not None and value.dtype != model_dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype} but the model runs in {model_dtype}: pass {name}.to({model_dtype})"
            )
    for given, pooled in POOLED_COMPANION.get(family, {}).items():
        if call.get(given) is not None and call.get(pooled) is None:
            raise ValueError(f"{given} is given without {pooled}: this family ({family}) needs both")


def size_multiple(family: str, pipe) -> int | None:
    """What height and width must be a multiple of on a diffusers pipeline of ``family``: the VAE's scale factor,
    times the patch size on the transformers (Flux packs 2 x 2 latent pixels into a token). None if unknown."""
    scale = getattr(pipe, "vae_scale_factor", None)
    if not _is_int(scale) or scale < 1:
        return None
    transformer = getattr(pipe, "transformer", None)
    patch = {"sd3": getattr(getattr(transformer, "config", None), "patch_size", 2), "flux": 2}.get(family, 1)
    return scale * patch


def check_size(family: str, multiple: int | None, height, width, names: tuple = ("height", "width")) -> None:
    """ValueError unless ``height`` and ``width`` (None: the model's default) are multiples of ``multiple``;
    ``names`` are what the message calls them (``--height`` on the command line)."""
    for name, value in zip(names, (height, width)):
        if multiple and _is_int(value) and value % multiple:
            lower, upper = max(multiple, value - value % multiple), value - value % multiple + multiple
            raise ValueError(
                f"{name} = {value} is not a multiple of {multiple}, which this {family} model needs: "
                f"use {lower} or {upper}"
            )
