"""NFTConfig: every setting of a DiffusionNFT run, validated on construction (the CLI's flags are built from it).
No torch, diffusers or peft here: ``negguide train-nft --help`` reads it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from negguide.core.settings import Settings, cosine_learning_rate, setting, validate

PRECISIONS = ("no", "fp16", "bf16")
OBJECTIVES = ("nft", "positive-only", "positive-only-x0")
LR_SCHEDULES = ("constant", "cosine")
ROLLOUT_SAMPLERS = ("default", "stochastic")
# the LoRA's default target modules; negguide.nft.policies.DEFAULT_TARGETS must equal it (tests/core/test_settings.py)
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class NFTConfig(Settings):
    """Training settings (the reference's: LoRA r 32 / alpha 64, AdamW lr 3e-4 wd 1e-4, clip 1, beta 1, kl 1e-4)."""

    prompts: list[str] = setting([], "training prompts")
    group_size: int = setting(
        4,
        "G: samples per prompt per step (compared with each other)",
        min=2,
        max=1024,
        hint="G must be >= 2: DiffusionNFT compares samples of the same prompt",
    )
    prompts_per_step: int = setting(4, "prompts per step (the step's batch is prompts x G)", min=1, max=4096)
    steps: int = setting(100, "optimizer steps (each: fresh rollouts and one update)", min=1, max=1_000_000)
    beta: float = setting(
        1.0, "beta in (0, 1]: strength of the implicit policies (0.1 for multi-reward)", min=0.0, max=1.0, low_open=True
    )
    kl_weight: float = setting(1e-4, "weight of the KL-to-reference term", min=0.0, max=100.0)
    lr: float = setting(3e-4, "AdamW learning rate", min=1e-8, max=1.0)
    lr_schedule: str = setting(
        "constant", "constant (the reference's) | cosine (from lr down to 0 at the last step)", choices=LR_SCHEDULES
    )
    weight_decay: float = setting(1e-4, "AdamW weight decay", min=0.0, max=1.0)
    grad_clip: float = setting(1.0, "max gradient norm (0: no clipping)", min=0.0, max=1e6)
    num_inference_steps: int = setting(10, "sampler steps of a rollout", min=1, max=1000)
    guidance_scale: float = setting(1.0, "CFG scale of the rollouts (1: CFG-free)", min=1.0, max=100.0)
    rollout_sampler: str = setting(
        "default",
        "default (the pipeline's own scheduler) | stochastic (flow models: Euler that re-noises each step's x0 "
        "prediction, for more varied rollouts; evaluation keeps the pipeline's scheduler)",
        choices=ROLLOUT_SAMPLERS,
    )
    timestep_min: float = setting(0.0, "lowest training noise level u in [0, 1]", min=0.0, max=1.0)
    timestep_max: float = setting(1.0, "highest training noise level u in [0, 1]", min=0.0, max=1.0)
    timesteps_per_sample: int = setting(1, "noise levels per sample per step (gradients accumulated)", min=1, max=100)
    lora_rank: int = setting(32, "LoRA rank", min=1, max=1024)
    lora_alpha: float = setting(64.0, "LoRA alpha (scale alpha / rank)", min=1e-3, max=1e5)
    lora_targets: str = setting(",".join(DEFAULT_TARGETS), "modules to adapt, comma-separated")
    old_decay_rate: float = setting(0.001, "old policy: d = min(rate * step, max)", min=0.0, max=1.0)
    old_decay_max: float = setting(0.5, "old policy: the largest decay", min=0.0, max=1.0)
    old_decay_flat: int = setting(0, "old policy: copy current exactly for this many steps", min=0, max=1_000_000)
    eval_ema: bool = setting(True, "keep an evaluation EMA of the LoRA (OUT/lora_ema)")
    eval_ema_max: float = setting(0.9, "evaluation EMA: the largest decay", min=0.0, max=1.0)
    checkpoint_every: int = setting(25, "steps between checkpoints", min=1, max=1_000_000)
    keep_min_reward: float = setting(
        -math.inf,
        "positive-only baselines: keep only samples whose reward is also at least "
        "this (RAFT-style absolute filter; -inf: off)",
        infinite_ok=True,
    )
    seed: int = setting(0, "seed of prompts, rollouts, noise and LoRA init", min=0, max=2**62)
    gradient_accumulation_steps: int = setting(1, "micro-batches per step on each process", min=1, max=1024)
    mixed_precision: str = setting("no", "no | fp16 | bf16", choices=PRECISIONS)
    height: int | None = setting(None, "image height (default: the model's)", min=8, max=4096)
    width: int | None = setting(None, "image width (default: the model's)", min=8, max=4096)
    max_sequence_length: int | None = setting(None, "T5 tokens (SD3 / Flux)", min=0, max=512)
    output_dir: str | None = setting(None, "checkpoint, LoRA, curves")
    pipeline_kwargs: dict = setting({}, "more rollout pipeline arguments")
    objective: str = setting(
        "nft",
        "nft | positive-only (baseline: the model's own training loss on the samples rewarded above their "
        "prompt's mean, r > 0.5) | positive-only-x0 (the same filter with NFT's adaptive x0 loss)",
        choices=OBJECTIVES,
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
        if isinstance(self.lora_targets, (list, tuple)):
            if not all(isinstance(t, str) for t in self.lora_targets):
                raise TypeError(f"lora_targets = {self.lora_targets!r} must be module names (strings), e.g. to_q,to_k")
            self.lora_targets = ",".join(self.lora_targets)
        validate(self)
        if self.timestep_min >= self.timestep_max:
            raise ValueError(f"timestep_min = {self.timestep_min} must be below timestep_max = {self.timestep_max}")
        if not [t for t in self.lora_targets.split(",") if t.strip()]:
            raise ValueError("lora_targets is empty; e.g. to_q,to_k,to_v,to_out.0")

    def learning_rate(self, step: int) -> float:
        """The learning rate of the update made at ``step`` (0-based): a pure function of the step, so a resumed
        run follows the same schedule."""
        if self.lr_schedule == "constant":
            return self.lr
        return cosine_learning_rate(self.lr, step, self.steps)

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size
