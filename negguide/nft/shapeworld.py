"""DiffusionNFT on ShapeWorld: held-out two-object accuracy, and NFT against a positive-only baseline.

Held-out prompts are two-object ShapeWorld captions of the "heldout" split (split by a hash of the caption text, see
negguide.reneg.shapeworld): none of them is ever a training prompt (the "train" split, as ``negguide train-nft``
uses by default). Accuracy is judged (negguide.shapes.judge.prompt_correct) on CFG-free samples (guidance 1, as the
paper evaluates) from a fixed seed set.

    # base model only
    python -m negguide.nft.shapeworld --eval-only
    # NFT vs the positive-only baseline, same rollouts budget and seed, accuracy every 25 steps
    python -m negguide.nft.shapeworld --out outputs/nft_shapeworld --steps 400 --eval-every 25

Writes OUT/curves.json, OUT/curves.png (both held-out accuracy curves, the base model as a horizontal line) and
OUT/table.md (also printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch

OBJECTIVES = ("nft", "positive-only")


def is_two_object(caption: str) -> bool:
    """A caption naming two objects (joined by "and" or a spatial relation)."""
    from ..reneg.shapeworld import caption_kind

    return caption_kind(caption) != "one-object"


def heldout_two_object_prompts(n: int = 24, seed: int = 1) -> list[str]:
    """``n`` distinct two-object captions of the held-out split."""
    from ..reneg.shapeworld import shapeworld_prompts

    return shapeworld_prompts(n, "heldout", seed, kind="two-object")


def training_prompts(n: int = 200) -> list[str]:
    """The training captions ``negguide train-nft`` uses by default (the "train" split, seed 0)."""
    from ..reneg.shapeworld import shapeworld_prompts

    return shapeworld_prompts(n, "train")


def _inner(pipe):
    """The diffusers pipeline behind a PerpNegPipeline (or the pipeline itself)."""
    return pipe.family_pipeline() if hasattr(pipe, "family_pipeline") else pipe


@torch.no_grad()
def evaluate(pipe, prompts: list, seeds=(1000, 1001), images_per_prompt: int = 4, steps: int = 10,
             guidance_scale: float = 1.0, return_details: bool = False, reward=None):
    """Judged accuracy of ``pipe`` (with whatever LoRA is active) on prompts x seeds x images_per_prompt samples.

    Every image has its own generator seeded by (seed, prompt index, image index): the same noise for every model.
    Returns the accuracy (float), or with ``return_details`` a dict with the per-image hits too (and, given a
    ``reward``, whether it agrees with the judge on each image, thresholded at 0.5)."""
    from ..shapes.bench import sequence_kwargs
    from ..shapes.judge import prompt_correct

    inner = _inner(pipe)
    extra = sequence_kwargs(inner)
    hits, agree = [], []
    for seed in seeds:
        generators = [torch.Generator().manual_seed(int(seed) * 100_003 + i * 97 + j)
                      for i in range(len(prompts)) for j in range(images_per_prompt)]
        images = inner(prompt=list(prompts), num_images_per_prompt=images_per_prompt, num_inference_steps=steps,
                       guidance_scale=guidance_scale, generator=generators, output_type="pt",
                       **extra).images  # [P * k, 3, H, W] in [0, 1], prompt-major
        expanded = [p for p in prompts for _ in range(images_per_prompt)]
        correct = prompt_correct(images.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy(), expanded)
        hits.extend(correct.tolist())
        if reward is not None:  # does the reward (thresholded at 0.5) say what the judge says?
            agree.extend(((reward(images.float(), expanded).cpu().numpy() > 0.5) == correct).tolist())
    accuracy = float(np.mean(hits))
    if return_details:
        out = {"accuracy": accuracy, "images": len(hits), "stderr": standard_error(accuracy, len(hits)), "hits": hits}
        return {**out, "reward_agrees": agree} if reward is not None else out
    return accuracy


def accuracy_by_kind(prompts: list, hits: list, images_per_prompt: int) -> dict:
    """Split ``evaluate``'s per-image hits by caption kind (``caption_kind``: "and", "relation", "one-object").
    Returns kind -> (accuracy, images)."""
    per_seed = len(prompts) * images_per_prompt
    if len(hits) % per_seed:
        raise ValueError(f"{len(hits)} hits do not divide into {len(prompts)} prompts x {images_per_prompt} images")
    from ..reneg.shapeworld import caption_kind

    kinds: dict = {}
    for index, hit in enumerate(hits):
        kinds.setdefault(caption_kind(prompts[(index % per_seed) // images_per_prompt]), []).append(bool(hit))
    return {kind: (float(np.mean(values)), len(values)) for kind, values in sorted(kinds.items())}


def evaluate_lora(pipe, folder: str, prompts: list, **kwargs) -> float:
    """``evaluate`` with the diffusers LoRA in ``folder`` loaded (and unloaded after)."""
    inner = _inner(pipe)
    inner.load_lora_weights(folder)
    try:
        return evaluate(inner, prompts, **kwargs)
    finally:
        inner.unload_lora_weights()


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n images."""
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


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
    out = {"base": base, "nft_best": best, "baseline_best": max(a for _, a in baseline),
           "steps": steps or max(s for s, _ in baseline)}
    for key, target in (("best", best), ("half", base + 0.5 * (best - base))):
        a, b = steps_to_reach(nft, target), steps_to_reach(baseline, target)
        out[f"target_{key}"], out[f"nft_step_{key}"], out[f"baseline_step_{key}"] = target, a, b
        out[f"ratio_{key}"] = (b / a) if (a and b) else None
        out[f"ratio_{key}_bound"] = (out["steps"] / a) if (a and not b) else None
    return out


def markdown_table(base: float, curves: dict, summary: dict, images: int) -> str:
    se = lambda p: standard_error(p, images)  # noqa: E731
    lines = [f"Held-out two-object accuracy ({images} judged images per point, CFG 1; +- binomial s.e.)", "",
             "| step | NFT | positive-only |", "|---|---|---|",
             f"| base | {base:.3f} +- {se(base):.3f} | {base:.3f} +- {se(base):.3f} |"]
    other = dict(curves["positive-only"])
    for step, acc in curves["nft"]:
        b = other.get(step)
        lines.append(f"| {step} | {acc:.3f} +- {se(acc):.3f} | " + (f"{b:.3f} +- {se(b):.3f} |" if b is not None else "- |"))
    lines.append("")
    s = summary
    lines.append(f"- base accuracy: {base:.3f}; NFT best: {s['nft_best']:.3f}; positive-only best: {s['baseline_best']:.3f}")
    for key, what in (("best", "NFT's best"), ("half", "half of NFT's gain")):
        a, b = s[f"nft_step_{key}"], s[f"baseline_step_{key}"]
        head = f"- steps to {what} ({s[f'target_{key}']:.3f}): NFT {a}, positive-only "
        if s[f"ratio_{key}"] is not None:
            lines.append(head + f"{b}: ratio {s[f'ratio_{key}']:.2f}x")
        elif s[f"ratio_{key}_bound"] is not None:
            lines.append(head + f"not reached within {s['steps']} steps: ratio > {s[f'ratio_{key}_bound']:.2f}x")
    return "\n".join(lines) + "\n"


def plot_curves(base: float, curves: dict, path: str, images: int, title: str = "", rollouts: int | None = None) -> str | None:
    """Both held-out accuracy curves with their binomial s.e. bands and the base model as a line; PNG at ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, style in (("nft", "o-"), ("positive-only", "s--")):
        if curves.get(name):
            steps, acc = zip(*curves[name])
            acc = np.array(acc)
            err = np.sqrt(acc * (1 - acc) / images)
            label = "DiffusionNFT" if name == "nft" else "positive-only (own training loss on reward-filtered samples)"
            ax.plot(steps, acc, style, label=label, markersize=3)
            ax.fill_between(steps, acc - err, acc + err, alpha=0.15)
    ax.axhline(base, color="gray", linestyle=":", label=f"base model ({base:.3f})")
    ax.set(xlabel=f"training step ({rollouts} rollouts each)" if rollouts else "training step", ylabel="held-out two-object accuracy (CFG 1)",
           title=title or "ShapeWorld: DiffusionNFT vs positive-only", ylim=(0, 1))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class HeldoutMonitor:
    """A ``NFTTrainer.train`` callback: the held-out two-object accuracy of the current LoRA at step 0, every
    ``every`` steps and at the last step, kept in FOLDER/heldout.json (a resumed run keeps the points up to its
    checkpoint and goes on) and plotted as FOLDER/heldout_curve.png. Evaluates on the main process only."""

    def __init__(self, folder: str, every: int, prompts: list | None = None, n_prompts: int = 24, label: str = "nft",
                 log=print, seeds=(1000, 1001), images_per_prompt: int = 4, steps: int = 10):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every = {every!r} must be a positive number of steps")
        self.folder, self.every, self.label, self.log = folder, every, label, log
        self.prompts = list(prompts) if prompts is not None else heldout_two_object_prompts(n_prompts)
        self.eval = dict(seeds=tuple(int(s) for s in seeds), images_per_prompt=images_per_prompt, steps=steps)
        self.images = len(self.prompts) * len(self.eval["seeds"]) * images_per_prompt
        self.path = os.path.join(folder, "heldout.json")
        self.curve: list = []
        if os.path.isfile(self.path):
            with open(self.path) as f:
                saved = json.load(f)
            if saved.get("prompts") == self.prompts and saved.get("eval") == {**self.eval, "seeds": list(self.eval["seeds"])}:
                self.curve = [tuple(point) for point in saved["curve"]]

    def __call__(self, trainer) -> None:
        step = trainer.step
        self.curve = [(s, a) for s, a in self.curve if s <= step]  # points past a resumed checkpoint are redone
        due = step == 0 or step % self.every == 0 or step == trainer.config.steps
        if not due or (self.curve and self.curve[-1][0] == step) or not trainer.accelerator.is_main_process:
            return
        t0 = time.time()
        accuracy = evaluate(trainer.pipe, self.prompts, **self.eval)  # the current adapter is the active one
        self.curve.append((step, accuracy))
        last = trainer.history[-1] if trainer.history else {}
        self.log(f"{self.label} step {step}: held-out {accuracy:.3f} +- {standard_error(accuracy, self.images):.3f} "
                 f"(train reward {last.get('reward', float('nan')):.3f}, eval {time.time() - t0:.0f} s)")
        self.save()

    def save(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        record = {"label": self.label, "prompts": self.prompts, "eval": {**self.eval, "seeds": list(self.eval["seeds"])},
                  "images_per_point": self.images, "curve": self.curve}
        with open(self.path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(self.path + ".tmp", self.path)
        base = self.curve[0][1] if self.curve and self.curve[0][0] == 0 else float("nan")
        plot_curves(base, {self.label: self.curve}, os.path.join(self.folder, "heldout_curve.png"), self.images,
                    title=f"ShapeWorld held-out two-object prompts ({self.images} images/point)")


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
    if runs["nft"]["prompts"] != runs["positive-only"]["prompts"] or runs["nft"]["eval"] != runs["positive-only"]["eval"]:
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
    result = {"base": base, "images_per_point": images, "heldout_prompts": runs["nft"]["prompts"],
              "eval": runs["nft"]["eval"], "runs": {"nft": nft_folder, "positive-only": baseline_folder},
              "curves": curves, "summary": summary}
    with open(os.path.join(out, "curves.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    plot_curves(base, curves, os.path.join(out, "curves.png"), images, rollouts=rollouts,
                title=f"ShapeWorld held-out two-object prompts ({images} images/point)")
    log(table)
    return result


def run_comparison(out: str, steps: int = 200, eval_every: int = 25, objectives=OBJECTIVES, n_prompts: int = 24,
                   seeds=(1000, 1001), images_per_prompt: int = 4, eval_steps: int = 10, train_prompts: int = 200,
                   seed: int = 0, log=print, **config) -> dict:
    """Train each objective from the same seed with the same rollout budget (what ``negguide train-nft
    --heldout-every`` does) into OUT/<objective>, then :func:`report` them. Returns the report."""
    from ..rewards.shapeworld import ShapeWorldReward
    from ..shapes.bench import load_bench_pipeline
    from .cli import shapeworld_accuracy
    from .trainer import NFTConfig, NFTTrainer

    heldout = heldout_two_object_prompts(n_prompts)
    train = training_prompts(train_prompts)
    overlap = set(heldout) & set(train)
    if overlap:
        raise RuntimeError(f"held-out prompts in training: {sorted(overlap)[:3]}")
    rollouts = None
    for objective in objectives:
        folder = os.path.join(out, objective)
        trainer = NFTTrainer(load_bench_pipeline(), ShapeWorldReward.from_pretrained(), NFTConfig(
            prompts=train, steps=steps, seed=seed, objective=objective, max_sequence_length=0, output_dir=folder,
            **config), accuracy=shapeworld_accuracy)
        rollouts = trainer.config.batch_size
        monitor = HeldoutMonitor(folder, eval_every, heldout, label=objective, log=log, seeds=seeds,
                                 images_per_prompt=images_per_prompt, steps=eval_steps)
        trainer.train(progress=False, callback=monitor)
        del trainer
    return report(os.path.join(out, "nft"), os.path.join(out, "positive-only"), out, rollouts=rollouts, log=log)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/nft_shapeworld")
    parser.add_argument("--report", nargs=2, metavar=("NFT_RUN", "BASELINE_RUN"), default=None,
                        help="only compare two train-nft --heldout-every runs' heldout.json into OUT")
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
    parser.add_argument("--model", default=None, help="with --eval-only: a ShapeWorld model folder (default: the "
                        "bundled flow model; e.g. assets/shapeworld/sd)")
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout",
                        help="with --eval-only: held-out two-object captions (default) or the first training ones")
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="with --eval-only: CFG scale (default 1: CFG-free, as NFT is evaluated; e.g. 5 for the "
                             "guided base model)")
    args = parser.parse_args(argv)
    if args.guidance < 1.0:
        parser.error(f"--guidance {args.guidance} must be >= 1 (1 = CFG-free)")
    ev = dict(seeds=tuple(args.seeds), images_per_prompt=args.images_per_prompt, steps=args.eval_steps,
              guidance_scale=args.guidance)
    if args.report:
        report(*args.report, args.out)
        return
    if args.eval_only:
        from ..shapes.bench import load_bench_pipeline
        from ..shapes.evaluate import load_pipeline

        pipe = load_pipeline(args.model) if args.model else load_bench_pipeline()
        pipe.set_progress_bar_config(disable=True)
        from ..reneg.shapeworld import shapeworld_prompts
        from ..rewards.shapeworld import ShapeWorldReward

        prompts = shapeworld_prompts(args.prompts, args.split, seed=1 if args.split == "heldout" else 0, kind="two-object")
        t0 = time.time()
        ev.update(return_details=True, reward=ShapeWorldReward.from_pretrained())
        details = evaluate_lora(pipe, args.lora, prompts, **ev) if args.lora else evaluate(pipe, prompts, **ev)
        acc, n = details["accuracy"], details["images"]
        split = lambda key: ", ".join(f"{kind} {a:.3f}" for kind, (a, m) in  # noqa: E731
                                      accuracy_by_kind(prompts, details[key], args.images_per_prompt).items())
        cfg = "" if args.guidance == 1.0 else f" at CFG {args.guidance:g}"
        print(f"{args.split} two-object accuracy{cfg} {acc:.3f} +- {standard_error(acc, n):.3f} ({n} images, "
              f"{time.time() - t0:.1f} s); by caption: {split('hits')}; the reward agrees with the judge on "
              f"{np.mean(details['reward_agrees']):.3f} ({split('reward_agrees')})")
        return
    run_comparison(args.out, steps=args.steps, eval_every=args.eval_every, objectives=args.objectives,
                   n_prompts=args.prompts, seeds=tuple(args.seeds), images_per_prompt=args.images_per_prompt,
                   eval_steps=args.eval_steps, seed=args.seed, lr=args.lr, group_size=args.group_size,
                   prompts_per_step=args.prompts_per_step)


if __name__ == "__main__":
    main()
