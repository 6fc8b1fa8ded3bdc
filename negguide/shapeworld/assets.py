"""Where the bundled ShapeWorld assets are: the models, the reward classifier, the learned negative embeddings and
the DiffusionNFT LoRA. Every default of the CLI, the demo and the bench resolves through :func:`asset_path`."""

from __future__ import annotations

import os

#: the source checkout's assets/shapeworld folder
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "assets", "shapeworld"))


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
