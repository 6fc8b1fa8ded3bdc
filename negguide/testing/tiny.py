"""Tiny, seeded pipelines of all four families built from configs, with tokenizers from in-memory vocabularies.

``tiny_pipeline("sd" | "sdxl" | "sd3" | "flux")`` returns a real diffusers pipeline of that family whose
components have a few thousand parameters: every code path of the real models runs in milliseconds on a CPU.
"""

from __future__ import annotations

import torch

FAMILIES = ("sd", "sdxl", "sd3", "flux")

TEST_WORDS = (
    "a an the photo of and to left right red green blue yellow circle square triangle shape "
    "cat dog car tree house blurry ugly low quality front side back view overhead"
).split()


def build_clip_tokenizer(words=TEST_WORDS, model_max_length: int = 77):
    """A CLIPTokenizer whose vocabulary spells each of ``words`` as a single token."""
    from negguide.testing.tokenizers import build_clip_tokenizer as build

    return build(words, model_max_length)


def build_t5_tokenizer(words=TEST_WORDS, model_max_length: int = 512):
    """A T5 (unigram) tokenizer over ``words`` plus single letters."""
    from negguide.testing.tokenizers import build_t5_tokenizer as build

    return build(words, model_max_length)


def _clip_config(vocab_size: int, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )


def _t5_encoder(vocab_size: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        **extra,
    )


def _sd_components(seed: int):
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = _vae()
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer)))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _sdxl_components(seed: int):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + 32 pooled
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = _vae()
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer)))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(len(tokenizer)))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    del StableDiffusionXLPipeline
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=build_clip_tokenizer(),
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
    )


def _sd3_components(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    torch.manual_seed(seed + 1)
    vae = _vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModelWithProjection(_clip_config(len(tokenizer)))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(len(tokenizer)))
    tokenizer_3 = build_t5_tokenizer()
    torch.manual_seed(seed + 4)
    text_encoder_3 = _t5_encoder(len(tokenizer_3))
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=build_clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        image_encoder=None,
        feature_extractor=None,
    )


def _flux_components(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    torch.manual_seed(seed + 1)
    vae = _vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer)))
    tokenizer_2 = build_t5_tokenizer()
    torch.manual_seed(seed + 3)
    text_encoder_2 = _t5_encoder(len(tokenizer_2))
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        image_encoder=None,
        feature_extractor=None,
    )


_BUILDERS = {"sd": _sd_components, "sdxl": _sdxl_components, "sd3": _sd3_components, "flux": _flux_components}


def tiny_components(family: str, seed: int = 0) -> dict:
    """The components (as keyword arguments of the family's diffusers pipeline) of a tiny seeded model."""
    if family not in _BUILDERS:
        raise ValueError(f"family = {family!r} is not one of {FAMILIES}")
    return _BUILDERS[family](seed)


def tiny_pipeline(family: str, seed: int = 0):
    """A tiny diffusers pipeline of ``family`` ("sd", "sdxl", "sd3", "flux"), in eval mode on the CPU."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    classes = {
        "sd": StableDiffusionPipeline,
        "sdxl": StableDiffusionXLPipeline,
        "sd3": StableDiffusion3Pipeline,
        "flux": FluxPipeline,
    }
    components = tiny_components(family, seed)
    pipe = classes[family](**components)
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe
