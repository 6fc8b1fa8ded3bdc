"""NFTConfig: every setting of a DiffusionNFT run, range-checked on construction (the CLI's flags are built from it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from negguide.core.training_io import cosine_learning_rate
from negguide.nft.policies import DEFAULT_TARGETS

PRECISIONS = ("no", "fp16", "bf16")
OBJECTIVES = ("nft", "positive-only", "positive-only-x0")
LR_SCHEDULES = ("constant", "cosine")
ROLLOUT_SAMPLERS = ("default", "stochastic")


def _f(default, help, low=None, high=None, **extra):
    meta = {"help": help, **extra}
    if low is not None:
        meta.update(min=low, max=high)
    return field(default=default, metadata=meta)


@dataclass
class NFTConfig:
    """Training settings (the reference's: LoRA r 32 / alpha 64, AdamW lr 3e-4 wd 1e-4, clip 1, beta 1, kl 1e-4)."""

    prompts: list = field(default_factory=list, metadata={"help": "training prompts"})
    group_size: int = _f(4, "G: samples per prompt per step (compared with each other)", 2, 1024)
    prompts_per_step: int = _f(4, "prompts per step (the step's batch is prompts x G)", 1, 4096)
    steps: int = _f(100, "optimizer steps (each: fresh rollouts and one update)", 1, 1_000_000)
    beta: float = _f(
        1.0, "beta in (0, 1]: strength of the implicit policies (0.1 for multi-reward)", 0.0, 1.0, low_open=True
    )
    kl_weight: float = _f(1e-4, "weight of the KL-to-reference term", 0.0, 100.0)
    lr: float = _f(3e-4, "AdamW learning rate", 1e-8, 1.0)
    lr_schedule: str = field(
        default="constant",
        metadata={
            "help": "constant (the reference's) | cosine (from lr down to 0 at the last step)",
            "choices": LR_SCHEDULES,
        },
    )
    weight_decay: float = _f(1e-4, "AdamW weight decay", 0.0, 1.0)
    grad_clip: float = _f(1.0, "max gradient norm (0: no clipping)", 0.0, 1e6)
    num_inference_steps: int = _f(10, "sampler steps of a rollout", 1, 1000)
    guidance_scale: float = _f(1.0, "CFG scale of the rollouts (1: CFG-free)", 1.0, 100.0)
    rollout_sampler: str = field(
        default="default",
        metadata={
            "help": "default (the pipeline's own scheduler) | stochastic (flow models: Euler that re-noises each step's "
            "x0 prediction, for more varied rollouts; evaluation keeps the pipeline's scheduler)",
            "choices": ROLLOUT_SAMPLERS,
        },
    )
    timestep_min: float = _f(0.0, "lowest training noise level u in [0, 1]", 0.0, 1.0)
    timestep_max: float = _f(1.0, "highest training noise level u in [0, 1]", 0.0, 1.0)
    timesteps_per_sample: int = _f(1, "noise levels per sample per step (gradients accumulated)", 1, 100)
    lora_rank: int = _f(32, "LoRA rank", 1, 1024)
    lora_alpha: float = _f(64.0, "LoRA alpha (scale alpha / rank)", 1e-3, 1e5)
    lora_targets: str = field(default=",".join(DEFAULT_TARGETS), metadata={"help": "modules to adapt, comma-separated"})
    old_decay_rate: float = _f(0.001, "old policy: d = min(rate * step, max)", 0.0, 1.0)
    old_decay_max: float = _f(0.5, "old policy: the largest decay", 0.0, 1.0)
    old_decay_flat: int = _f(0, "old policy: copy current exactly for this many steps", 0, 1_000_000)
    eval_ema: bool = field(default=True, metadata={"help": "keep an evaluation EMA of the LoRA (OUT/lora_ema)"})
    eval_ema_max: float = _f(0.9, "evaluation EMA: the largest decay", 0.0, 1.0)
    checkpoint_every: int = _f(25, "steps between checkpoints", 1, 1_000_000)
    keep_min_reward: float = _f(
        -math.inf,
        "positive-only baselines: keep only samples whose reward is also at least "
        "this (RAFT-style absolute filter; -inf: off)",
        -math.inf,
        math.inf,
        infinite_ok=True,
    )
    seed: int = _f(0, "seed of prompts, rollouts, noise and LoRA init", 0, 2**62)
    gradient_accumulation_steps: int = _f(1, "micro-batches per step on each process", 1, 1024)
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16", "choices": PRECISIONS})
    height: int | None = field(default=None, metadata={"help": "image height (default: the model's)"})
    width: int | None = field(default=None, metadata={"help": "image width (default: the model's)"})
    max_sequence_length: int | None = field(default=None, metadata={"help": "T5 tokens (SD3 / Flux)"})
    output_dir: str | None = field(default=None, metadata={"help": "checkpoint, LoRA, curves"})
    pipeline_kwargs: dict = field(default_factory=dict, metadata={"help": "more rollout pipeline arguments"})
    objective: str = field(
        default="nft",
        metadata={
            "help": "nft | positive-only (baseline: the model's own training loss on the samples rewarded above their "
            "prompt's mean, r > 0.5) | positive-only-x0 (the same filter with NFT's adaptive x0 loss)",
            "choices": OBJECTIVES,
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        if (
            not isinstance(self.prompts, (list, tuple))
            or not self.prompts
            or not all(isinstance(p, str) and p.strip() for p in self.prompts)
        ):
            raise ValueError("prompts must be a non-empty list of non-empty strings (or use --prompts-file)")
        self.prompts = list(self.prompts)
        for f in fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            if "min" not in meta:
                continue
            kind = int if isinstance(f.default, int) else float
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (kind is int and not isinstance(value, int))
            ):
                raise ValueError(f"{f.name} = {value!r} must be {'an integer' if kind is int else 'a number'}")
            low_ok = value > meta["min"] if meta.get("low_open") else value >= meta["min"]
            finite = math.isfinite(value) or (meta.get("infinite_ok") and not math.isnan(value))
            if not (finite and low_ok and value <= meta["max"]):
                bracket = "(" if meta.get("low_open") else "["
                extra = (
                    " (G must be >= 2: DiffusionNFT compares samples of the same prompt)"
                    if f.name == "group_size"
                    else ""
                )
                raise ValueError(f"{f.name} = {value!r} is outside {bracket}{meta['min']}, {meta['max']}]{extra}")
        if self.timestep_min >= self.timestep_max:
            raise ValueError(f"timestep_min = {self.timestep_min} must be below timestep_max = {self.timestep_max}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective = {self.objective!r} is not one of {OBJECTIVES}")
        if self.rollout_sampler not in ROLLOUT_SAMPLERS:
            raise ValueError(f"rollout_sampler = {self.rollout_sampler!r} is not one of {ROLLOUT_SAMPLERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule = {self.lr_schedule!r} is not one of {LR_SCHEDULES}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision = {self.mixed_precision!r} is not one of {PRECISIONS}")
        if isinstance(self.lora_targets, (list, tuple)):
            self.lora_targets = ",".join(self.lora_targets)
        if not [t for t in str(self.lora_targets).split(",") if t.strip()]:
            raise ValueError("lora_targets is empty; e.g. to_q,to_k,to_v,to_out.0")
        for name in ("height", "width", "max_sequence_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} = {value!r} must be a positive integer or None")

    def learning_rate(self, step: int) -> float:
        """The learning rate of the update made at ``step`` (0-based): a pure function of the step, so a resumed
        run follows the same schedule."""
        if self.lr_schedule == "constant":
            return self.lr
        return cosine_learning_rate(self.lr, step, self.steps)

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size
