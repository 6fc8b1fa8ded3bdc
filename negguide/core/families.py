"""Per-family adapters: how each diffusers model family conditions its denoiser.

An adapter knows, for one family, which keyword arguments of the denoiser's forward carry per-branch conditioning
(text embeddings, pooled embeddings), which are per-row and must be repeated for every branch (timesteps,
Flux's guidance, SDXL's time ids), and how to encode prompts with the pipeline's own ``encode_prompt``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

Conditioning = dict  # key (dotted for nested dicts, e.g. "added_cond_kwargs.text_embeds") -> Tensor [rows, ...]


@dataclass(frozen=True)
class FamilyAdapter:
    """What the multi-branch core needs to know about one model family."""

    name: str
    pipeline_class: str  # the diffusers pipeline class that serves this family
    denoiser_attr: str  # "unet" or "transformer"
    latent_key: str  # the denoiser's noisy-input argument
    conditioning_keys: tuple  # differ per branch
    per_row_keys: tuple  # same for every branch, repeated to the branch count
    scale_argument: str  # the pipeline argument that holds the CFG scale s
    requires: tuple  # component names that must be present

    # ----------------------------------------------------------------- encoding
    def encode(self, pipe, prompts: list[str], num_images_per_prompt: int, device, options: dict) -> Conditioning:
        """Conditioning for ``prompts`` (rows = len(prompts) * num_images_per_prompt, prompt-major)."""
        raise NotImplementedError

    def encode_pair(self, pipe, call: dict, batch_size: int, num_images_per_prompt: int, device):
        """(positive, unconditional u) conditionings exactly as the family's diffusers pipeline computes them."""
        raise NotImplementedError

    def inner_overrides(self, call: dict) -> dict:
        """Pipeline arguments that switch the diffusers pipeline's own guidance off (negguide does it)."""
        return {self.scale_argument: 1.0, "negative_prompt": None, "negative_prompt_embeds": None}

    def cfg_enabled(self, call: dict, scale: float, has_negatives: bool = False) -> bool:
        """Whether the unconditional branch is in use: diffusers' CFG rule, or negatives that need u."""
        return scale > 1.0


def _lora_scale(call: dict):
    for key in ("cross_attention_kwargs", "joint_attention_kwargs"):
        if call.get(key):
            return call[key].get("scale")
    return None


class _SD(FamilyAdapter):
    def encode(self, pipe, prompts, num_images_per_prompt, device, options):
        embeds, _ = pipe.encode_prompt(
            prompts,
            device,
            num_images_per_prompt,
            False,
            None,
            lora_scale=options.get("lora_scale"),
            clip_skip=options.get("clip_skip"),
        )
        return {"encoder_hidden_states": embeds}

    def encode_pair(self, pipe, call, batch_size, num_images_per_prompt, device):
        positive, negative = pipe.encode_prompt(
            call.get("prompt"),
            device,
            num_images_per_prompt,
            True,
            call.get("negative_prompt"),
            prompt_embeds=call.get("prompt_embeds"),
            negative_prompt_embeds=call.get("negative_prompt_embeds"),
            lora_scale=_lora_scale(call),
            clip_skip=call.get("clip_skip"),
        )
        return {"encoder_hidden_states": positive}, {"encoder_hidden_states": negative}


class _SDXL(FamilyAdapter):
    def encode(self, pipe, prompts, num_images_per_prompt, device, options):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=False,
            lora_scale=options.get("lora_scale"),
            clip_skip=options.get("clip_skip"),
        )
        return {"encoder_hidden_states": embeds, "added_cond_kwargs.text_embeds": pooled}

    def encode_pair(self, pipe, call, batch_size, num_images_per_prompt, device):
        positive, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=call.get("prompt"),
            prompt_2=call.get("prompt_2"),
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=True,
            negative_prompt=call.get("negative_prompt"),
            negative_prompt_2=call.get("negative_prompt_2"),
            prompt_embeds=call.get("prompt_embeds"),
            negative_prompt_embeds=call.get("negative_prompt_embeds"),
            pooled_prompt_embeds=call.get("pooled_prompt_embeds"),
            negative_pooled_prompt_embeds=call.get("negative_pooled_prompt_embeds"),
            lora_scale=_lora_scale(call),
            clip_skip=call.get("clip_skip"),
        )
        return (
            {"encoder_hidden_states": positive, "added_cond_kwargs.text_embeds": pooled},
            {"encoder_hidden_states": negative, "added_cond_kwargs.text_embeds": negative_pooled},
        )

    def inner_overrides(self, call):
        out = super().inner_overrides(call)
        out.update(negative_prompt_2=None, negative_pooled_prompt_embeds=None)
        return out


class _SD3(FamilyAdapter):
    def encode(self, pipe, prompts, num_images_per_prompt, device, options):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=False,
            clip_skip=options.get("clip_skip"),
            max_sequence_length=options.get("max_sequence_length", 256),
            lora_scale=options.get("lora_scale"),
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def encode_pair(self, pipe, call, batch_size, num_images_per_prompt, device):
        positive, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=call.get("prompt"),
            prompt_2=call.get("prompt_2"),
            prompt_3=call.get("prompt_3"),
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=True,
            negative_prompt=call.get("negative_prompt"),
            negative_prompt_2=call.get("negative_prompt_2"),
            negative_prompt_3=call.get("negative_prompt_3"),
            prompt_embeds=call.get("prompt_embeds"),
            negative_prompt_embeds=call.get("negative_prompt_embeds"),
            pooled_prompt_embeds=call.get("pooled_prompt_embeds"),
            negative_pooled_prompt_embeds=call.get("negative_pooled_prompt_embeds"),
            clip_skip=call.get("clip_skip"),
            max_sequence_length=call.get("max_sequence_length", 256),
            lora_scale=_lora_scale(call),
        )
        return (
            {"encoder_hidden_states": positive, "pooled_projections": pooled},
            {"encoder_hidden_states": negative, "pooled_projections": negative_pooled},
        )

    def inner_overrides(self, call):
        out = super().inner_overrides(call)
        out.update(negative_prompt_2=None, negative_prompt_3=None, negative_pooled_prompt_embeds=None)
        return out


class _Flux(FamilyAdapter):
    """Flux: the CFG scale is ``true_cfg_scale``; ``guidance_scale`` stays the distilled guidance embedding."""

    def encode(self, pipe, prompts, num_images_per_prompt, device, options):
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=options.get("max_sequence_length", 512),
            lora_scale=options.get("lora_scale"),
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def encode_pair(self, pipe, call, batch_size, num_images_per_prompt, device):
        max_length = call.get("max_sequence_length", 512)
        positive, positive_pooled, _ = pipe.encode_prompt(
            prompt=call.get("prompt"),
            prompt_2=call.get("prompt_2"),
            prompt_embeds=call.get("prompt_embeds"),
            pooled_prompt_embeds=call.get("pooled_prompt_embeds"),
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_length,
            lora_scale=_lora_scale(call),
        )
        negative = call.get("negative_prompt")
        negative_embeds = call.get("negative_prompt_embeds")
        if negative is None and negative_embeds is None:
            negative = ""
        if isinstance(negative, str):
            negative = [negative] * batch_size
        negative_2 = call.get("negative_prompt_2")
        if isinstance(negative_2, str):
            negative_2 = [negative_2] * batch_size
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=negative,
            prompt_2=negative_2,
            prompt_embeds=negative_embeds,
            pooled_prompt_embeds=call.get("negative_pooled_prompt_embeds"),
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_length,
            lora_scale=_lora_scale(call),
        )
        return (
            {"encoder_hidden_states": positive, "pooled_projections": positive_pooled},
            {"encoder_hidden_states": embeds, "pooled_projections": pooled},
        )

    def inner_overrides(self, call):
        return {
            "true_cfg_scale": 1.0,
            "negative_prompt": None,
            "negative_prompt_2": None,
            "negative_prompt_embeds": None,
            "negative_pooled_prompt_embeds": None,
        }

    def cfg_enabled(self, call, scale, has_negatives=False):
        # diffusers' Flux runs true CFG only with a negative prompt; negguide's negatives bring u = e("") along
        has_negative = call.get("negative_prompt") is not None or call.get("negative_prompt_embeds") is not None
        return scale > 1.0 and (has_negative or has_negatives)


ADAPTERS = {
    "sd": _SD(
        "sd",
        "StableDiffusionPipeline",
        "unet",
        "sample",
        ("encoder_hidden_states",),
        ("timestep_cond",),
        "guidance_scale",
        ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    ),
    "sdxl": _SDXL(
        "sdxl",
        "StableDiffusionXLPipeline",
        "unet",
        "sample",
        ("encoder_hidden_states", "added_cond_kwargs.text_embeds"),
        ("timestep_cond", "added_cond_kwargs.time_ids"),
        "guidance_scale",
        ("unet", "vae", "text_encoder_2", "tokenizer_2", "scheduler"),
    ),
    "sd3": _SD3(
        "sd3",
        "StableDiffusion3Pipeline",
        "transformer",
        "hidden_states",
        ("encoder_hidden_states", "pooled_projections"),
        ("timestep",),
        "guidance_scale",
        ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
    ),
    "flux": _Flux(
        "flux",
        "FluxPipeline",
        "transformer",
        "hidden_states",
        ("encoder_hidden_states", "pooled_projections"),
        ("timestep", "guidance"),
        "true_cfg_scale",
        ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
    ),
}

SUPPORTED = (
    "SD1.x/2.x (UNet2DConditionModel), SDXL (UNet with text_time embedding), SD3 (SD3Transformer2DModel), "
    "Flux (FluxTransformer2DModel)"
)


def detect_family(components: dict) -> str:
    """The family of a set of pipeline components, from the denoiser's class; ValueError when unsupported."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    transformer, unet = components.get("transformer"), components.get("unet")
    if isinstance(transformer, SD3Transformer2DModel):
        return "sd3"
    if isinstance(transformer, FluxTransformer2DModel):
        return "flux"
    if isinstance(unet, UNet2DConditionModel):
        if getattr(unet.config, "addition_embed_type", None) == "text_time":
            return "sdxl"
        return "sd"
    found = type(transformer or unet).__name__ if (transformer or unet) is not None else "no denoiser"
    raise ValueError(f"negguide cannot guide a pipeline with {found}; supported families: {SUPPORTED}")


def get_adapter(family: str) -> FamilyAdapter:
    if family not in ADAPTERS:
        raise ValueError(f"family = {family!r} is unknown; choose one of {sorted(ADAPTERS)}")
    return ADAPTERS[family]


def call_defaults(pipe) -> dict[str, Any]:
    """The default values of the diffusers pipeline's __call__ arguments (guidance scale and friends)."""
    params = inspect.signature(type(pipe).__call__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect._empty}


def get_nested(kwargs: dict, key: str):
    """kwargs["a.b"] -> kwargs["a"]["b"] (None when absent)."""
    head, _, rest = key.partition(".")
    value = kwargs.get(head)
    if rest:
        return None if value is None else value.get(rest)
    return value


def set_nested(kwargs: dict, key: str, value) -> None:
    """Set kwargs["a.b"]; copies the inner dict so the caller's dict is never modified."""
    head, _, rest = key.partition(".")
    if rest:
        inner = dict(kwargs.get(head) or {})
        inner[rest] = value
        kwargs[head] = inner
    else:
        kwargs[head] = value


def split_conditioning(conditioning: Conditioning, chunks: int) -> list[Conditioning]:
    """A conditioning of ``chunks`` equal row blocks -> one conditioning per block."""
    pieces = {k: v.chunk(chunks) for k, v in conditioning.items()}
    return [{k: pieces[k][i] for k in conditioning} for i in range(chunks)]


SHARED_EMBED_ARGS = ("negative_prompt_embeds", "negative_pooled_prompt_embeds")


def repeat_per_image(conditioning: Conditioning, like: Conditioning, num_images_per_prompt: int) -> Conditioning:
    """Rows per prompt -> rows per image, where the family's encode_prompt left given embeddings unrepeated
    (SD3 and Flux do not repeat user-given embeddings for num_images_per_prompt; SD and SDXL do)."""
    out = dict(conditioning)
    for key, value in conditioning.items():
        want = like.get(key)
        if (
            isinstance(value, torch.Tensor)
            and isinstance(want, torch.Tensor)
            and num_images_per_prompt > 1
            and value.shape[0] * num_images_per_prompt == want.shape[0]
        ):
            out[key] = value.repeat_interleave(num_images_per_prompt, dim=0)
    return out


def check_shared_embeds(call: dict, batch_size: int) -> dict:
    """Validate user-given unconditional embeddings; one row is shared by every prompt (e.g. a learned negative)."""
    call = dict(call)
    for name in SHARED_EMBED_ARGS:
        value = call.get(name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.ndim not in (2, 3):
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}; expected [batch, tokens, dim] (or [batch, dim] pooled)"
            )
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} holds NaN or infinite values; re-create or re-train the embedding")
        if value.shape[0] == 1 and batch_size > 1:
            call[name] = value.expand(batch_size, *value.shape[1:]).contiguous()
        elif value.shape[0] != batch_size:
            raise ValueError(
                f"{name} has {value.shape[0]} rows but there are {batch_size} prompts: give 1 or {batch_size}"
            )
    return call
