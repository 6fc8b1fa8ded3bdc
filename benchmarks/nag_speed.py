"""Cost of NAG (normalized attention guidance), as time-per-step ratios measured side by side in one run.

Per model: the CFG-free run (guidance 1, no negatives), the same with one negative through NAG
(``negative_mode="nag"``, the family defaults) and plain CFG (2 denoiser rows: guidance 5; Flux: true CFG 4 with
``negative_prompt=""``). Time per step from callback timestamps, median over steps 2..n of every repeat;
configurations run round-robin so that drift in machine load hits all alike. No asserts on time.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/nag_speed.py --models tiny-sd tiny-sdxl tiny-sd3 tiny-flux bundled
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from negguide.perpneg import PerpNegPipeline
from negguide.testing import tiny_pipeline

warnings.filterwarnings("ignore", category=FutureWarning)
MODELS = ("tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux", "bundled")


def load(model: str):
    if model == "bundled":
        from negguide.shapeworld.bench import load_bench_pipeline

        return "sd3", load_bench_pipeline(), dict(height=None, width=None, max_sequence_length=0)
    family = model.removeprefix("tiny-")
    pipe = PerpNegPipeline.from_pipe(tiny_pipeline(family))
    pipe.set_progress_bar_config(disable=True)
    extra = dict(height=32, width=32)
    if family in ("sd3", "flux"):
        extra["max_sequence_length"] = 16
    return family, pipe, extra


def configs(family: str) -> dict:
    scale = "true_cfg_scale" if family == "flux" else "guidance_scale"
    cfg = {scale: 4.0 if family == "flux" else 5.0}
    if family == "flux":
        cfg["negative_prompt"] = ""
    return {
        "free": {scale: 1.0},
        "nag": {scale: 1.0, "negatives": ["a red circle"], "negative_mode": "nag"},
        "cfg": cfg,
    }


def step_times(pipe, extra: dict, config: dict, steps: int, images: int) -> list[float]:
    stamps = []

    def callback(p, i, t, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    kwargs = {k: v for k, v in {**extra, **config}.items() if v is not None}
    pipe(
        "a red shape",
        num_images_per_prompt=images,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        callback_on_step_end=callback,
        **kwargs,
    )
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]  # steps 2..n


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print("| model | NAG / CFG-free | CFG (2 rows) / CFG-free | CFG-free ms/step |")
    print("|---|---|---|---|")
    for model in args.models:
        family, pipe, extra = load(model)
        runs = configs(family)
        times: dict = {name: [] for name in runs}
        step_times(pipe, extra, runs["free"], 3, args.images)  # warm-up
        for _ in range(args.repeats):
            for name, config in runs.items():
                times[name] += step_times(pipe, extra, config, args.steps, args.images)
        median = {name: statistics.median(v) for name, v in times.items()}
        print(
            f"| {model} | {median['nag'] / median['free']:.2f} | {median['cfg'] / median['free']:.2f} | "
            f"{1000 * median['free']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
