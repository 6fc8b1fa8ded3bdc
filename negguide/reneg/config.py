"""ReNegConfig: every setting of a ReNeg run, validated on construction (the CLI's flags are built from it).
No torch here: ``negguide train-reneg --help`` reads it."""

from __future__ import annotations

from dataclasses import dataclass

from negguide.core.settings import Settings, cosine_learning_rate, setting, validate

SELECTIONS = ("final", "step")  # what per-sample early stopping scores: complete samples, or the one-step objective


@dataclass
class ReNegConfig(Settings):
    """Training settings (the paper's: lr 5e-3, cosine, batch 64, 4000 steps, guidance 7.5, last 10 of 30 steps)."""

    prompts: list[str] = setting([], "training prompts")
    steps: int = setting(200, "optimizer steps", min=1, max=100_000)
    batch_size: int = setting(8, "samples per step, all processes together", min=1, max=4096)
    lr: float = setting(5e-3, "AdamW peak learning rate", min=0.0, max=1.0, low_open=True, hint="e.g. 5e-3")
    weight_decay: float = setting(0.0, "AdamW weight decay", min=0.0, max=1.0)
    warmup_steps: int = setting(0, "linear warm-up before the cosine decay", min=0, max=10_000)
    guidance_scale: float = setting(5.0, "CFG scale while training", min=1.0, max=100.0)
    num_inference_steps: int = setting(20, "sampling steps", min=2, max=200)
    late_steps: int = setting(7, "the gradient step is one of the last N", min=1, max=200)
    gradient_accumulation_steps: int = setting(1, "micro-batches per step", min=1, max=1024)
    checkpoint_every: int = setting(25, "steps between checkpoints", min=1, max=100_000)
    seed: int = setting(0, "seed of prompts, steps and noise")
    init_text: str = setting("", "initialise from this text's embedding (null text)")
    height: int | None = setting(None, "image height (default: the model's)", min=8, max=4096)
    width: int | None = setting(None, "image width (default: the model's)", min=8, max=4096)
    gradient_checkpointing: bool = setting(False, "recompute activations in backward")
    output_dir: str | None = setting(None, "checkpoints, embedding, curve")
    pipeline_kwargs: dict = setting({}, "more pipeline arguments")

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        if not isinstance(self.prompts, (list, tuple)) or not self.prompts:
            raise ValueError("prompts must be a non-empty list of strings (or use --prompts-file)")
        validate(self)
        if self.late_steps > self.num_inference_steps:
            raise ValueError(f"late_steps = {self.late_steps} exceeds num_inference_steps = {self.num_inference_steps}")

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 0 over the run."""
        return cosine_learning_rate(self.lr, step, self.steps, self.warmup_steps)
