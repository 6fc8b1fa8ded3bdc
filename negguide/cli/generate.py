"""``negguide generate``: one prompt through one or several negative-guidance methods, with the same seed.

examples:
  # Perp-Neg on the bundled ShapeWorld model: 'a red shape' but not a circle (keeps the red)
  negguide generate "a red shape" --negative "a red circle" --negative-weight 1.5
  # every method side by side, same seed; the judge's reading under each image of the grid
  negguide generate "a red shape" -n "a red circle" --compare none plain perp-neg negtome --out outputs/generate
  # two negatives, the second one delayed to the last 70% of the steps
  negguide generate "a shape" -n red -n triangle --negative-weight 1.0 --negative-weight 2.0 \\
      --negative-window 0 1 --negative-window 0.3 1
  # without CFG (guidance 1, as on distilled and few-step models) the negatives act inside attention (NAG)
  negguide generate "a circle" -n red --compare none nag --guidance-scale 1
  # NegToMe away from a reference image (optionally only inside a mask; white = the region to avoid)
  negguide generate "a circle" --method negtome-reference --reference red_circle.png --reference-mask mask.png
  # a learned negative embedding (negguide train-reneg) or a DiffusionNFT LoRA
  negguide generate "a red circle and a blue square" --compare none reneg \\
      --reneg runs/reneg/negative_embedding.safetensors
  negguide generate "a photo of a dog" --model ./sd15 --method nft-lora --lora runs/nft/lora --lora-scale 0.8

Writes OUT/<method>_<i>.png for every image and OUT/grid.png (one row per method) and prints where.
"""

from __future__ import annotations

import argparse
import os
import time

from negguide.cli.comparison import describe, score_line
from negguide.cli.errors import ArgumentParser, UsageError, user_input
from negguide.cli.flags import add_setting_flags, check_device, check_model
from negguide.cli.generation import (
    COMPOSABLE,
    MAX_NEGATIVES,
    MAX_PROMPT_CHARS,
    METHODS,
    GenerateRequest,
    SamplingSettings,
    load_pipeline,
    prepare,
    prepare_output,
    run,
    save,
)
from negguide.cli.inputs import check_lora_file, is_hub_id, one_line
from negguide.nag.settings import NAGSettings
from negguide.negtome.settings import NegToMeSettings
from negguide.perpneg.settings import PerpNegSettings


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="negguide generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("prompt", help=f"the prompt (at most {MAX_PROMPT_CHARS} characters)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--method", "-m", choices=list(METHODS), default="perp-neg", help="one method (default perp-neg)"
    )
    which.add_argument(
        "--compare",
        nargs="+",
        choices=list(METHODS),
        metavar="METHOD",
        help=f"several methods side by side, same seed: {', '.join(METHODS)}",
    )
    p.add_argument("--model", default=None, help="diffusers folder or hub id (default: the bundled ShapeWorld model)")
    p.add_argument("--out", default="outputs/generate", help="output folder (default outputs/generate); must be empty")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the images an earlier run wrote in --out (others are kept)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    model_default = {"shown": "the model's"}
    add_setting_flags(
        p,
        SamplingSettings,
        list(SamplingSettings.field_specs()),
        overrides={name: model_default for name in ("steps", "height", "width", "guidance_scale")},
    )
    add_setting_flags(
        p,
        SamplingSettings,
        ["height"],
        overrides={"height": {"flag": "--size", "help": "height and width in pixels", "shown": "the model's"}},
    )
    g = p.add_argument_group("negatives (plain, perp-neg, nag; with --with-negatives also the other methods)")
    g.add_argument(
        "--negative", "-n", action="append", default=[], help=f"a negative prompt (repeatable, up to {MAX_NEGATIVES})"
    )
    pn = PerpNegSettings.field_specs()
    add_setting_flags(
        g,
        PerpNegSettings,
        ["negative_weights", "negative_windows"],
        overrides={
            "negative_weights": {
                "flag": "--negative-weight",
                "aliases": ("-w",),
                "dest": "negative_weights",
                "action": "append",
                "metavar": "W",
                "default": None,  # the help says 1.0
                "help": f"{pn['negative_weights']['help']}; one for all or one per --negative",
            },
            "negative_windows": {
                "flag": "--negative-window",
                "dest": "negative_windows",
                "action": "append",
                "metavar": ("START", "END"),
                "default": None,
                "shown": "0 1",
            },
        },
    )
    g.add_argument(
        "--with-negatives",
        action="store_true",
        help=f"also remove the negatives in {', '.join(COMPOSABLE)} (Perp-Neg; NAG where CFG is off or for nft-lora)",
    )
    from negguide.shapeworld.bench_negtome import DIVERSITY_SETTINGS as D
    from negguide.shapeworld.bench_negtome import REFERENCE_SETTINGS as R

    g = p.add_argument_group(
        "NegToMe (negtome, negtome-reference)",
        description=(
            f"Unset flags keep the model's preset: NegToMeSettings() with the family's defaults, or on the bundled model "
            f"the settings tuned on ShapeWorld (negtome: alpha {D.alpha}, threshold {D.threshold}, window {D.window}; "
            f"negtome-reference: alpha {R.alpha}, threshold {R.threshold}, window {R.window})."
        ),
    )
    unset = {"default": None, "shown": "the preset"}
    add_setting_flags(
        g,
        NegToMeSettings,
        ["alpha", "threshold", "window", "batch_reference"],
        prefix="negtome-",
        overrides={
            "alpha": unset,
            "threshold": unset,
            "window": {**unset, "metavar": ("LOW", "HIGH")},
            "batch_reference": unset,
        },
    )
    g.add_argument("--reference", help="reference image for negtome-reference (resized to the output size)")
    g.add_argument("--reference-mask", help="mask of the reference, white = the region to avoid")
    g = p.add_argument_group(
        "NAG (nag; with --with-negatives also nft-lora, whose LoRA runs CFG-free)",
        description="Unset flags keep the family's defaults (negguide.nag.FAMILY_DEFAULTS).",
    )
    nag_unset = {"default": None, "shown": "the family's"}
    add_setting_flags(
        g,
        NAGSettings,
        ["negative_weights", "tau", "alpha"],
        prefix="nag-",
        overrides={
            "negative_weights": {
                **nag_unset,
                "flag": "--nag-scale",
                "nargs": None,
                "metavar": "S",
                "help": "NAG's scale s for every negative (the reference code's nag_scale minus 1)",
            },
            "tau": nag_unset,
            "alpha": nag_unset,
        },
    )
    g = p.add_argument_group("ReNeg and DiffusionNFT")
    g.add_argument(
        "--reneg", help="negative embedding .safetensors (default on a bundled ShapeWorld model, SD3 or SD: its own)"
    )
    g.add_argument("--lora", help="DiffusionNFT LoRA folder or .safetensors file (nft-lora)")
    add_setting_flags(g, GenerateRequest, ["lora_scale"])
    return p


def request_from_args(args) -> GenerateRequest:
    """argparse namespace -> a validated GenerateRequest (the settings' errors are usage errors)."""
    with user_input():
        weights = args.negative_weights
        if weights is not None and len(weights) == 1 and len(args.negative) > 1:
            weights = weights * len(args.negative)
        windows = [tuple(w) for w in args.negative_windows] if args.negative_windows else None
        perp_neg = PerpNegSettings(negatives=args.negative, negative_weights=weights, negative_windows=windows)
        sampling = SamplingSettings(
            seed=args.seed,
            steps=args.steps,
            height=args.height or args.size,
            width=args.width or args.size,
            batch=args.batch,
            guidance_scale=args.guidance_scale,
        )
        negtome = dict(
            alpha=args.negtome_alpha,
            threshold=args.negtome_threshold,
            batch_reference=args.negtome_batch_reference,
            window=tuple(args.negtome_window) if args.negtome_window else None,
        )
        scale = args.nag_scale
        nag = dict(negative_weights=None if scale is None else [scale], tau=args.nag_tau, alpha=args.nag_alpha)
        return GenerateRequest(
            prompt=args.prompt,
            methods=tuple(args.compare or [args.method]),
            perp_neg=perp_neg,
            sampling=sampling,
            negtome_overrides={k: v for k, v in negtome.items() if v is not None},
            nag_overrides={k: v for k, v in nag.items() if v is not None},
            reference_image=args.reference,
            reference_mask=args.reference_mask,
            reneg=args.reneg,
            lora=args.lora,
            lora_scale=args.lora_scale,
            with_negatives=args.with_negatives,
        )


def check_files(args, methods) -> None:
    """What the files the flags name hold, read before the model loads (whether they fit the model is checked once
    it has): the negative embedding, the LoRA, the reference image and mask. ValueError naming the bad one."""
    if "reneg" in methods and args.reneg:
        from negguide.reneg.embedding import NegativeEmbedding

        NegativeEmbedding.load(args.reneg)
    if "nft-lora" in methods and args.lora and os.path.exists(args.lora):
        check_lora_file(args.lora)
    if "negtome-reference" in methods:
        from PIL import Image

        for name, path in (("reference image", args.reference), ("reference mask", args.reference_mask)):
            if not path:
                continue
            try:
                with Image.open(path) as image:
                    image.load()
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
                raise ValueError(f"cannot read the {name} {path!r}: {one_line(error, 150)}") from None


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    request = request_from_args(args)
    for name, path in (
        ("--reference", args.reference),
        ("--reference-mask", args.reference_mask),
        ("--reneg", args.reneg),
        ("--lora", args.lora),
    ):
        if path and not os.path.exists(path) and not (name == "--lora" and is_hub_id(path)):
            raise UsageError(f"{name} {path!r} does not exist")
    with user_input():
        check_device(args.device)  # before --overwrite clears anything
        check_model(args.model)
        check_files(args, request.methods)
        prepare_output(args.out, args.overwrite)  # before loading anything
        pipe = load_pipeline(args.model, args.device, args.dtype)
        prepared = prepare(pipe, request)
    start = time.perf_counter()
    results = run(pipe, request, prepared=prepared, warmup=len(request.methods) > 1)
    paths = save(results, args.out, describe(request))
    for result in results:
        reading = f": {', '.join(result.readings)}" if result.readings else ""
        print(f"{result.method} ({result.seconds:.1f} s){reading}")
        if result.role or result.scores:
            print(f"    {result.role}" + (f"; {score_line(result.scores)}" if result.scores else ""))
    print(f"wrote {len(paths) - 1} images and the grid {paths[-1]} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
