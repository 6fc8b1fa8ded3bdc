"""negguide's own overhead against stock diffusers doing the same work, measured in one run on the same model.

Two comparisons, each PerpNegPipeline (``PerpNegPipeline.from_pipe(stock)``, the same modules) against the stock
family pipeline at the same settings, configurations interleaved round-robin so that drift in machine load hits
all alike:

(a) no negatives: ``pipe(prompt)`` against ``stock(prompt)`` (CFG on: 2 rows per step on both sides);
(b) one plain negative: ``pipe(prompt, negatives=[n], guidance_mode="plain")`` against
    ``stock(prompt, negative_prompt=n)`` (the negative replaces the unconditional branch on both sides).

Time per denoising step from callback timestamps (the first step excluded), median over steps and repeats; the
whole call (text encoding included, decoding skipped: latent output) is reported beside it. The goal at realistic
size is a step ratio of 1.00 +- 0.02. Nothing is asserted.

    python benchmarks/overhead.py --models sd15 tiny --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perp_neg_speed import sd15_random_pipeline  # noqa: E402

from negguide import PerpNegPipeline  # noqa: E402
from negguide.testing import tiny_pipeline  # noqa: E402

PROMPT, NEGATIVE = "a red shape", "a blue circle"


def timed(pipe, cuda: bool, kwargs: dict) -> tuple:
    """(step times, whole-call time) in s of one call."""
    stamps: list[float] = []

    def stamp(p, i, t, kw):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return kw

    start = time.perf_counter()
    pipe(PROMPT, generator=torch.Generator().manual_seed(0), callback_on_step_end=stamp, **kwargs)
    if cuda:
        torch.cuda.synchronize()
    return [b - a for a, b in zip(stamps, stamps[1:])], time.perf_counter() - start


def measure(name: str, stock, size: int, steps: int, repeats: int, extra: dict, cuda: bool) -> list[dict]:
    stock.set_progress_bar_config(disable=True)
    perp = PerpNegPipeline.from_pipe(stock)
    perp.set_progress_bar_config(disable=True)
    common = dict(num_inference_steps=steps, height=size, width=size, output_type="latent", **extra)
    configs = {
        ("a: no negatives", "stock"): (stock, common),
        ("a: no negatives", "negguide"): (perp, common),
        ("b: one plain negative", "stock"): (stock, {**common, "negative_prompt": NEGATIVE}),
        ("b: one plain negative", "negguide"): (perp, {**common, "negatives": [NEGATIVE], "guidance_mode": "plain"}),
    }
    steps_s: dict = {c: [] for c in configs}
    calls_s: dict = {c: [] for c in configs}
    for pipe, kwargs in configs.values():  # warm-up, each once
        timed(pipe, cuda, {**kwargs, "num_inference_steps": 2})
    for _ in range(repeats):
        for config, (pipe, kwargs) in configs.items():  # round-robin
            step, call = timed(pipe, cuda, kwargs)
            steps_s[config] += step
            calls_s[config].append(call)
    rows = []
    for case in ("a: no negatives", "b: one plain negative"):
        s0, s1 = (statistics.median(steps_s[(case, w)]) for w in ("stock", "negguide"))
        c0, c1 = (statistics.median(calls_s[(case, w)]) for w in ("stock", "negguide"))
        rows.append(dict(model=name, px=size, case=case, stock=s0, negguide=s1, call0=c0, call1=c1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sd15", "tiny"], choices=["sd15", "tiny"])
    parser.add_argument("--steps", type=int, default=4, help="steps per call (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sd15-size", type=int, default=256)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    rows = []
    with torch.inference_mode():
        for model in args.models:
            if model == "sd15":
                stock = sd15_random_pipeline().to(device)
                rows += measure("sd15-size UNet (random)", stock, args.sd15_size, args.steps, args.repeats, {}, cuda)
                del stock
                continue
            for family in ("sd", "sdxl", "sd3", "flux"):
                extra = {"max_sequence_length": 16} if family in ("sd3", "flux") else {}
                if family == "flux":
                    extra["true_cfg_scale"] = 4.0  # (a) stays 1 row: stock Flux runs true CFG only with a negative
                stock = tiny_pipeline(family).to(device)
                rows += measure(f"tiny-{family}", stock, 32, max(args.steps, 8), args.repeats * 3, extra, cuda)
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(
        "| model | px | case | stock ms/step | negguide ms/step | step ratio | stock ms/call | negguide ms/call | call ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['px']} | {r['case']} | {1000 * r['stock']:.1f} | {1000 * r['negguide']:.1f} | "
            f"{r['negguide'] / r['stock']:.3f} | {1000 * r['call0']:.0f} | {1000 * r['call1']:.0f} | "
            f"{r['call1'] / r['call0']:.3f} |"
        )


if __name__ == "__main__":
    main()
