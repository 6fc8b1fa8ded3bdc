"""The ReNeg trainer: learn a negative embedding from a reward, on one process or many (accelerate).

    from negguide.reneg import ReNegConfig, ReNegTrainer
    trainer = ReNegTrainer(pipe, reward, ReNegConfig(prompts=[...], steps=300, output_dir="runs/reneg"))
    embedding = trainer.train()            # resumes from runs/reneg/checkpoint when it exists

Every random choice of a step (its prompts, its late step, every sample's noise) is a function of (seed, step,
sample index), so a resumed run equals an uninterrupted one, and N processes with the same effective batch equal
one process: each takes every N-th sample and DDP averages the gradients. AdamW's learning rate follows a cosine
set from the step number, so the checkpoint holds only the embedding, the optimizer's moments and the history.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from negguide.core.accelerate_setup import make_accelerator
from negguide.core.families import get_adapter
from negguide.core.training_io import check_writable, cosine_learning_rate, save_curve
from negguide.reneg.embedding import NegativeEmbedding, null_embedding
from negguide.reneg.step import decode, default_size, guided_prediction, predict_x0, sample_to_step

CHECKPOINT = "checkpoint"


@dataclass
class ReNegConfig:
    """Training settings (the paper's: lr 5e-3, cosine, batch 64, 4000 steps, guidance 7.5, last 10 of 30 steps)."""

    prompts: list = field(default_factory=list, metadata={"help": "training prompts"})
    steps: int = field(default=200, metadata={"help": "optimizer steps", "min": 1, "max": 100_000})
    batch_size: int = field(
        default=8, metadata={"help": "samples per step, all processes together", "min": 1, "max": 4096}
    )
    lr: float = field(default=5e-3, metadata={"help": "AdamW peak learning rate", "min": 1e-6, "max": 1.0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0.0, "max": 1.0})
    warmup_steps: int = field(
        default=0, metadata={"help": "linear warm-up before the cosine decay", "min": 0, "max": 10_000}
    )
    guidance_scale: float = field(default=5.0, metadata={"help": "CFG scale while training", "min": 1.0, "max": 30.0})
    num_inference_steps: int = field(default=20, metadata={"help": "sampling steps", "min": 2, "max": 200})
    late_steps: int = field(
        default=7, metadata={"help": "the gradient step is one of the last N", "min": 1, "max": 200}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "micro-batches per step", "min": 1, "max": 1024}
    )
    checkpoint_every: int = field(default=25, metadata={"help": "steps between checkpoints", "min": 1, "max": 100_000})
    seed: int = field(default=0, metadata={"help": "seed of prompts, steps and noise"})
    init_text: str = field(default="", metadata={"help": "initialise from this text's embedding (null text)"})
    height: int | None = field(default=None, metadata={"help": "image height (default: the model's)"})
    width: int | None = field(default=None, metadata={"help": "image width (default: the model's)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    output_dir: str | None = field(default=None, metadata={"help": "checkpoints, embedding, curve"})
    pipeline_kwargs: dict = field(default_factory=dict, metadata={"help": "more pipeline arguments"})

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        if not self.prompts or not all(isinstance(p, str) for p in self.prompts):
            raise ValueError("prompts must be a non-empty list of strings (or use --prompts-file)")
        for name in (
            "steps",
            "batch_size",
            "num_inference_steps",
            "late_steps",
            "gradient_accumulation_steps",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} = {value!r} must be a positive integer")
        if self.late_steps > self.num_inference_steps:
            raise ValueError(f"late_steps = {self.late_steps} exceeds num_inference_steps = {self.num_inference_steps}")
        for name, low, high in (("lr", 0.0, 1.0), ("weight_decay", 0.0, 1.0), ("guidance_scale", 1.0, 100.0)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not low <= value <= high
            ):
                raise ValueError(f"{name} = {value!r} must be a number in [{low}, {high}]")
        if self.lr <= 0:
            raise ValueError(f"lr = {self.lr} must be positive, e.g. 5e-3")

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 0 over the run."""
        return cosine_learning_rate(self.lr, step, self.steps, self.warmup_steps)


class EmbeddingParameters(nn.Module):
    """The trainable tensors (one row each), named as the pipeline arguments they feed."""

    def __init__(self, embedding: NegativeEmbedding):
        super().__init__()
        self.values = nn.ParameterDict(
            {arg: nn.Parameter(t.detach().clone().float()) for arg, t in embedding.negative_kwargs().items()}
        )

    def forward(self) -> dict:
        return dict(self.values.items())


def _seed(*parts: int) -> int:
    return random.Random(":".join(str(p) for p in parts)).randrange(2**63)


def describe_reward(reward) -> str:
    """The reward's class, with ``log_prob=True`` when it is a log-probability (an embedding's metadata)."""
    name = type(reward).__name__
    return f"{name}(log_prob=True)" if getattr(reward, "log_prob", False) is True else name


class ReNegTrainer:
    """Learns a NegativeEmbedding for ``pipe`` (a PerpNegPipeline or any pipeline it can wrap) and ``reward``."""

    def __init__(self, pipe, reward, config: ReNegConfig, init: NegativeEmbedding | None = None, accelerator=None):
        from negguide.perpneg.pipeline import PerpNegPipeline

        if not callable(reward):
            raise TypeError(f"reward must be a callable (images, prompts) -> Tensor[B], got {type(reward).__name__}")
        self.pipe = pipe if isinstance(pipe, PerpNegPipeline) else PerpNegPipeline.from_pipe(pipe)
        self.reward, self.config = reward, config
        self.accelerator = accelerator or make_accelerator(
            mixed_precision="no",  # ReNeg trains in float32
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        )
        world = self.accelerator.num_processes * config.gradient_accumulation_steps
        if config.batch_size % world:
            raise ValueError(
                f"batch_size = {config.batch_size} does not split into {self.accelerator.num_processes} "
                f"processes x {config.gradient_accumulation_steps} micro-batches: use a multiple of {world}"
            )
        if config.output_dir is not None:
            check_writable(config.output_dir)
        self.pipe.to(self.accelerator.device)
        self.pipe.set_progress_bar_config(disable=True)
        for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer"):
            module = getattr(self.pipe, name, None)
            if isinstance(module, nn.Module):
                module.requires_grad_(False)
        denoiser = getattr(self.pipe, get_adapter(self.pipe.family).denoiser_attr)
        if config.gradient_checkpointing and getattr(denoiser, "_supports_gradient_checkpointing", False):
            denoiser.enable_gradient_checkpointing()
        self.height, self.width = (
            (config.height, config.width) if config.height and config.width else default_size(self.pipe)
        )
        sequence = config.pipeline_kwargs.get("max_sequence_length")
        init = init or null_embedding(
            self.pipe,
            self.pipe.family,
            config.init_text,
            None if sequence is None else _sequence_tokens(self.pipe, sequence),
        )
        init.check_compatible(self.pipe)
        self.base_metadata = dict(init.metadata)
        self.model = EmbeddingParameters(init).to(self.accelerator.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step, self.history = 0, []
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if config.output_dir and os.path.isdir(os.path.join(config.output_dir, CHECKPOINT)):
            self.load_checkpoint(os.path.join(config.output_dir, CHECKPOINT))

    # ------------------------------------------------------------------ one step
    def plan(self, step: int) -> tuple:
        """(prompts of the whole step, the gradient step index) — pure functions of (seed, step)."""
        c = self.config
        rng = random.Random(_seed(c.seed, "plan", step))
        prompts = [c.prompts[rng.randrange(len(c.prompts))] for _ in range(c.batch_size)]
        late = rng.randrange(c.num_inference_steps - c.late_steps, c.num_inference_steps)
        return prompts, late

    def evaluate(self, step: int = 0) -> float:
        """Mean reward of the current embedding on step ``step``'s plan (same prompts, noise and late step), no update."""
        prompts, late = self.plan(step)
        return float(self.loss(step, list(range(len(prompts))), prompts, late, grad=False)[1].mean())

    @torch.no_grad()
    def final_reward(self, prompts: list, seed: int = 0) -> float:
        """Mean reward of complete samples (every sampling step, no gradient) of ``prompts`` with the current
        embedding; the noise is a function of (config seed, ``seed``, index), the same for every embedding."""
        c = self.config
        adapter = get_adapter(self.pipe.family)
        generators = [torch.Generator().manual_seed(_seed(c.seed, "final", seed, i)) for i in range(len(prompts))]
        embeds = {k: v.detach() for k, v in self.model().items()}
        images = self.pipe(
            list(prompts),
            generator=generators,
            output_type="pt",
            num_inference_steps=c.num_inference_steps,
            height=self.height,
            width=self.width,
            **{adapter.scale_argument: c.guidance_scale},
            **embeds,
            **c.pipeline_kwargs,
        ).images
        rewards = self.reward(images.float(), list(prompts))
        _check_reward(rewards, len(prompts), grad=False)
        return float(rewards.float().mean())

    def loss(self, step: int, indices: list, prompts: list, late: int, grad: bool = True) -> tuple:
        """-mean reward of samples ``indices`` of the step (and the rewards, detached)."""
        c = self.config
        adapter = get_adapter(self.pipe.family)
        generators = [torch.Generator().manual_seed(_seed(c.seed, "noise", step, i)) for i in indices]
        texts = [prompts[i] for i in indices]
        embeds = self.model()
        call = {
            "num_inference_steps": c.num_inference_steps,
            adapter.scale_argument: c.guidance_scale,
            "height": self.height,
            "width": self.width,
            **c.pipeline_kwargs,
        }
        arguments = sample_to_step(self.pipe, texts, embeds, late, generators, call)
        with torch.set_grad_enabled(grad):
            guided, x_t, timestep = guided_prediction(self.pipe, arguments, embeds, c.guidance_scale)
            images = decode(self.pipe, predict_x0(self.pipe, x_t, guided, timestep), self.height, self.width)
            rewards = self.reward(images, texts)
            _check_reward(rewards, len(texts), grad)
            return -rewards.mean(), rewards.detach()

    def train_step(self) -> float:
        c, acc = self.config, self.accelerator
        prompts, late = self.plan(self.step)
        mine = list(range(acc.process_index, c.batch_size, acc.num_processes))
        for group in self.optimizer.param_groups:
            group["lr"] = c.learning_rate(self.step)
        size = len(mine) // c.gradient_accumulation_steps
        rewards = []
        for m in range(c.gradient_accumulation_steps):
            with acc.accumulate(self.model):
                loss, values = self.loss(self.step, mine[m * size : (m + 1) * size], prompts, late)
                acc.backward(loss)
                self._check_gradients()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                rewards.append(values)
        mean = acc.gather(torch.cat(rewards).to(acc.device)).float().mean().item()
        self.history.append({"step": self.step, "reward": mean, "late_step": late, "lr": c.learning_rate(self.step)})
        self.step += 1
        return mean

    def _check_gradients(self) -> None:
        for name, param in self.accelerator.unwrap_model(self.model).values.items():
            if param.grad is None:
                raise ValueError(
                    "the reward gave no gradient to the embedding: it must be differentiable "
                    "w.r.t. the images (no .detach(), no numpy, no argmax)"
                )
            if not torch.isfinite(param.grad).all():
                raise ValueError(
                    f"the gradient of {name} is not finite at step {self.step}: lower lr or check the reward"
                )

    # ------------------------------------------------------------------ the run
    def train(self, progress: bool = True) -> NegativeEmbedding:
        from tqdm.auto import tqdm

        c = self.config
        bar = tqdm(
            total=c.steps, initial=self.step, desc="ReNeg", disable=not (progress and self.accelerator.is_main_process)
        )
        while self.step < c.steps:
            reward = self.train_step()
            bar.update(1)
            bar.set_postfix(reward=f"{reward:.3f}")
            if c.output_dir and (self.step % c.checkpoint_every == 0 or self.step == c.steps):
                self.save_checkpoint(os.path.join(c.output_dir, CHECKPOINT))
        bar.close()
        embedding = self.embedding()
        if c.output_dir and self.accelerator.is_main_process:
            embedding.save(os.path.join(c.output_dir, "negative_embedding.safetensors"))
            save_curve(self.history, "reward", os.path.join(c.output_dir, "reward_curve.png"), "ReNeg training")
        return embedding

    @torch.no_grad()
    def load_embedding(self, embedding: NegativeEmbedding) -> None:
        """Set the trained tensors to ``embedding``'s (checked against the pipeline; the optimizer is left as is)."""
        embedding.check_compatible(self.pipe)
        values = self.accelerator.unwrap_model(self.model).values
        for arg, tensor in embedding.negative_kwargs().items():
            if arg not in values or values[arg].shape != tensor.shape:
                raise ValueError(
                    f"{arg} of shape {tuple(tensor.shape)} does not match the trained "
                    f"{tuple(values[arg].shape) if arg in values else 'tensors'}"
                )
            values[arg].copy_(tensor.to(values[arg].device, values[arg].dtype))

    def embedding(self) -> NegativeEmbedding:
        values = self.accelerator.unwrap_model(self.model).values
        names = {"negative_prompt_embeds": "prompt_embeds", "negative_pooled_prompt_embeds": "pooled_prompt_embeds"}
        meta = {
            **self.base_metadata,
            "trained_by": "negguide ReNeg",
            "steps": self.step,
            "reward": describe_reward(self.reward),
            "base_model": getattr(self.pipe, "name_or_path", "") or "",
            "config": json.dumps({k: v for k, v in asdict(self.config).items() if k not in ("prompts", "output_dir")}),
            "prompts": str(len(self.config.prompts)),
        }
        return NegativeEmbedding(
            self.pipe.family, {names[k]: v.detach().cpu().clone() for k, v in values.items()}, meta
        )

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: str) -> None:
        """Embedding and AdamW moments as safetensors, step and history as JSON; written atomically."""
        from safetensors.torch import save_file

        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tmp = folder + ".tmp"
            os.makedirs(tmp, exist_ok=True)
            self.embedding().save(os.path.join(tmp, "embedding.safetensors"))
            state = self.optimizer.state_dict()
            tensors = {
                f"{pid}.{k}": v.detach().cpu().contiguous()
                for pid, s in state["state"].items()
                for k, v in s.items()
                if isinstance(v, torch.Tensor)
            }
            save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump({"step": self.step, "history": self.history, "param_groups": state["param_groups"]}, f)
            if os.path.isdir(folder):
                os.replace(folder, folder + ".old")
            os.replace(tmp, folder)
            if os.path.isdir(folder + ".old"):
                import shutil

                shutil.rmtree(folder + ".old")
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, folder: str) -> None:
        from safetensors.torch import load_file

        embedding = NegativeEmbedding.load(os.path.join(folder, "embedding.safetensors"))
        values = self.accelerator.unwrap_model(self.model).values
        with torch.no_grad():
            for arg, tensor in embedding.negative_kwargs().items():
                values[arg].copy_(tensor)
        with open(os.path.join(folder, "state.json")) as f:
            meta = json.load(f)
        tensors = load_file(os.path.join(folder, "optimizer.safetensors"))
        state = {"state": {}, "param_groups": meta["param_groups"]}
        for key, tensor in tensors.items():
            pid, name = key.split(".", 1)
            state["state"].setdefault(int(pid), {})[name] = tensor
        self.optimizer.load_state_dict(state)
        self.step, self.history = meta["step"], meta["history"]


def _check_reward(rewards, batch: int, grad: bool = True) -> None:
    if not isinstance(rewards, torch.Tensor) or rewards.shape != (batch,):
        shape = tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__
        raise ValueError(f"the reward returned {shape}; it must return a tensor of shape [{batch}] (one per image)")
    if grad and not rewards.requires_grad:
        raise ValueError("the reward returned no gradient: it must be differentiable w.r.t. the images")
    if not torch.isfinite(rewards).all():
        raise ValueError("the reward returned NaN or infinite values")


def _sequence_tokens(pipe, max_sequence_length: int) -> int:
    """The prompt_embeds length a pipeline call with this max_sequence_length produces (SD3: CLIP tokens + T5)."""
    if pipe.family == "sd3":
        return max_sequence_length + pipe.family_pipeline().tokenizer_max_length
    return max_sequence_length
