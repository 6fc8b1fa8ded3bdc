"""Cost of NAG (normalized attention guidance), as time-per-step ratios measured side by side in one run.

Per model: the CFG-free step (1 denoiser row, no negatives), the same with one negative through NAG (the family
defaults), and plain CFG (2 denoiser rows). On SD3 and Flux also NAG with the whole-block pass: every block up to
the last guided one runs once more per negative, image output discarded (what NAG did before its negative pass
reused the positive's image projections, and still does for processors other than diffusers' own). Configurations
run round-robin so that drift in machine load hits all alike; medians over steps and repeats. No asserts on time.

* tiny-* and bundled: whole pipeline calls (``PerpNegPipeline``, ``negative_mode="nag"``; CFG: guidance 5, Flux
  true CFG 4 with ``negative_prompt=""``), time per step from callback timestamps, steps 2..n of every repeat.
  The tiny models are dominated by per-call overhead: their ratios say little.
* sd3-medium, flux, sd15: random-weight denoisers of realistic width and token counts, timed as bare forwards on
  fixed inputs (NAG through :class:`negguide.nag.hooks.NAGHandle`). sd3-medium: SD3-medium's transformer (width 1536,
  24 heads, patch 2, 333 text tokens = 77 CLIP + 256 T5) with ``--sd3-depth`` blocks (the last one context-only, as
  in SD3); flux: FLUX.1's (width 3072, 24 heads, 512 text tokens) with ``--flux-depth`` joint blocks and twice as
  many single ones; sd15: SD1.5's UNet. ``--px`` sets the image size (SD3 and Flux: (px / 16)^2 image tokens). Each
  block and every softmax attention (``torch.nn.functional.scaled_dot_product_attention``) is timed too, and one
  extra forward per configuration counts its floating-point operations (work ratios, in brackets: immune to machine
  load). The second table gives them per typical block (one whose negative stream goes on to the next), for the
  last block, for the softmax attention, and extrapolated to the full model depth (SD3-medium: 24 blocks; FLUX.1:
  19 joint + 38 single).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/nag_speed.py --models tiny-sd tiny-sdxl tiny-sd3 tiny-flux bundled
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/nag_speed.py --models sd3-medium sd15 --px 512 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode

import negguide.nag.hooks as nag_hooks
from negguide.nag import NAGSettings
from negguide.perpneg import PerpNegPipeline
from negguide.testing import tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", category=FutureWarning)
PIPELINES = ("tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux", "bundled")
DENOISERS = ("sd3-medium", "flux", "sd15")
#: full-depth block counts: (typical blocks of each kind, in the order of the reduced model's typical blocks)
FULL_DEPTH = {"sd3-medium": {"joint": 23}, "flux": {"joint": 19, "single": 37}}


# ---------------------------------------------------------------------------------------------- whole pipelines
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
    nag = {scale: 1.0, "negatives": ["a red circle"], "negative_mode": "nag"}
    out = {"free": {scale: 1.0}, "nag": nag, "cfg": cfg}
    if family in ("sd3", "flux"):
        out["whole"] = nag
    return out


def whole_block(name: str):
    """For the 'whole' configuration: every MMDiT block takes the whole-block negative pass."""
    return mock.patch.object(nag_hooks, "fast_kind", lambda *a: None) if name == "whole" else contextlib.nullcontext()


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


def measure_pipeline(model: str, args) -> dict:
    family, pipe, extra = load(model)
    runs = configs(family)
    times: dict = {name: [] for name in runs}
    step_times(pipe, extra, runs["free"], 3, args.images)  # warm-up
    for _ in range(args.repeats):
        for name, config in runs.items():
            with whole_block(name):
                times[name] += step_times(pipe, extra, config, args.steps, args.images)
    return {"model": model, "tokens": "-", **{k: statistics.median(v) for k, v in times.items()}}


# ---------------------------------------------------------------------------------------------- bare denoisers
def sd3_medium(depth: int, px: int):
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=depth, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        out_channels=16, pos_embed_max_size=192,
    )  # fmt: skip

    def inputs(rows: int, g: torch.Generator) -> dict:
        return dict(
            hidden_states=torch.randn(rows, 16, px // 8, px // 8, generator=g),
            encoder_hidden_states=torch.randn(rows, 333, 4096, generator=g),
            pooled_projections=torch.randn(rows, 2048, generator=g),
            timestep=torch.full((rows,), 500.0),
        )

    return "sd3", model, inputs, (px // 16) ** 2, 333


def flux(depth: int, px: int):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=depth, num_single_layers=2 * depth, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=[16, 56, 56],
    )  # fmt: skip
    side = px // 16
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)

    def inputs(rows: int, g: torch.Generator) -> dict:
        return dict(
            hidden_states=torch.randn(rows, side * side, 64, generator=g),
            encoder_hidden_states=torch.randn(rows, 512, 4096, generator=g),
            pooled_projections=torch.randn(rows, 768, generator=g),
            timestep=torch.full((rows,), 0.5),
            guidance=torch.full((rows,), 3.5),
            img_ids=torch.cat([torch.zeros(side * side, 1), grid.float()], 1),
            txt_ids=torch.zeros(512, 3),
        )

    return "flux", model, inputs, side * side, 512


def sd15(px: int):
    from perp_neg_speed import sd15_random_pipeline

    model = sd15_random_pipeline().unet

    def inputs(rows: int, g: torch.Generator) -> dict:
        return dict(
            sample=torch.randn(rows, 4, px // 8, px // 8, generator=g),
            timestep=torch.full((rows,), 500.0),
            encoder_hidden_states=torch.randn(rows, 77, 768, generator=g),
        )

    return "sd", model, inputs, (px // 8) ** 2, 77


class Timers:
    """Per forward: wall time of every block (its pre-hook first, its forward hook last, so NAG's own block hooks are
    inside) and of every softmax attention call; with ``count``, also the floating-point operations of every
    Linear in the blocks and of every softmax attention (4 B H Sq Sk d), by block."""

    def __init__(self, blocks: dict, count: bool = False):
        self.blocks = {name: 0.0 for name in blocks}
        self.work = {name: 0 for name in blocks}
        self.attention, self.attention_work, self.current = 0.0, 0, None
        self._start: dict = {}
        self._handles = []
        for name, block in blocks.items():
            self._handles.append(block.register_forward_pre_hook(self._begin(name), prepend=True))
            self._handles.append(block.register_forward_hook(self._end(name), always_call=True))
            if count:
                linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
                self._handles += [m.register_forward_hook(self._linear) for m in linears]
        real = torch.nn.functional.scaled_dot_product_attention

        def timed(*args, **kwargs):
            q, k = args[0] if args else kwargs["query"], args[1] if len(args) > 1 else kwargs["key"]
            work = 4 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1]
            self.attention_work += work
            if self.current is not None:
                self.work[self.current] += work
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.attention += time.perf_counter() - start

        self._patch = mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", timed)
        self._patch.start()

    def _linear(self, module, args, output):
        if self.current is not None:
            self.work[self.current] += 2 * args[0].shape[:-1].numel() * module.in_features * module.out_features

    def _begin(self, name):
        def hook(module, args):
            self._start[name], self.current = time.perf_counter(), name

        return hook

    def _end(self, name):
        def hook(module, args, output):
            self.blocks[name] += time.perf_counter() - self._start.pop(name)
            self.current = None

        return hook

    def remove(self):
        self._patch.stop()
        for handle in self._handles:
            handle.remove()


def forward(denoiser, inputs: dict, names: dict, count: bool) -> dict:
    """One timed forward: {'total', 'attention', block name: seconds}; with ``count`` (not for timing: the counting
    slows it) also 'work' (all floating-point operations), 'work attention' and 'work <block>'."""
    timers = Timers(names, count)
    counter = FlopCounterMode(display=False) if count else contextlib.nullcontext()
    try:
        with counter:
            start = time.perf_counter()
            denoiser(**inputs)
            total = time.perf_counter() - start
    finally:
        timers.remove()
    out = dict(total=total, attention=timers.attention, **timers.blocks)
    if count:  # FlopCounterMode counts matmuls and convolutions, not the CPU's fused softmax attention
        counted = counter.get_flop_counts().get("Global", {})
        other = sum(n for op, n in counted.items() if "scaled_dot_product" not in str(op))
        out.update({"work": other + timers.attention_work, "work attention": timers.attention_work})
        out.update({f"work {name}": n for name, n in timers.work.items()})
    return out


def typical_blocks(model: str, denoiser) -> dict:
    """{kind: name} of the block of each kind whose negative stream goes on (the model's bulk), and 'last'."""
    if model == "sd15":
        return {}
    out = {"joint": "transformer_blocks.0"}
    if model == "flux":
        out["single"] = "single_transformer_blocks.0"
        out["last"] = f"single_transformer_blocks.{len(denoiser.single_transformer_blocks) - 1}"
    else:
        out["last"] = f"transformer_blocks.{len(denoiser.transformer_blocks) - 1}"
    return out


def measure_denoiser(model: str, args) -> tuple[dict, list]:
    torch.manual_seed(0)
    if model == "sd3-medium":
        family, denoiser, inputs, image, text = sd3_medium(args.sd3_depth, args.px)
    elif model == "flux":
        family, denoiser, inputs, image, text = flux(args.flux_depth, args.px)
    else:
        family, denoiser, inputs, image, text = sd15(args.px)
    denoiser.eval()
    g = torch.Generator().manual_seed(0)
    two = inputs(2, g)
    context = torch.randn(two["encoder_hidden_states"][:1].shape, generator=g)
    handle = nag_hooks.NAGHandle(denoiser, family, NAGSettings(), [context])
    names = {f"{s}.{i}": b for s in ("transformer_blocks", "single_transformer_blocks")
             for i, b in enumerate(getattr(denoiser, s, []))}  # fmt: skip
    runs = ["free", "nag", "cfg"] + (["whole"] if family in ("sd3", "flux") else [])

    def one(name: str, count: bool = False) -> dict:
        if name in ("nag", "whole"):
            handle.install()
        try:
            with whole_block(name), torch.no_grad():
                return forward(denoiser, two if name == "cfg" else one_row, names, count)
        finally:
            handle.remove()

    one_row = inputs(1, g)
    work = {name: one(name, count=True) for name in runs}  # also the warm-up
    samples: dict = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name in runs:  # round-robin
            samples[name].append(one(name))
    med = {n: {k: statistics.median(s[k] for s in samples[n]) for k in samples[n][0]} for n in runs}
    for n in runs:
        med[n].update({k: v for k, v in work[n].items() if k.startswith("work")})
    row = {"model": model, "tokens": f"{image} + {text}", **{n: med[n]["total"] for n in runs}}
    return row, breakdown(model, denoiser, med)


def breakdown(model: str, denoiser, med: dict) -> list:
    """Rows of {model, part, time: {config: s}, work: {config: operations}}: the forward, each typical block, the
    estimate at full depth (typical blocks x their count there + the last block + what runs outside the blocks) and
    the softmax attention of the forward."""
    count = sum(len(getattr(denoiser, s, [])) for s in ("transformer_blocks", "single_transformer_blocks"))

    def part(name: str, time_key: str, work_key: str) -> dict:
        return {"model": model, "part": name, "time": {n: med[n][time_key] for n in med},
                "work": {n: med[n][work_key] for n in med}}  # fmt: skip

    rows = [part(f"forward ({count or 'UNet'} blocks)", "total", "work")]
    blocks = typical_blocks(model, denoiser)
    rows += [part(f"{kind} block ({name})", name, f"work {name}") for kind, name in blocks.items()]
    if model in FULL_DEPTH:
        counts = FULL_DEPTH[model]

        def full(n: str, prefix: str, total: str) -> float:
            inside = sum(v for k, v in med[n].items() if k.startswith(prefix + "transformer_blocks.") or
                         k.startswith(prefix + "single_transformer_blocks."))  # fmt: skip
            outside = med[n][total] - inside
            return (
                sum(counts[k] * med[n][prefix + blocks[k]] for k in counts) + med[n][prefix + blocks["last"]] + outside
            )

        depth = sum(counts.values()) + 1
        rows.append({"model": model, "part": f"full depth, {depth} blocks (estimate)",
                     "time": {n: full(n, "", "total") for n in med},
                     "work": {n: full(n, "work ", "work") for n in med}})  # fmt: skip
    rows.append(part("softmax attention in the forward", "attention", "work attention"))
    return rows


# ---------------------------------------------------------------------------------------------- report
def ratio(values: dict, name: str) -> str:
    return f"{values[name] / values['free']:.2f}" if name in values else "-"


def cell(part: dict, name: str) -> str:
    """'time ratio (work ratio)' against CFG-free."""
    return "-" if name not in part["time"] else f"{ratio(part['time'], name)} ({ratio(part['work'], name)})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(PIPELINES[:4]), choices=PIPELINES + DENOISERS)
    parser.add_argument("--steps", type=int, default=8, help="pipeline models: steps per run")
    parser.add_argument("--images", type=int, default=2, help="pipeline models: images per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--px", type=int, default=512, help="denoiser models: image size")
    parser.add_argument("--sd3-depth", type=int, default=2, help="sd3-medium: blocks (the last is context-only)")
    parser.add_argument("--flux-depth", type=int, default=1, help="flux: joint blocks (and twice as many single)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, px {args.px} (denoiser models)\n")
    print(
        "Time ratios against the CFG-free step; in brackets, for the denoiser models, the ratio of the floating-point"
    )
    print(
        "operations the run performed (matmuls, convolutions and softmax attention, counted once per configuration).\n"
    )
    print("| model | image + text tokens | NAG / CFG-free | NAG whole-block pass / CFG-free | CFG (2 rows) / CFG-free "
          "| CFG-free ms/step |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    parts = []
    for model in args.models:
        if model in PIPELINES:
            row = measure_pipeline(model, args)
            cells = [ratio(row, n) for n in ("nag", "whole", "cfg")]
        else:
            row, rows = measure_denoiser(model, args)
            parts += rows
            cells = [cell(rows[0], n) for n in ("nag", "whole", "cfg")]
        print(f"| {model} | {row['tokens']} | {' | '.join(cells)} | {1000 * row['free']:.1f} |", flush=True)
    if parts:
        print(
            "\n| model | part | CFG-free ms | NAG ms | NAG / CFG-free | NAG whole-block / CFG-free | CFG / CFG-free |"
        )
        print("|---|---|---|---|---|---|---|")
        for p in parts:
            free, nag = 1000 * p["time"]["free"], 1000 * p["time"]["nag"]
            cells = " | ".join(cell(p, n) for n in ("nag", "whole", "cfg"))
            print(f"| {p['model']} | {p['part']} | {free:.0f} | {nag:.0f} | {cells} |")


if __name__ == "__main__":
    main()
