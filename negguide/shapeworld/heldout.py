"""Held-out two-object accuracy of a ShapeWorld model during or after DiffusionNFT training.

Held-out prompts are two-object ShapeWorld captions of the "heldout" split (:mod:`negguide.shapeworld.prompts`):
none of them is ever a training prompt. Accuracy is judged (:func:`negguide.shapeworld.judge.prompt_correct`) on
CFG-free samples (guidance 1, as the DiffusionNFT paper evaluates) from a fixed seed set. ``negguide train-nft
--heldout-every N`` uses :class:`HeldoutMonitor`.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch

from .bench import sequence_kwargs
from .judge import prompt_correct
from .prompts import shapeworld_prompts
from .world import caption_kind


def is_two_object(caption: str) -> bool:
    """A caption naming two objects (joined by "and" or a spatial relation)."""

    return caption_kind(caption) != "one-object"


def heldout_two_object_prompts(n: int = 24, seed: int = 1) -> list[str]:
    """``n`` distinct two-object captions of the held-out split."""

    return shapeworld_prompts(n, "heldout", seed, kind="two-object")


def training_prompts(n: int = 200) -> list[str]:
    """The training captions ``negguide train-nft`` uses by default (the "train" split, seed 0)."""

    return shapeworld_prompts(n, "train")


def _inner(pipe):
    """The diffusers pipeline behind a PerpNegPipeline (or the pipeline itself)."""
    return pipe.family_pipeline() if hasattr(pipe, "family_pipeline") else pipe


@torch.no_grad()
def evaluate(
    pipe,
    prompts: list,
    seeds=(1000, 1001),
    images_per_prompt: int = 4,
    steps: int = 10,
    guidance_scale: float = 1.0,
    return_details: bool = False,
    reward=None,
):
    """Judged accuracy of ``pipe`` (with whatever LoRA is active) on prompts x seeds x images_per_prompt samples.

    Every image has its own generator seeded by (seed, prompt index, image index): the same noise for every model.
    Returns the accuracy (float), or with ``return_details`` a dict with the per-image hits too (and, given a
    ``reward``, whether it agrees with the judge on each image, thresholded at 0.5)."""

    inner = _inner(pipe)
    extra = sequence_kwargs(inner)
    hits, agree = [], []
    for seed in seeds:
        generators = [
            torch.Generator().manual_seed(int(seed) * 100_003 + i * 97 + j)
            for i in range(len(prompts))
            for j in range(images_per_prompt)
        ]
        images = inner(
            prompt=list(prompts),
            num_images_per_prompt=images_per_prompt,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="pt",
            **extra,
        ).images  # [P * k, 3, H, W] in [0, 1], prompt-major
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


def plot_curves(
    base: float, curves: dict, path: str, images: int, title: str = "", rollouts: int | None = None
) -> str | None:
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
    ax.set(
        xlabel=f"training step ({rollouts} rollouts each)" if rollouts else "training step",
        ylabel="held-out two-object accuracy (CFG 1)",
        title=title or "ShapeWorld: DiffusionNFT vs positive-only",
        ylim=(0, 1),
    )
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class HeldoutMonitor:
    """A ``NFTTrainer.train`` callback: the held-out two-object accuracy of the current LoRA at step 0, every
    ``every`` steps and at the last step, kept in FOLDER/heldout.json (a resumed run keeps the points up to its
    checkpoint and goes on) and plotted as FOLDER/heldout_curve.png. Evaluates on the main process only."""

    def __init__(
        self,
        folder: str,
        every: int,
        prompts: list | None = None,
        n_prompts: int = 24,
        label: str = "nft",
        log=print,
        seeds=(1000, 1001),
        images_per_prompt: int = 4,
        steps: int = 10,
    ):
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
            if saved.get("prompts") == self.prompts and saved.get("eval") == {
                **self.eval,
                "seeds": list(self.eval["seeds"]),
            }:
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
        self.log(
            f"{self.label} step {step}: held-out {accuracy:.3f} +- {standard_error(accuracy, self.images):.3f} "
            f"(train reward {last.get('reward', float('nan')):.3f}, eval {time.time() - t0:.0f} s)"
        )
        self.save()

    def save(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        record = {
            "label": self.label,
            "prompts": self.prompts,
            "eval": {**self.eval, "seeds": list(self.eval["seeds"])},
            "images_per_point": self.images,
            "curve": self.curve,
        }
        with open(self.path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(self.path + ".tmp", self.path)
        base = self.curve[0][1] if self.curve and self.curve[0][0] == 0 else float("nan")
        plot_curves(
            base,
            {self.label: self.curve},
            os.path.join(self.folder, "heldout_curve.png"),
            self.images,
            title=f"ShapeWorld held-out two-object prompts ({self.images} images/point)",
        )
