"""Encoding a guider's extra prompts with a modular pipeline's own text encoders, per family.

Each function returns one prompt's conditioning (one row), keyed by the names the family's diffusers loop denoiser
gives its guider inputs: SDXL ``prompt_embeds`` and ``text_embeds``; SD3 ``encoder_hidden_states`` and
``text_embeds``; Flux (negguide's loop denoiser, :mod:`negguide.guiders.flux`) ``encoder_hidden_states`` and
``pooled_projections``. The encoders are the diffusers modular text encoder blocks' own functions.
"""

from __future__ import annotations

import torch

#: the diffusers ``model_name`` of each family's modular blocks
MODEL_NAMES = {"stable-diffusion-xl": "sdxl", "stable-diffusion-3": "sd3", "flux": "flux"}


def encode_sdxl(components, text: str, device, options: dict) -> dict:
    from diffusers.modular_pipelines.stable_diffusion_xl.encoders import StableDiffusionXLTextEncoderStep

    embeds, _, pooled, _ = StableDiffusionXLTextEncoderStep.encode_prompt(
        components, [text], None, device, 1, False, clip_skip=options.get("clip_skip")
    )
    return {"prompt_embeds": embeds, "text_embeds": pooled}


def encode_sd3(components, text: str, device, options: dict) -> dict:
    from diffusers.modular_pipelines.stable_diffusion_3.encoders import encode_prompt

    embeds, _, pooled, _ = encode_prompt(
        components,
        [text],
        device=device,
        clip_skip=options.get("clip_skip"),
        max_sequence_length=options.get("max_sequence_length", 256),
    )
    return {"encoder_hidden_states": embeds, "text_embeds": pooled}


def encode_flux(components, text: str, device, options: dict) -> dict:
    from diffusers.modular_pipelines.flux.encoders import FluxTextEncoderStep

    embeds, pooled = FluxTextEncoderStep.encode_prompt(
        components, [text], None, device=device, max_sequence_length=options.get("max_sequence_length", 512)
    )
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


ENCODERS = {"sdxl": encode_sdxl, "sd3": encode_sd3, "flux": encode_flux}


@torch.no_grad()
def encode_texts(family: str, components, texts: list[tuple[str, str]], options: dict) -> dict:
    """``{branch name: {guider input name: [1, ...] tensor}}`` for the (branch name, text) pairs."""
    device = components._execution_device
    return {name: ENCODERS[family](components, text, device, options) for name, text in texts}
