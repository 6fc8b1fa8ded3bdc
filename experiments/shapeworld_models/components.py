"""Builders for the tiny ShapeWorld text-to-image components (SD3 layout), all from configs, nothing downloaded.

- ``word_bpe``/``build_tokenizer``: a CLIPTokenizer over the caption words (letters as base tokens, merges that
  build each whole word left to right, so "red" is one token and unknown words fall back to letters);
- ``build_text_encoder``: a tiny CLIPTextModelWithProjection;
- ``build_vae``: a tiny AutoencoderKL, 64x64 RGB -> 16x16x4;
- ``build_transformer``: a small SD3Transformer2DModel (patch 2 -> 64 image tokens);
- ``build_pipeline``: all of them in a StableDiffusion3Pipeline (no T5: text_encoder_3 = tokenizer_3 = None).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from negguide.shapeworld.world import CAPTION_WORDS
from negguide.testing.tokenizers import BOS, EOS, build_clip_tokenizer, word_bpe  # noqa: F401  (re-exported)


def build_tokenizer(words=CAPTION_WORDS, model_max_length: int = 16):
    """A CLIPTokenizer that spells each caption word as one token; ``model_max_length`` includes BOS/EOS."""
    return build_clip_tokenizer(words, model_max_length)


@dataclass(frozen=True)
class ModelSizes:
    """Sizes of the tiny model (the defaults are the bundled model's)."""

    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_projection: int = 32
    max_tokens: int = 16
    vae_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 4
    image_size: int = 64
    dit_layers: int = 4
    dit_heads: int = 4
    dit_head_dim: int = 32

    def __post_init__(self):
        if self.image_size % 2 ** (len(self.vae_channels) - 1):
            raise ValueError(f"image_size={self.image_size} must divide by the VAE factor 2^(blocks-1)")


def build_text_encoder(vocab_size: int, sizes: ModelSizes, eos_token_id: int, bos_token_id: int):
    """A tiny CLIPTextModelWithProjection (pooled output = projection of the EOS token)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_hidden * 4,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        max_position_embeddings=sizes.max_tokens,
        projection_dim=sizes.text_projection,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        hidden_act="gelu",
    )
    return CLIPTextModelWithProjection(config)


def build_vae(sizes: ModelSizes):
    """A tiny AutoencoderKL: image_size RGB -> (image_size / 2^(blocks-1))^2 x latent_channels."""
    from diffusers import AutoencoderKL

    n = len(sizes.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(sizes.vae_channels),
        layers_per_block=1,
        latent_channels=sizes.latent_channels,
        norm_num_groups=16,
        sample_size=sizes.image_size,
        mid_block_add_attention=False,
        scaling_factor=1.0,
        shift_factor=0.0,
    )


def build_transformer(sizes: ModelSizes):
    """A small SD3Transformer2DModel over the VAE latents, conditioned on both CLIP encoders."""
    from diffusers import SD3Transformer2DModel

    latent = sizes.image_size // 2 ** (len(sizes.vae_channels) - 1)
    return SD3Transformer2DModel(
        sample_size=latent,
        patch_size=2,
        in_channels=sizes.latent_channels,
        out_channels=sizes.latent_channels,
        num_layers=sizes.dit_layers,
        attention_head_dim=sizes.dit_head_dim,
        num_attention_heads=sizes.dit_heads,
        joint_attention_dim=2 * sizes.text_hidden,
        caption_projection_dim=sizes.dit_heads * sizes.dit_head_dim,
        pooled_projection_dim=2 * sizes.text_projection,
        pos_embed_max_size=latent // 2,
    )


def build_scheduler():
    """Rectified-flow Euler scheduler (shift 1: the images are small)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def build_pipeline(sizes: ModelSizes = ModelSizes(), seed: int = 0):
    """A freshly initialised (seeded) StableDiffusion3Pipeline of the ShapeWorld sizes."""
    from diffusers import StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok = build_tokenizer(model_max_length=sizes.max_tokens)
    tok2 = build_tokenizer(model_max_length=sizes.max_tokens)
    ids = dict(eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    te = build_text_encoder(len(tok), sizes, **ids)
    te2 = build_text_encoder(len(tok2), sizes, **ids)
    return StableDiffusion3Pipeline(
        transformer=build_transformer(sizes),
        scheduler=build_scheduler(),
        vae=build_vae(sizes),
        text_encoder=te,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok2,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def build_unet(sizes: ModelSizes, channels: tuple[int, ...] = (32, 64, 64)):
    """A small UNet2DConditionModel over the VAE latents (SD layout): convolutions at full latent resolution,
    self- and cross-attention to the CLIP hidden states at the two lower ones (8x8, 4x4 for 64 px images)."""
    from diffusers import UNet2DConditionModel

    latent = sizes.image_size // 2 ** (len(sizes.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=latent,
        in_channels=sizes.latent_channels,
        out_channels=sizes.latent_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=tuple(channels),
        layers_per_block=1,
        cross_attention_dim=sizes.text_hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_sd_scheduler(prediction_type: str = "epsilon"):
    """DDIM over SD's scaled-linear betas, with the given prediction type (epsilon or v_prediction)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )


def build_sd_pipeline(sd3_folder: str, prediction_type: str = "epsilon", seed: int = 0):
    """A StableDiffusionPipeline for ShapeWorld: the bundled SD3-layout model's VAE (no shift: SD pipelines do
    not shift latents), tokenizer and first CLIP text encoder (its hidden states; frozen), and a fresh UNet."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(os.path.join(sd3_folder, "vae"))
    vae.register_to_config(shift_factor=0.0)
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(sd3_folder, "text_encoder"))
    sizes = ModelSizes(
        text_hidden=text_encoder.config.hidden_size,
        latent_channels=vae.config.latent_channels,
        vae_channels=tuple(vae.config.block_out_channels),
        image_size=vae.config.sample_size,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(sd3_folder, "tokenizer")),
        unet=build_unet(sizes),
        scheduler=build_sd_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
