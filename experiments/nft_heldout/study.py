"""DiffusionNFT on ShapeWorld: held-out two-object accuracy, and NFT against a positive-only baseline.

Held-out prompts are two-object ShapeWorld captions of the "heldout" split (split by a hash of the caption text, see
experiments.reneg_comparison.compare): none of them is ever a training prompt (the "train" split, as ``negguide train-nft``
uses by default). Accuracy is judged (negguide.shapeworld.judge.prompt_correct) on CFG-free samples (guidance 1, as the
paper evaluates) from a fixed seed set.

    # base model only
    python -m experiments.nft_heldout.study --eval-only
    # NFT vs the positive-only baseline, same rollouts budget and seed, accuracy every 25 steps
    python -m experiments.nft_heldout.study --out outputs/nft_shapeworld --steps 400 --eval-every 25

Writes OUT/curves.json, OUT/curves.png (both held-out accuracy curves, the base model as a horizontal line) and
OUT/table.md (also printed).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from negguide.shapeworld.heldout import (
    HeldoutMonitor,
    accuracy_by_kind,
    evaluate,
    evaluate_lora,
    heldout_two_object_prompts,
    plot_curves,
    standard_error,
    training_prompts,
)

OBJECTIVES = ("nft", "positive-only")


def steps_to_reach(curve: list, target: float) -> int | None:
    """The first evaluated step whose accuracy is >= target (curve: [(step, accuracy)]); None if never."""
    for step, accuracy in curve:
        if accuracy >= target - 1e-12:
            return step
    return None


def compare_curves(base: float, curves: dict, steps: int | None = None) -> dict:
    """When each run first reaches NFT's best accuracy and half of NFT's gain over the base model, and the ratio of
    the steps (baseline / NFT). ``steps``: the baseline's step budget (default: its last evaluated step); a baseline
    that never gets there gives ratio None and the bound budget / NFT's steps."""
    nft, baseline = curves["nft"], curves["positive-only"]
    best = max(a for _, a in nft)
    out = {
        "base": base,
        "nft_best": best,
        "baseline_best": max(a for _, a in baseline),
        "steps": steps or max(s for s, _ in baseline),
    }
    for key, target in (("best", best), ("half", base + 0.5 * (best - base))):
        a, b = steps_to_reach(nft, target), steps_to_reach(baseline, target)
        out[f"target_{key}"], out[f"nft_step_{key}"], out[f"baseline_step_{key}"] = target, a, b
        out[f"ratio_{key}"] = (b / a) if (a and b) else None
        out[f"ratio_{key}_bound"] = (out["steps"] / a) if (a and not b) else None
    return out


def markdown_table(base: float, curves: dict, summary: dict, images: int) -> str:
    se = lambda p: standard_error(p, images)  # noqa: E731
    lines = [
        f"Held-out two-object accuracy ({images} judged images per point, CFG 1; +- binomial s.e.)",
        "",
        "| step | NFT | positive-only |",
        "|---|---|---|",
        f"| base | {base:.3f} +- {se(base):.3f} | {base:.3f} +- {se(base):.3f} |",
    ]
    other = dict(curves["positive-only"])
    for step, acc in curves["nft"]:
        b = other.get(step)
        lines.append(
            f"| {step} | {acc:.3f} +- {se(acc):.3f} | " + (f"{b:.3f} +- {se(b):.3f} |" if b is not None else "- |")
        )
    lines.append("")
    s = summary
    lines.append(
        f"- base accuracy: {base:.3f}; NFT best: {s['nft_best']:.3f}; positive-only best: {s['baseline_best']:.3f}"
    )
    for key, what in (("best", "NFT's best"), ("half", "half of NFT's gain")):
        a, b = s[f"nft_step_{key}"], s[f"baseline_step_{key}"]
        head = f"- steps to {what} ({s[f'target_{key}']:.3f}): NFT {a}, positive-only "
        if s[f"ratio_{key}"] is not None:
            lines.append(head + f"{b}: ratio {s[f'ratio_{key}']:.2f}x")
        elif s[f"ratio_{key}_bound"] is not None:
            lines.append(head + f"not reached within {s['steps']} steps: ratio > {s[f'ratio_{key}_bound']:.2f}x")
    return "\n".join(lines) + "\n"


def report(nft_folder: str, baseline_folder: str, out: str, rollouts: int | None = None, log=print) -> dict:
    """Compare two runs' FOLDER/heldout.json (``negguide train-nft --heldout-every N``, one with
    ``--objective positive-only``): OUT/curves.json, OUT/curves.png, OUT/table.md (also logged)."""
    runs = {}
    for name, folder in (("nft", nft_folder), ("positive-only", baseline_folder)):
        path = os.path.join(folder, "heldout.json")
        if not os.path.isfile(path):
            raise ValueError(f"{path!r} does not exist: train with negguide train-nft --heldout-every N --out {folder}")
        with open(path) as f:
            runs[name] = json.load(f)
    if (
        runs["nft"]["prompts"] != runs["positive-only"]["prompts"]
        or runs["nft"]["eval"] != runs["positive-only"]["eval"]
    ):
        raise ValueError("the two runs were evaluated on different held-out prompts or settings")
    curves = {name: [tuple(p) for p in run["curve"]] for name, run in runs.items()}
    if curves["nft"][0][0] != 0:
        raise ValueError(f"{nft_folder}/heldout.json has no step-0 (base model) point")
    base, images = curves["nft"][0][1], runs["nft"]["images_per_point"]
    state = os.path.join(nft_folder, "checkpoint", "state.json")
    if rollouts is None and os.path.isfile(state):  # rollouts per step, for the plot's axis
        with open(state) as f:
            config = json.load(f).get("config", {})
        rollouts = config.get("group_size", 0) * config.get("prompts_per_step", 0) or None
    summary = compare_curves(base, curves)
    table = markdown_table(base, curves, summary, images)
    os.makedirs(out, exist_ok=True)
    result = {
        "base": base,
        "images_per_point": images,
        "heldout_prompts": runs["nft"]["prompts"],
        "eval": runs["nft"]["eval"],
        "runs": {"nft": nft_folder, "positive-only": baseline_folder},
        "curves": curves,
        "summary": summary,
    }
    with open(os.path.join(out, "curves.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    plot_curves(
        base,
        curves,
        os.path.join(out, "curves.png"),
        images,
        rollouts=rollouts,
        title=f"ShapeWorld held-out two-object prompts ({images} images/point)",
    )
    log(table)
    return result


def run_comparison(
    out: str,
    steps: int = 200,
    eval_every: int = 25,
    objectives=OBJECTIVES,
    n_prompts: int = 24,
    seeds=(1000, 1001),
    images_per_prompt: int = 4,
    eval_steps: int = 10,
    train_prompts: int = 200,
    seed: int = 0,
    log=print,
    **config,
) -> dict:
    """Train each objective from the same seed with the same rollout budget (what ``negguide train-nft
    --heldout-every`` does) into OUT/<objective>, then :func:`report` them. Returns the report."""
    from negguide.cli.train_nft import shapeworld_accuracy
    from negguide.nft.trainer import NFTConfig, NFTTrainer
    from negguide.shapeworld.bench import load_bench_pipeline
    from negguide.shapeworld.reward import ShapeWorldReward

    heldout = heldout_two_object_prompts(n_prompts)
    train = training_prompts(train_prompts)
    overlap = set(heldout) & set(train)
    if overlap:
        raise RuntimeError(f"held-out prompts in training: {sorted(overlap)[:3]}")
    rollouts = None
    for objective in objectives:
        folder = os.path.join(out, objective)
        trainer = NFTTrainer(
            load_bench_pipeline(),
            ShapeWorldReward.from_pretrained(),
            NFTConfig(
                prompts=train,
                steps=steps,
                seed=seed,
                objective=objective,
                max_sequence_length=0,
                output_dir=folder,
                **config,
            ),
            accuracy=shapeworld_accuracy,
        )
        rollouts = trainer.config.batch_size
        monitor = HeldoutMonitor(
            folder,
            eval_every,
            heldout,
            label=objective,
            log=log,
            seeds=seeds,
            images_per_prompt=images_per_prompt,
            steps=eval_steps,
        )
        trainer.train(progress=False, callback=monitor)
        del trainer
    return report(os.path.join(out, "nft"), os.path.join(out, "positive-only"), out, rollouts=rollouts, log=log)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="outputs/nft_shapeworld")
    parser.add_argument(
        "--report",
        nargs=2,
        metavar=("NFT_RUN", "BASELINE_RUN"),
        default=None,
        help="only compare two train-nft --heldout-every runs' heldout.json into OUT",
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--prompts", type=int, default=24, help="held-out two-object prompts")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001])
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--eval-steps", type=int, default=10, help="sampler steps of the evaluation")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--eval-only", action="store_true", help="only the base model's (or --lora's) accuracy")
    parser.add_argument("--lora", default=None, help="with --eval-only: a LoRA folder to evaluate")
    parser.add_argument(
        "--model",
        default=None,
        help="with --eval-only: a ShapeWorld model folder (default: the bundled flow model; e.g. assets/shapeworld/sd)",
    )
    parser.add_argument(
        "--split",
        choices=("heldout", "train"),
        default="heldout",
        help="with --eval-only: held-out two-object captions (default) or the first training ones",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=1.0,
        help="with --eval-only: CFG scale (default 1: CFG-free, as NFT is evaluated; e.g. 5 for the guided base model)",
    )
    args = parser.parse_args(argv)
    if args.guidance < 1.0:
        parser.error(f"--guidance {args.guidance} must be >= 1 (1 = CFG-free)")
    ev = dict(
        seeds=tuple(args.seeds),
        images_per_prompt=args.images_per_prompt,
        steps=args.eval_steps,
        guidance_scale=args.guidance,
    )
    if args.report:
        report(*args.report, args.out)
        return
    if args.eval_only:
        from negguide.shapeworld.bench import load_bench_pipeline
        from negguide.shapeworld.evaluate import load_pipeline

        pipe = load_pipeline(args.model) if args.model else load_bench_pipeline()
        pipe.set_progress_bar_config(disable=True)
        from negguide.shapeworld.prompts import shapeworld_prompts
        from negguide.shapeworld.reward import ShapeWorldReward

        prompts = shapeworld_prompts(
            args.prompts, args.split, seed=1 if args.split == "heldout" else 0, kind="two-object"
        )
        t0 = time.time()
        ev.update(return_details=True, reward=ShapeWorldReward.from_pretrained())
        details = evaluate_lora(pipe, args.lora, prompts, **ev) if args.lora else evaluate(pipe, prompts, **ev)
        acc, n = details["accuracy"], details["images"]
        split = lambda key: ", ".join(
            f"{kind} {a:.3f}"
            for kind, (a, m) in accuracy_by_kind(prompts, details[key], args.images_per_prompt).items()  # noqa: E731
        )
        cfg = "" if args.guidance == 1.0 else f" at CFG {args.guidance:g}"
        print(
            f"{args.split} two-object accuracy{cfg} {acc:.3f} +- {standard_error(acc, n):.3f} ({n} images, "
            f"{time.time() - t0:.1f} s); by caption: {split('hits')}; the reward agrees with the judge on "
            f"{np.mean(details['reward_agrees']):.3f} ({split('reward_agrees')})"
        )
        return
    run_comparison(
        args.out,
        steps=args.steps,
        eval_every=args.eval_every,
        objectives=args.objectives,
        n_prompts=args.prompts,
        seeds=tuple(args.seeds),
        images_per_prompt=args.images_per_prompt,
        eval_steps=args.eval_steps,
        seed=args.seed,
        lr=args.lr,
        group_size=args.group_size,
        prompts_per_step=args.prompts_per_step,
    )


if __name__ == "__main__":
    main()
