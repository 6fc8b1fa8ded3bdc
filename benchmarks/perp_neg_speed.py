"""Speed of Perp-Neg with K negatives against plain CFG, measured in one run on the same model.

Time per denoising step is read from callback timestamps (text encoding and decoding excluded), median over
steps and repeats; configurations are interleaved round-robin so that drift in machine load hits all alike.
The expected cost ratio is the ratio of denoiser rows, (K + 2) / 2: anything above it is overhead.

    python benchmarks/perp_neg_speed.py --models tiny sd15 --negatives 1 2 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from negguide import PerpNegPipeline
from negguide.testing import tiny_pipeline
from negguide.testing.tiny import build_clip_tokenizer


def sd15_random_pipeline():
    """SD1.5-size UNet (860M parameters) and CLIP-L-size text encoder with random weights; a small VAE with the
    same 8x downsampling (decoding is not timed)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        sample_size=64,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=4,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def step_times(pipe, steps: int, resolution: int, negatives: list[str], extra: dict) -> list[float]:
    stamps: list[float] = []

    def stamp(p, i, t, kw):
        stamps.append(time.perf_counter())
        return kw

    pipe(
        "a red shape",
        negatives=negatives,
        num_inference_steps=steps,
        height=resolution,
        width=resolution,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=stamp,
        **extra,
    )
    return [b - a for a, b in zip(stamps, stamps[1:])]  # steps 2..n: the first includes warm-up


def measure(name: str, pipe, resolution: int, ks: list[int], steps: int, repeats: int, extra: dict) -> list[dict]:
    perp = PerpNegPipeline.from_pipe(pipe)
    perp.set_progress_bar_config(disable=True)
    words = ["red", "circle", "blue", "square", "green", "triangle", "yellow", "shape"]
    configs = [0] + ks
    samples: dict = {k: [] for k in configs}
    step_times(perp, 2, resolution, [], extra)  # warm-up
    for _ in range(repeats):
        for k in configs:  # round-robin
            samples[k] += step_times(perp, steps, resolution, words[:k], extra)
    base = statistics.median(samples[0])
    rows = []
    for k in configs:
        t = statistics.median(samples[k])
        rows.append(
            dict(
                model=name,
                resolution=resolution,
                negatives=k,
                rows_per_step=k + 2,
                ms_per_step=1000 * t,
                time_ratio=t / base,
                row_ratio=(k + 2) / 2,
                overhead_pct=100 * (t / base / ((k + 2) / 2) - 1),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    parser.add_argument("--negatives", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sd15-resolution", type=int, default=256)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if any(k < 1 for k in args.negatives):
        parser.error(f"--negatives must be >= 1, got {args.negatives}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for model in args.models:
        if model == "tiny":
            for family in ("sd", "sdxl", "sd3", "flux"):
                extra = {"max_sequence_length": 16} if family in ("sd3", "flux") else {}
                if family == "flux":
                    extra["true_cfg_scale"] = 4.0
                    extra["negative_prompt"] = ""
                pipe = tiny_pipeline(family).to(device)
                rows += measure(f"tiny-{family}", pipe, 32, args.negatives, max(args.steps, 8), args.repeats * 3, extra)
        else:
            pipe = sd15_random_pipeline().to(device)
            rows += measure(
                "sd15-size UNet (random)", pipe, args.sd15_resolution, args.negatives, args.steps, args.repeats, {}
            )
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print("| model | res | K | rows/step | ms/step | time ratio | row ratio (K+2)/2 | overhead |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['resolution']} | {r['negatives']} | {r['rows_per_step']} | {r['ms_per_step']:.1f} | "
            f"{r['time_ratio']:.2f} | {r['row_ratio']:.1f} | {r['overhead_pct']:+.1f}% |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
