"""ReNeg on ShapeWorld: training and held-out prompts, and the judged comparison of negatives.

Prompts are ShapeWorld captions (half of them two-object, where the bundled model is weakest) split by a hash of
the text: a held-out prompt never appears in training.

    python -m experiments.reneg_comparison.compare --per-sample --prompts 48 --seeds 3 --out outputs/reneg_shapeworld.json
    python -m experiments.reneg_comparison.compare --model assets/shapeworld/sd --per-sample   # the SD (UNet) model
    # choose between training runs on training captions, without looking at the held-out ones
    python -m experiments.reneg_comparison.compare --split train --embedding runs/a/negative_embedding.safetensors \
        runs/b/negative_embedding.safetensors
    # keep the images, then re-read them with a later judge (rewards kept) without sampling again
    python -m experiments.reneg_comparison.compare --per-sample --out runs/c.json --save-images runs/c.npz
    python -m experiments.reneg_comparison.compare --rejudge runs/c.json runs/c.npz --out runs/c-rejudged.json
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap

import numpy as np
import torch

from experiments.reneg_comparison.results import (
    load_row_images,
    pool_results,
    print_comparison,
    print_gap_by_level,
    read_json,
    rejudge_results,
    save_row_images,
    summarise_row,
)
from negguide.shapeworld.assets import BUNDLED_EMBEDDINGS
from negguide.shapeworld.bench import sequence_kwargs
from negguide.shapeworld.prompts import SPLITS, shapeworld_prompts
from negguide.shapeworld.world import caption_kind

HAND_WRITTEN = "a shape and a shape"  # a user's guess at what to avoid: extra objects
#: the fixed rows of the judged comparison (``--baselines``): flag value -> (row name, negative prompt)
BASELINES = {"empty": ("empty negative", ""), "hand-written": (f'hand-written "{HAND_WRITTEN}"', HAND_WRITTEN)}


#: ``--per-sample-reward``'s short names, as ``negguide train-reneg --reward`` specs
PER_SAMPLE_REWARD_NAMES = {"probability": "shapeworld", "log-probability": "shapeworld-log"}


def per_sample_tuning_reward(values: list | None):
    """The reward per-sample tuning maximises, from ``--per-sample-reward`` values: ``probability`` (default) or
    ``log-probability`` of the bundled classifier, or any ``negguide train-reneg --reward`` spec; several are
    summed with their weights (e.g. the two classifiers the bundled embedding was trained on)."""
    from negguide.rewards.registry import build_reward

    def spec(value: str) -> str:  # the short name may carry a folder and a weight: log-probability=DIR@0.5
        name = value.split("=", 1)[0].split("@", 1)[0]
        return PER_SAMPLE_REWARD_NAMES.get(name, name) + value[len(name) :]

    return build_reward([spec(v) for v in values or ["probability"]])


def judge_negatives(
    pipe,
    reward,
    prompts: list,
    negatives: dict,
    seeds=(50_000, 50_001),
    images_per_prompt: int = 4,
    guidance_scale: float = 5.0,
    steps: int = 20,
    on_images=None,
    progress: bool = True,
) -> dict:
    """For each negative (name -> call kwargs, or name -> {prompt: kwargs} for per-prompt embeddings): judged
    prompt accuracy and mean reward over prompts x seeds x images, two-object prompts separately, and under
    "samples" the per-image judgements, rewards and prompt indices (every row sees the same noise, so rows pair up
    image by image: ``gap_table``). ``on_images(name, prompt_index, seed, images)``, if given, sees every batch;
    ``progress`` shows a bar over the batches of every row."""
    from tqdm.auto import tqdm

    from negguide.shapeworld.judge import prompt_correct

    bar = tqdm(total=len(negatives) * len(prompts) * len(seeds), desc="judged batches", disable=not progress)
    results = {}
    for name, spec in negatives.items():
        correct, rewards, two, prompt_index = [], [], [], []
        for index, prompt in enumerate(prompts):
            kwargs = spec.get(prompt, {}) if isinstance(spec, dict) and prompt in spec else spec
            for seed in seeds:
                images = pipe(
                    prompt,
                    num_images_per_prompt=images_per_prompt,
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    generator=torch.Generator().manual_seed(seed),
                    output_type="pt",
                    **sequence_kwargs(pipe),
                    **kwargs,
                ).images  # [n, 3, H, W] in [0, 1]
                if on_images is not None:
                    on_images(name, index, seed, images)
                hits = prompt_correct(images.permute(0, 2, 3, 1).numpy(), prompt)
                correct.extend(hits.tolist())
                prompt_index.extend([index] * len(hits))
                two.extend(hits.tolist() if caption_kind(prompt) != "one-object" else [])
                with torch.no_grad():
                    rewards.extend(reward(images, [prompt] * len(images)).tolist())
                bar.set_postfix_str(name, refresh=False)
                bar.update()
        results[name] = summarise_row(correct, rewards, prompt_index, two)
    bar.close()
    return results


def comparison_grid(prompts: list, images: dict, path: str, per_negative: int = 2, scale: int = 2) -> str:
    """A PNG with one row per prompt and, side by side, the first ``per_negative`` images of each negative
    (``images[name][i]``: ``[n, 3, H, W]`` in [0, 1] of prompt ``i``), with the judge's reading under every image;
    returns ``path``."""
    from PIL import Image, ImageDraw

    from negguide.shapeworld.bench import judge_reading
    from negguide.shapeworld.judge import to_uint8_hwc

    names = list(images)
    n, (_, _, h, w) = per_negative, images[names[0]][0].shape
    h, w = h * scale, w * scale
    label_w, head, foot, gap = 250, 18, 12, 12
    block = n * (w + 2) + gap
    canvas = Image.new("RGB", (label_w + len(names) * block, head + len(prompts) * (h + foot + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(names):
        draw.text((label_w + k * block, 3), name[: block // 6], fill="black")
    for r, prompt in enumerate(prompts):
        y = head + r * (h + foot + 4)
        draw.multiline_text((4, y + h // 2 - 12), textwrap.fill(prompt, label_w // 6), fill="black")
        for k, name in enumerate(names):
            for c, img in enumerate(images[name][r][:n]):
                array = img.permute(1, 2, 0).clamp(0, 1).numpy()
                tile = Image.fromarray(to_uint8_hwc(array)).resize((w, h), Image.NEAREST)  # the pixels the judge reads
                x = label_w + k * block + c * (w + 2)
                canvas.paste(tile, (x, y))
                draw.text((x, y + h), judge_reading(array)[: w // 6], fill=(90, 90, 90))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path


def saved_grid_images(results: dict, images: dict, prompts: int, per_prompt: int = 4) -> dict:
    """``comparison_grid``'s ``images`` from a saved run (``load_row_images``): for each row, the first ``per_prompt``
    saved images of each of its first ``prompts`` captions (the first seed's, as sampling stores them in order)."""
    out = {}
    for name, row in results.items():
        index = np.asarray(row["samples"]["prompt"])
        out[name] = [
            torch.from_numpy(images[name][index == i][:per_prompt]).permute(0, 3, 1, 2).float() / 255.0
            for i in range(min(prompts, len(row["prompts"])))
        ]
    return out


def global_row_name(path: str, count: int) -> str:
    """ "ReNeg global" for the one learned embedding of a comparison; with several, each row names its file."""
    return "ReNeg global" if count == 1 else f"ReNeg global ({path})"


def main(argv=None) -> None:
    from negguide.cli.flags import ranged
    from negguide.reneg.embedding import NegativeEmbedding
    from negguide.reneg.per_sample import SELECTIONS
    from negguide.shapeworld.bench import load_bench_pipeline
    from negguide.shapeworld.judge import as_image_list
    from negguide.shapeworld.reward import ShapeWorldReward

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a ShapeWorld model folder (default: the bundled one)")
    parser.add_argument(
        "--embedding",
        nargs="+",
        default=None,
        metavar="FILE",
        help="learned global negative embeddings (.safetensors; default: the bundled one of the "
        "model's family); several give a row each, to choose between training runs, and "
        "--per-sample tunes from the first",
    )
    parser.add_argument("--per-sample", action="store_true", help="also fit per-prompt embeddings from it")
    parser.add_argument(
        "--per-sample-steps",
        type=ranged(int, 1, 100, "--per-sample-steps"),
        default=10,
        help="at most this many steps per prompt (the paper: 10; default 10)",
    )
    parser.add_argument(
        "--per-sample-lr",
        type=ranged(float, 1e-6, 1.0, "--per-sample-lr"),
        default=3e-2,
        help="per-sample learning rate (default 3e-2)",
    )
    parser.add_argument(
        "--per-sample-batch",
        type=ranged(int, 1, 256, "--per-sample-batch"),
        default=8,
        help="samples per per-sample step (default 8)",
    )
    parser.add_argument(
        "--per-sample-selection",
        choices=SELECTIONS,
        default="final",
        help="per-sample early stopping on the reward of complete samples (final, default) or of the "
        "one-step training objective (step)",
    )
    parser.add_argument(
        "--per-sample-reward",
        action="append",
        default=None,
        metavar="REWARD",
        help="what per-sample tuning maximises: the bundled classifier's probability (default) or "
        "log-probability (its gradient does not vanish on failed images), or any train-reneg "
        "--reward spec; repeat to sum several, e.g. --per-sample-reward shapeworld-log@0.5 "
        "--per-sample-reward shapeworld-log=runs/reward-seed1@0.5",
    )
    parser.add_argument(
        "--per-sample-confirm",
        type=ranged(int, 0, 1024, "--per-sample-confirm"),
        default=0,
        help="keep a per-sample embedding only if it also beats the global one on this many complete "
        "samples with fresh noise (default 0: no confirmation)",
    )
    parser.add_argument(
        "--per-sample-late-steps",
        type=ranged(int, 1, 200, "--per-sample-late-steps"),
        default=None,
        help="the per-sample gradient step is one of the last N sampling steps (default: all of them, "
        "so the reward also reaches the layout; the paper's late window: a third)",
    )
    parser.add_argument(
        "--sampling-steps",
        type=ranged(int, 2, 200, "--sampling-steps"),
        default=20,
        help="sampling steps of every judged image and of per-sample tuning (default 20)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=ranged(float, 1.0, 30.0, "--guidance-scale"),
        default=5.0,
        help="CFG scale of every judged image and of per-sample tuning (default 5)",
    )
    parser.add_argument(
        "--baselines",
        nargs="*",
        choices=list(BASELINES),
        default=list(BASELINES),
        metavar="ROW",
        help="the fixed rows to judge beside the learned ones: empty, hand-written (default both; "
        "judging fewer rows is faster)",
    )
    parser.add_argument(
        "--prompts", type=ranged(int, 1, 500, "--prompts"), default=24, help="captions to judge (default 24)"
    )
    parser.add_argument("--prompt-seed", type=int, default=1, help="which sample of captions (default 1)")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="heldout",
        help="judge on held-out captions (default) or on training captions (to choose between runs "
        "without looking at the held-out ones)",
    )
    parser.add_argument(
        "--seeds", type=ranged(int, 1, 100, "--seeds"), default=2, help="seeds per prompt (4 images each)"
    )
    parser.add_argument(
        "--first-seed",
        type=ranged(int, 0, 2**31 - 1, "--first-seed"),
        default=50_000,
        help="seeds are FIRST_SEED, FIRST_SEED + 1, ... (default 50000); another sample of the same "
        "captions wants other seeds",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here (with each row's captions)")
    parser.add_argument(
        "--pool",
        nargs="+",
        default=None,
        metavar="JSON",
        help="judge nothing: pool the rows of earlier --out files (same row names) and print their "
        "paired gaps, clustered by caption across the files",
    )
    parser.add_argument(
        "--gap-by-level",
        nargs=2,
        default=None,
        metavar=("ROW", "REFERENCE"),
        help="with --pool: ROW − REFERENCE accuracy on the captions cut into --levels groups by "
        "REFERENCE's reward (ranked on held-apart images), e.g. 'ReNeg per-sample' 'ReNeg global'",
    )
    parser.add_argument(
        "--levels",
        type=ranged(int, 1, 20, "--levels"),
        default=3,
        help="groups of captions of --gap-by-level (default 3)",
    )
    parser.add_argument(
        "--save-images",
        default=None,
        metavar="NPZ",
        help="also save every judged image (uint8, row by row) to this .npz, for --rejudge",
    )
    parser.add_argument(
        "--rejudge",
        nargs=2,
        default=None,
        metavar=("JSON", "NPZ"),
        help="sample nothing: judge the saved images of an earlier run (its --out and --save-images "
        "files) again with the current judge, keeping its rewards; --out writes the new rows",
    )
    parser.add_argument(
        "--judge-min-area-frac",
        type=ranged(float, 0.0, 0.5, "--judge-min-area-frac"),
        default=None,
        metavar="FRAC",
        help="with --rejudge: the judge's smallest object as a fraction of the image "
        "(default 0.005, 20 pixels at 64x64; smaller pieces are specks), to see "
        "whether a comparison depends on it",
    )
    parser.add_argument(
        "--judge-fragment-gap-frac",
        type=ranged(float, 0.0, 0.5, "--judge-fragment-gap-frac"),
        default=None,
        metavar="FRAC",
        help="with --rejudge: same-coloured pieces at most this fraction of the width apart are one "
        "object (default 0.03, 2 pixels at 64x64; 0: only touching pieces), to see whether a "
        "comparison depends on it",
    )
    parser.add_argument(
        "--grid",
        default=None,
        help="save a PNG of the first seed's images of the first prompts here "
        "(with --rejudge: drawn from the saved images)",
    )
    parser.add_argument(
        "--grid-prompts",
        type=ranged(int, 1, 100, "--grid-prompts"),
        default=8,
        help="prompts (rows) in the --grid picture (default 8)",
    )
    args = parser.parse_args(argv)
    if args.save_images and not args.save_images.endswith(".npz"):
        parser.error(f"--save-images {args.save_images!r} must end in .npz")
    if args.rejudge and args.pool:
        parser.error(
            "--rejudge and --pool each judge earlier files: pass one of them (re-judge first, then pool the "
            "--out files)"
        )
    options = {
        k: v
        for k, v in (("min_area_frac", args.judge_min_area_frac), ("fragment_gap_frac", args.judge_fragment_gap_frac))
        if v is not None
    }
    if options and not args.rejudge:
        parser.error(
            "--judge-min-area-frac and --judge-fragment-gap-frac change the judge of --rejudge only: pass "
            "--rejudge JSON NPZ with them"
        )
    if args.rejudge:
        saved = load_row_images(args.rejudge[1])
        results = rejudge_results(read_json(args.rejudge[0]), saved, **options)
        print_comparison(
            results,
            f"{args.rejudge[0]} judged again from {args.rejudge[1]}"
            + (f", judge options {options}" if options else ""),
        )
        if args.grid:
            prompts = next(iter(results.values()))["prompts"][: args.grid_prompts]
            print(f"wrote {comparison_grid(prompts, saved_grid_images(results, saved, args.grid_prompts), args.grid)}")
        _write_json(results, args.out)
        return
    if args.gap_by_level and not args.pool:
        parser.error("--gap-by-level reads pooled results: pass --pool JSON JSON ... with it")
    if args.pool:
        pooled = pool_results([read_json(path) for path in args.pool])
        print_comparison(pooled, "pooled: " + ", ".join(args.pool))
        if args.gap_by_level:
            missing = [row for row in args.gap_by_level if row not in pooled]
            if missing:
                parser.error(f"--gap-by-level: no row {missing[0]!r} in the pooled results (rows: {list(pooled)})")
            print_gap_by_level(pooled, *args.gap_by_level, args.levels)
        return
    late_steps = args.sampling_steps if args.per_sample_late_steps is None else args.per_sample_late_steps
    if late_steps > args.sampling_steps:
        parser.error(
            f"--per-sample-late-steps {late_steps} exceeds --sampling-steps {args.sampling_steps}; "
            "pass at most that many"
        )
    if args.per_sample_reward and not args.per_sample:
        parser.error("--per-sample-reward is what --per-sample tuning maximises: pass --per-sample with it")
    try:
        tuning_reward = per_sample_tuning_reward(args.per_sample_reward) if args.per_sample else None
    except (ValueError, OSError) as error:
        parser.error(f"--per-sample-reward: {error}")
    pipe = load_bench_pipeline(args.model)
    reward = ShapeWorldReward.from_pretrained()
    paths = args.embedding or [BUNDLED_EMBEDDINGS.get(pipe.family)]
    if paths[0] is None:
        parser.error(f"no bundled embedding for a {pipe.family} model; pass --embedding FILE (negguide train-reneg)")
    if len(set(paths)) != len(paths):
        parser.error(f"--embedding names a file twice: {paths}")
    learned_rows = {global_row_name(path, len(paths)): NegativeEmbedding.load(path, pipe) for path in paths}
    learned = next(iter(learned_rows.values()))
    prompts = shapeworld_prompts(args.prompts, args.split, seed=args.prompt_seed)
    negatives = {row: {"negative_prompt": text} for b, (row, text) in BASELINES.items() if b in args.baselines}
    negatives.update({name: e.negative_kwargs() for name, e in learned_rows.items()})
    if args.per_sample:
        from negguide.reneg.per_sample import per_sample_embedding
        from negguide.reneg.trainer import ReNegConfig

        config = ReNegConfig(
            prompts=prompts[:1],
            steps=args.per_sample_steps,
            batch_size=args.per_sample_batch,
            lr=args.per_sample_lr,
            seed=7,
            late_steps=late_steps,
            num_inference_steps=args.sampling_steps,
            guidance_scale=args.guidance_scale,
            pipeline_kwargs=sequence_kwargs(pipe),
        )
        from tqdm.auto import tqdm

        tuned = {
            p: per_sample_embedding(
                pipe,
                tuning_reward,
                learned,
                p,
                config,
                selection=args.per_sample_selection,
                confirm_samples=args.per_sample_confirm,
            )
            for p in tqdm(prompts, desc="per-sample embeddings")
        }
        kept = sum(
            any(not torch.equal(e.tensors[k], learned.tensors[k]) for k in learned.tensors) for e in tuned.values()
        )
        print(f"per-sample: a tuned embedding differs from the global one for {kept} of {len(prompts)} prompts")
        negatives["ReNeg per-sample"] = {p: e.negative_kwargs() for p, e in tuned.items()}
    seeds = tuple(range(args.first_seed, args.first_seed + args.seeds))
    shown: dict = {}
    kept_pixels: dict = {}

    def keep(name, index, seed, images):
        if args.grid and seed == seeds[0] and index < args.grid_prompts:
            shown.setdefault(name, []).append(images)
        if args.save_images:  # the judge's own uint8 rounding, so a re-judge reads the very same pixels
            kept_pixels.setdefault(name, []).extend(as_image_list(images.permute(0, 2, 3, 1).numpy()))

    results = judge_negatives(
        pipe,
        reward,
        prompts,
        negatives,
        seeds=seeds,
        on_images=keep,
        guidance_scale=args.guidance_scale,
        steps=args.sampling_steps,
    )
    if args.grid:
        print(f"wrote {comparison_grid(prompts[: args.grid_prompts], shown, args.grid)}")
    for r in results.values():
        r["prompts"] = list(prompts)
    print_comparison(
        results,
        f"{len(prompts)} {'held-out' if args.split == 'heldout' else 'training'} prompts x "
        f"{len(seeds)} seeds (from {seeds[0]}) x 4 images, guidance {args.guidance_scale:g}, "
        f"{args.sampling_steps} sampling steps",
    )
    _write_json(results, args.out)
    if args.save_images:
        print(f"wrote {save_row_images({k: np.stack(v) for k, v in kept_pixels.items()}, args.save_images)}")


def _write_json(results: dict, path) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
