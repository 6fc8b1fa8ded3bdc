"""What the generation methods read from disk, checked before any compute: reference images, ReNeg negative
embeddings and DiffusionNFT LoRAs (by default the bundled model's own)."""

from __future__ import annotations

import contextlib
import os
import re

from negguide.shapeworld.assets import BUNDLED_EMBEDDINGS, BUNDLED_NFT_LORA

RENEG_HINT = (
    "train one with `negguide train-reneg --out runs/reneg` and pass --reneg runs/reneg/negative_embedding.safetensors"
)
LORA_HINT = "train one with `negguide train-nft --out runs/nft` and pass --lora runs/nft/lora"
LORA_ADAPTER = "negguide_nft"
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name in a LoRA folder


def is_hub_id(text: str) -> bool:
    """'owner/name' that is not a local path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not os.path.exists(text)


def one_line(error: BaseException | str, limit: int = 400) -> str:
    """An error message on one line (library messages can span several), at most ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_image(value, mode: str, size: tuple, name: str):
    from PIL import Image

    if isinstance(value, (str, os.PathLike)):
        try:
            with Image.open(value) as opened:
                value = opened.convert(mode)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"cannot read the {name} {str(value)!r}: {one_line(error, 150)}") from None
    if not isinstance(value, Image.Image):
        raise ValueError(f"the {name} must be an image file or a PIL image, got {type(value).__name__}")
    value = value.convert(mode)
    if value.size != size:  # (width, height): the reference must have the output's size
        value = value.resize(size, Image.NEAREST if mode == "L" else Image.LANCZOS)
    return value


def lora_target(pipe, path: str):
    """The pipeline that loads the LoRA (checked before any compute)."""
    if not os.path.exists(path) and not is_hub_id(path):
        raise ValueError(f"LoRA {path!r} does not exist: give a folder or .safetensors file written by the NFT trainer")
    if os.path.isfile(path) and not path.endswith(".safetensors"):
        raise ValueError(f"LoRA {path!r} is not a .safetensors file (negguide never unpickles weights)")
    if os.path.exists(path):
        check_lora_file(path)
    target = pipe  # negguide's pipelines forward LoRA loading to the family pipeline (negguide.perpneg.mixins)
    if not hasattr(target, "load_lora_weights"):
        raise ValueError(f"{type(target).__name__} cannot load LoRA weights")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ValueError("nft-lora needs peft: pip install 'negguide[train]'") from None
    return target


def check_lora_file(path: str) -> None:
    """A LoRA file (or a folder's ``pytorch_lora_weights.safetensors``) must hold LoRA tensors: read its keys only."""
    from safetensors import safe_open

    file = os.path.join(path, LORA_WEIGHTS_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ValueError(f"LoRA folder {path!r} has no {LORA_WEIGHTS_NAME}: give a folder written by the NFT trainer")
    try:
        with safe_open(file, framework="pt") as f:
            keys = list(f.keys())
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise ValueError(
            f"cannot load the LoRA {path!r}: not a readable safetensors file ({one_line(error, 150)})"
        ) from None
    if not any("lora" in key for key in keys):
        raise ValueError(f"cannot load the LoRA {path!r}: it holds no LoRA weights (no key contains 'lora')")


@contextlib.contextmanager
def lora_weights(pipe, path: str, scale: float):
    """Load a LoRA (a DiffusionNFT result) for one generation and unload it afterwards: the model is shared."""
    target = lora_target(pipe, path)
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # no warnings about text-encoder keys a denoiser LoRA does not have
    try:
        target.load_lora_weights(path, adapter_name=LORA_ADAPTER, use_safetensors=True)
        target.set_adapters([LORA_ADAPTER], [scale])
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        with contextlib.suppress(Exception):
            target.unload_lora_weights()
        raise ValueError(f"cannot load the LoRA {path!r}: {one_line(error, 250)}") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    try:
        yield
    finally:
        target.unload_lora_weights()


def lora_path(pipe, path: str | None) -> str:
    """The LoRA nft-lora loads: ``path``, or on the bundled model the bundled DiffusionNFT LoRA."""
    if path:
        return path
    if not getattr(pipe, "negguide_bundled", False):
        raise ValueError(f"nft-lora needs a LoRA for this model (--lora FOLDER_OR_FILE): {LORA_HINT}")
    if not os.path.isdir(BUNDLED_NFT_LORA):
        raise ValueError(f"no bundled DiffusionNFT LoRA at {os.path.normpath(BUNDLED_NFT_LORA)}: {LORA_HINT}")
    return BUNDLED_NFT_LORA


def bundled_reneg(pipe) -> str:
    """The bundled negative embedding of a bundled ShapeWorld model (SD3 or SD: ``pipe.negguide_shapeworld``, set
    by ``generate.load_pipeline``); a clear error for any other model or when the file is missing."""

    model = getattr(pipe, "negguide_shapeworld", None)  # "sd3", "sd" (the bundled models' families) or None
    if model not in BUNDLED_EMBEDDINGS:
        raise ValueError(f"reneg needs a negative embedding for this model: {RENEG_HINT}")
    path = BUNDLED_EMBEDDINGS[model]
    if not os.path.isfile(path):
        raise ValueError(f"no bundled negative embedding at {os.path.normpath(path)}: {RENEG_HINT}")
    return path


def reneg_kwargs(pipe, path: str | None) -> dict:
    from negguide.reneg.embedding import NegativeEmbedding

    if not path:
        path = bundled_reneg(pipe)
    embedding = NegativeEmbedding.load(path, pipe)  # ValueError naming the file for a wrong format or model
    kwargs = embedding.negative_kwargs(device=pipe.device, dtype=pipe.dtype)
    tokens = embedding.tensors["prompt_embeds"].shape[1]
    if pipe.family == "sd3":  # the joint sequence: CLIP tokens + T5 tokens; match the embedding's length
        kwargs["max_sequence_length"] = tokens - pipe.family_pipeline().tokenizer_max_length
    elif pipe.family == "flux":
        kwargs["max_sequence_length"] = tokens
    return kwargs
