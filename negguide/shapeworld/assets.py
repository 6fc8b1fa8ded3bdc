"""Where the bundled ShapeWorld assets are: the models, the reward classifier, the learned negative embeddings and
the DiffusionNFT LoRA. Every default of the CLI, the demo and the bench resolves through :func:`asset_path`, in an
installed wheel (package data) and in a source checkout (``assets/shapeworld/``) alike."""

from __future__ import annotations

import functools
import hashlib
import json
import os

from negguide._resources import data_folder

#: the bundled assets' folder (``assets/shapeworld`` of the checkout, or the installed package data)
ROOT = data_folder("negguide._assets")


def asset_path(*parts: str) -> str:
    """The absolute path of a bundled asset, e.g. ``asset_path("sd3")`` for the default model."""
    return os.path.join(ROOT, *parts)


#: the default model: the SD3-layout flow model
DEFAULT_MODEL = asset_path("sd3")
#: the SD-format (UNet, epsilon prediction) model
SD_MODEL = asset_path("sd")
#: the bundled reward classifier's folder
REWARD_FOLDER = asset_path("reward")
#: the bundled learned negative embedding of each bundled model family (sd3: the default model, sd: the UNet one)
BUNDLED_EMBEDDINGS = {
    "sd3": asset_path("reneg", "negative_embedding.safetensors"),
    "sd": asset_path("reneg", "sd", "negative_embedding.safetensors"),
}
#: the bundled DiffusionNFT LoRA of the default model (a diffusers LoRA folder)
BUNDLED_NFT_LORA = asset_path("nft", "lora")

#: the bundled models: kind -> (folder, the denoiser's weights inside it)
BUNDLED_MODELS = {
    "sd3": (DEFAULT_MODEL, os.path.join("transformer", "diffusion_pytorch_model.safetensors")),
    "sd": (SD_MODEL, os.path.join("unet", "diffusion_pytorch_model.safetensors")),
}
MARKER = "shapeworld_training.json"  # what the ShapeWorld training script writes into a model folder


@functools.cache
def _digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_model_kind(folder: str | None) -> str | None:
    """``"sd3"`` or ``"sd"`` when ``folder`` holds that bundled ShapeWorld model (None: the default one), wherever the
    folder is (a copy keeps its bundled embedding and LoRA); None for any other model, a ShapeWorld model trained
    anew included (the bundled embeddings and LoRA were made for the bundled weights). Decided by the training
    marker and the denoiser weights' digest, not by the folder's path."""
    if folder is None:
        return "sd3"
    if not os.path.isfile(os.path.join(folder, MARKER)):
        return None
    try:
        with open(os.path.join(folder, MARKER)) as f:
            stage = json.load(f).get("stage")
    except (OSError, ValueError):
        return None
    kind = {"dit": "sd3", "unet": "sd"}.get(stage)
    if kind is None:
        return None
    bundled, weights = BUNDLED_MODELS[kind]
    mine, theirs = os.path.join(folder, weights), os.path.join(bundled, weights)
    if not (os.path.isfile(mine) and os.path.isfile(theirs)):
        return None
    same_file = os.path.samefile(mine, theirs)
    return kind if same_file or _digest(os.path.realpath(mine)) == _digest(os.path.realpath(theirs)) else None
