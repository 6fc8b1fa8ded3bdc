"""Cost of NegToMe (negative token merging), as ratios measured in one run on the same model.

Time per step (``--models``; default: every tiny model and sd15): NegToMe off, on with its window forced open
(``window=(0, 1)``: the cost while it is active) and, for full pipelines, on with the family's default window (the
whole-run cost, where only the high-noise steps merge). A batch is 2 images x CFG = 4 denoiser rows (tiny Flux:
true CFG, two 2-row forwards). Per step: callback timestamps, median over steps 2..n and repeats; whole run: first
denoiser call to last step, median over repeats. Configurations run round-robin so that drift in machine load hits
all alike. sdxl (SDXL-base-size UNet, random weights, no text encoders) is timed as bare forwards at timestep 999.
"merged" is forwards that merged / forwards x layers merged in such a forward: SDXL merges feature maps of 32x32
or more only (min_feature_size), so tiny-sdxl merges nothing below --tiny-size 128, sdxl one up block at 512 px.

Memory (``--memory``): ``match_tokens`` alone on 2 groups x 2 images of N tokens (D=640), each image against the
2N tokens of its group (batch_reference 'others'), chunked (``--chunk``) against one dense block (the full [N, 2N]
similarity matrix), and its time. CUDA: max_memory_allocated above the inputs. CPU: growth of the peak RSS (VmHWM
reset through /proc/self/clear_refs, else ru_maxrss) in a fresh subprocess per configuration.

    .venv/bin/python benchmarks/negtome_speed.py --models tiny-sd tiny-sd3 sd15 --repeats 3
    .venv/bin/python benchmarks/negtome_speed.py --models sdxl --size 1024 --device cuda
    .venv/bin/python benchmarks/negtome_speed.py --memory --tokens 256 1024 4096 16384 --out negtome.md
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import diffusers
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perp_neg_speed import sd15_random_pipeline  # noqa: E402

from negguide.negtome import NegToMeSettings, apply, match_tokens  # noqa: E402
from negguide.negtome.hooks import NegToMeHandle  # noqa: E402
from negguide.negtome.merge import others_mask  # noqa: E402
from negguide.testing import tiny_pipeline  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)  # the tiny schedulers' steps_offset notice
MODELS = ("tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux", "sd15", "sdxl")
OPEN = NegToMeSettings(window=(0.0, 1.0))  # family defaults for everything but the window
DEFAULT = NegToMeSettings()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_merges(handle: NegToMeHandle, per_forward: list) -> None:
    """Instrumentation only: count the hooked layers that merged in each denoiser forward."""
    merge = handle._merge

    def counted(image):
        out = merge(image)
        per_forward[-1] += out is not None
        return out

    handle._merge = counted


def merged_text(per_forward: list) -> str:
    active = [c for c in per_forward if c]
    return f"{len(active)}/{len(per_forward)} x {max(active, default=0)}"


def pipeline_run(pipe, device, size: int, steps: int, extra: dict, settings) -> tuple:
    """(step times of steps 2..n, whole-run time, merges per forward) of one call, NegToMe on when settings."""
    denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    stamps: list[float] = []
    per_forward: list[int] = []

    def first(module, args, kwargs):  # the denoising loop starts: text encoding is done
        per_forward.append(0)
        if not stamps:
            sync(device)
            stamps.append(time.perf_counter())

    def stamp(p, i, t, kw):
        sync(device)
        stamps.append(time.perf_counter())
        return kw

    hook = denoiser.register_forward_pre_hook(first, with_kwargs=True, prepend=True)
    handle = apply(pipe, settings) if settings is not None else None
    if handle is not None:
        count_merges(handle, per_forward)
    try:
        pipe(
            "a red shape",
            num_images_per_prompt=2,
            num_inference_steps=steps,
            height=size,
            width=size,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=stamp,
            **extra,
        )
    finally:
        hook.remove()
        if handle is not None:
            handle.remove()
    deltas = [b - a for a, b in zip(stamps, stamps[1:])]
    return deltas[1:], stamps[-1] - stamps[0], per_forward


def measure_pipeline(name: str, pipe, device, size: int, steps: int, repeats: int, extra: dict) -> dict:
    configs = {"off": None, "open": OPEN, "default": DEFAULT}
    for settings in configs.values():  # warm-up
        pipeline_run(pipe, device, size, 2, extra, settings)
    per_step: dict = {k: [] for k in configs}
    whole: dict = {k: [] for k in configs}
    merged: dict = {}
    for _ in range(repeats):
        for key, settings in configs.items():  # round-robin
            times, total, merged[key] = pipeline_run(pipe, device, size, steps, extra, settings)
            per_step[key] += times
            whole[key].append(total)
    step = {k: statistics.median(v) for k, v in per_step.items()}
    run = {k: statistics.median(v) for k, v in whole.items()}
    return dict(
        model=name,
        px=size,
        off=step["off"],
        on=step["open"],
        merged=merged["open"],
        run_off=run["off"],
        run_default=run["default"],
        default_merged=merged["default"],
    )


def sdxl_unet():
    """SDXL-base-size UNet (2.6B parameters) with random weights, from the SDXL base config."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",),
    )


def measure_unet(name: str, unet, device, dtype, size: int, repeats: int) -> dict:
    """Bare UNet forwards (4 rows: 2 images x CFG, timestep 999) with NegToMe off and on (window open)."""
    from diffusers import EulerDiscreteScheduler

    g = torch.Generator().manual_seed(0)
    rows, latent, context = 4, size // 8, unet.config.cross_attention_dim
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    cast = dict(device=device, dtype=dtype)
    inputs = dict(
        sample=torch.randn(rows, unet.config.in_channels, latent, latent, generator=g).to(**cast),
        timestep=torch.tensor(999, device=device),
        encoder_hidden_states=torch.randn(rows, 77, context, generator=g).to(**cast),
        added_cond_kwargs=dict(
            text_embeds=torch.randn(rows, pooled, generator=g).to(**cast),
            time_ids=torch.tensor([size, size, 0, 0, size, size]).repeat(rows, 1).to(**cast),
        ),
    )
    handle = NegToMeHandle(
        unet, "sdxl", OPEN, groups=lambda r: 2 if r % 2 == 0 else 1, scheduler=EulerDiscreteScheduler()
    )
    per_forward: list[int] = []
    count_merges(handle, per_forward)
    samples: dict = {False: [], True: []}
    for i in range(repeats + 1):  # the first round is warm-up
        for on in (False, True):  # round-robin
            if on:
                handle.install()
            per_forward.append(0)
            with torch.inference_mode():
                sync(device)
                start = time.perf_counter()
                unet(**inputs)
                sync(device)
                elapsed = time.perf_counter() - start
            if on:
                handle.remove()
            if i:
                samples[on].append(elapsed)
    return dict(
        model=name,
        px=size,
        off=statistics.median(samples[False]),
        on=statistics.median(samples[True]),
        merged=per_forward[3::2],
    )  # the timed forwards with NegToMe on


# ---------------------------------------------------------------------------------------------- token matching
def measure_match(spec: dict) -> dict:
    """Peak extra memory (MiB) and median time (s) of match_tokens for one (tokens, chunk); on CPU in a fresh process."""
    device, n, dim = torch.device(spec["device"]), spec["tokens"], spec["dim"]
    cuda = device.type == "cuda"
    x = torch.randn(2, 2, n, dim, generator=torch.Generator().manual_seed(0)).to(device, getattr(torch, spec["dtype"]))
    refs = x.reshape(2, 1, 2 * n, dim)  # x: [G, n, N, D]; 'others': each image against every token of its group
    valid = others_mask(2, n, device)
    match_tokens(x[..., :8, :], refs[..., :16, :], valid[..., :16], 8)  # load the kernels before the baseline
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base, how = torch.cuda.memory_allocated(), "max_memory_allocated"
    else:
        base, how = peak_rss_kib()
    match_tokens(x, refs, valid, spec["chunk"])  # the memory call, not timed
    sync(device)
    mib = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else (peak_rss_kib(how)[0] - base) / 1024
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        match_tokens(x, refs, valid, spec["chunk"])
        sync(device)
        times.append(time.perf_counter() - start)
    return dict(mib=mib, seconds=statistics.median(times), how=how)


def peak_rss_kib(how: str | None = None) -> tuple:
    """(peak RSS in KiB, how). Without ``how``: first reset VmHWM to the current RSS, else fall back to ru_maxrss."""
    if how is None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            how = "VmHWM"
        except OSError:
            how = "ru_maxrss"
    if how == "VmHWM":
        return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]), how
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, how


def memory_rows(args, device, dtype) -> tuple:
    rows, how = [], set()
    for n in args.tokens:
        row = dict(tokens=n)
        for kind, chunk in (("chunked", args.chunk), ("dense", 2 * n)):  # dense: one block, the whole matrix
            if kind == "dense" and 2 * 4 * (4 * n * 2 * n) / 2**30 > args.dense_max_gib:  # 2 fp32 [4, N, 2N]
                row[kind] = None
                continue
            spec = dict(
                device=str(device),
                dtype=str(dtype).split(".")[-1],
                tokens=n,
                dim=args.dim,
                chunk=chunk,
                repeats=args.repeats,
            )
            if device.type == "cuda":
                row[kind] = measure_match(spec)
            else:
                done = subprocess.run(
                    [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=True
                )
                row[kind] = json.loads(done.stdout.strip().splitlines()[-1])
            how.add(row[kind]["how"])
        rows.append(row)
    return rows, ", ".join(sorted(how))


# ---------------------------------------------------------------------------------------------- command line
def measure_model(model: str, args, device, dtype) -> dict:
    """Build one model (freed on return) and time it."""
    if model.startswith("tiny-"):
        family = model[5:]
        extra = {"max_sequence_length": 16} if family in ("sd3", "flux") else {}
        if family == "flux":  # true CFG: two 2-row forwards per step
            extra |= dict(true_cfg_scale=4.0, negative_prompt="")
        pipe = tiny_pipeline(family).to(device, dtype)
        return measure_pipeline(model, pipe, device, args.tiny_size, args.steps, args.repeats, extra)
    if model == "sd15":
        pipe = sd15_random_pipeline().to(device, dtype)
        return measure_pipeline("sd15-size (random)", pipe, device, args.size, args.steps, args.repeats, {})
    with device:  # initialise the 2.6B random weights where they will run
        unet = sdxl_unet().to(dtype).eval()
    return measure_unet("sdxl-size UNet (random)", unet, device, dtype, args.size, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=None,
        metavar="MODEL",
        help=f"of {', '.join(MODELS)}; default: all but sdxl (none when only --memory is given)",
    )
    parser.add_argument("--memory", action="store_true", help="also measure the token matching's memory and time")
    parser.add_argument("--tokens", nargs="+", type=int, default=[256, 1024, 4096, 16384], help="N per image")
    parser.add_argument("--dim", type=int, default=640, help="token width D")
    parser.add_argument("--chunk", type=int, default=1024, help="chunk of the chunked matching")
    parser.add_argument("--dense-max-gib", type=float, default=16.0, help="skip dense matching above this estimate")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps of the pipelines")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the round-robin (and matching repeats)")
    parser.add_argument("--size", type=int, default=512, help="pixel resolution of sd15 and sdxl (latent = size/8)")
    parser.add_argument("--tiny-size", type=int, default=32, help="pixel resolution of the tiny models")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="default float16 on cuda, float32 on cpu",
    )
    parser.add_argument("--out", default=None, help="also write the Markdown to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure_match(json.loads(args.worker))))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.steps < 2 or args.repeats < 1:
        parser.error(f"--steps must be >= 2 and --repeats >= 1, got {args.steps} and {args.repeats}")
    if args.size % 16 or args.tiny_size % 16 or args.size < 64:
        parser.error(
            f"--size and --tiny-size must be multiples of 16 (--size >= 64), got {args.size}, {args.tiny_size}"
        )
    if min(args.tokens) < 16 or args.dim < 1 or args.chunk < 1:
        parser.error("--tokens must be >= 16, --dim and --chunk >= 1")
    models = args.models if args.models is not None else ([] if args.memory else [m for m in MODELS if m != "sdxl"])
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))

    rows = [measure_model(model, args, device, dtype) for model in models]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    lines = [
        f"device: {device} ({name}), dtype: {str(dtype)[6:]}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, repeats: {args.repeats}, steps: {args.steps}",
        "",
    ]
    if rows:
        lines += [
            "| model | px | off ms/step | on ms/step (window open) | on/off | merged fwd x layers | "
            "run off ms | run default window ms | default/off | default merged |",
            "|---" * 10 + "|",
        ]
        for r in rows:
            run = (
                ["-"] * 4
                if "run_off" not in r
                else [
                    f"{1000 * r['run_off']:.1f}",
                    f"{1000 * r['run_default']:.1f}",
                    f"{r['run_default'] / r['run_off']:.2f}",
                    merged_text(r["default_merged"]),
                ]
            )
            cells = [
                r["model"],
                r["px"],
                f"{1000 * r['off']:.1f}",
                f"{1000 * r['on']:.1f}",
                f"{r['on'] / r['off']:.2f}",
                merged_text(r["merged"]),
                *run,
            ]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        lines.append("")
    if args.memory:
        table, how = memory_rows(args, device, dtype)
        lines += [
            f"token matching, D={args.dim}, 2 groups x 2 images vs 2N tokens each, chunk {args.chunk} (memory: {how}):",
            "",
            "| N | chunked MiB | dense MiB | dense/chunked memory | chunked ms | dense ms | dense/chunked time |",
            "|---" * 7 + "|",
        ]
        for r in table:
            c, d = r["chunked"], r["dense"]
            dense = (
                ["skipped (--dense-max-gib)", "-", "-", "-"]
                if d is None
                else [
                    f"{d['mib']:.1f}",
                    f"{d['mib'] / max(c['mib'], 1e-3):.1f}",
                    f"{1000 * d['seconds']:.1f}",
                    f"{d['seconds'] / c['seconds']:.2f}",
                ]
            )
            cells = [r["tokens"], f"{c['mib']:.1f}", dense[0], dense[1], f"{1000 * c['seconds']:.1f}", *dense[2:]]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
