"""Run by tests/test_reneg_distributed.py under ``accelerate launch --cpu --num_processes 2`` (gloo): trains the
tiny SD model's negative embedding and saves it from the main process, to compare with one process."""

from __future__ import annotations

import sys

from negguide.core.accelerate_setup import make_accelerator
from negguide.reneg import ReNegConfig, ReNegTrainer
from negguide.testing.tiny import tiny_pipeline


def redness(images, prompts):
    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def config(out: str, accumulation: int = 1) -> ReNegConfig:
    return ReNegConfig(
        prompts=["a red circle", "a blue square", "a green triangle"],
        steps=3,
        batch_size=4,
        lr=5e-2,
        num_inference_steps=3,
        late_steps=2,
        guidance_scale=4.0,
        height=32,
        width=32,
        gradient_accumulation_steps=accumulation,
        checkpoint_every=10,
        output_dir=out,
    )


def main(out: str, accumulation: int = 1) -> None:
    accelerator = make_accelerator(gradient_accumulation_steps=accumulation)
    trainer = ReNegTrainer(tiny_pipeline("sd"), redness, config(out, accumulation), accelerator=accelerator)
    trainer.train(progress=False)
    if accelerator.is_main_process:
        print(f"processes={accelerator.num_processes} backend={accelerator.state.backend}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
