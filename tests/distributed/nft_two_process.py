"""Run by tests/test_nft_distributed.py under ``accelerate launch --multi_gpu --num_processes 2`` (gloo on a CPU):
two DiffusionNFT steps on the tiny SD3 model with 2 prompts x G = 2 samples per step; the checkpoint written by the
main process is compared with one process (and one process accumulating two micro-batches)."""

from __future__ import annotations

import sys
import warnings

import torch

from negguide.core.accelerate_setup import make_accelerator
from negguide.nft import NFTConfig, NFTTrainer
from negguide.testing.tiny import tiny_pipeline

warnings.filterwarnings("ignore")


def redness(images, prompts):
    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def config(out: str, accumulation: int = 1) -> NFTConfig:
    return NFTConfig(
        prompts=["a red circle", "a blue square", "a green triangle"],
        group_size=2,
        prompts_per_step=2,
        steps=2,
        num_inference_steps=2,
        lora_rank=4,
        lora_alpha=8.0,
        lr=1e-3,
        height=32,
        width=32,
        max_sequence_length=16,
        gradient_accumulation_steps=accumulation,
        checkpoint_every=1,
        output_dir=out,
    )


def main(out: str, accumulation: int = 1) -> None:
    torch.set_num_threads(1)
    accelerator = make_accelerator()
    trainer = NFTTrainer(tiny_pipeline("sd3"), redness, config(out, accumulation), accelerator=accelerator)
    history = trainer.train(progress=False)
    if accelerator.is_main_process:
        print(
            f"processes={accelerator.num_processes} backend={accelerator.state.backend} "
            f"rewards={[round(h['reward'], 6) for h in history]}"
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
