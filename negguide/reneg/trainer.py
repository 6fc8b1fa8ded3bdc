"""The ReNeg trainer: learn a negative embedding from a reward, on one process or many (accelerate).

    from negguide.reneg import ReNegConfig, ReNegTrainer
    trainer = ReNegTrainer(pipe, reward, ReNegConfig(prompts=[...], steps=300, output_dir="runs/reneg"))
    embedding = trainer.train()            # resumes from runs/reneg/checkpoint when it exists

Every random choice of a step (its prompts, its late step, every sample's noise) is a function of (seed, step,
sample index), so a resumed run equals an uninterrupted one, and N processes with the same effective batch equal
one process: each takes every N-th sample and DDP averages the gradients. AdamW's learning rate follows a cosine
set from the step number, so the checkpoint holds only the embedding, the optimizer's moments and the history.
A resumed run must have the checkpoint's settings, except ``RESUME_MAY_CHANGE``'s; ``allow_config_change=True``
goes on with others (recorded in the checkpoint's config_log and the embedding's metadata).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import MISSING, asdict, fields

import torch
from torch import nn

from negguide.core.accelerate_setup import make_accelerator
from negguide.core.call_checks import check_size, size_multiple
from negguide.core.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from negguide.core.families import get_adapter
from negguide.core.training_io import check_writable, save_curve
from negguide.reneg.config import ReNegConfig
from negguide.reneg.embedding import NegativeEmbedding, null_embedding
from negguide.reneg.step import decode, default_size, guided_prediction, predict_x0, sample_to_step
from negguide.rewards.registry import check_prompts_for_reward

CHECKPOINT = "checkpoint"
#: the settings a resumed run may change: its length, the checkpoint interval, where it writes, and the memory
#: knobs that leave the run the same (micro-batches of the same batch, recomputed activations)
RESUME_MAY_CHANGE = ("steps", "checkpoint_every", "output_dir", "gradient_accumulation_steps", "gradient_checkpointing")


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
    """Learns a NegativeEmbedding for ``pipe`` (a PerpNegPipeline or any pipeline it can wrap) and ``reward``.
    ``allow_config_change``: resume OUT/checkpoint even when its settings differ from ``config``."""

    def __init__(
        self,
        pipe,
        reward,
        config: ReNegConfig,
        init: NegativeEmbedding | None = None,
        accelerator=None,
        allow_config_change: bool = False,
    ):
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
        family = self.pipe.family
        check_size(family, size_multiple(family, self.pipe.family_pipeline()), self.height, self.width)
        check_prompts_for_reward(reward, config.prompts, device=self.accelerator.device)
        sequence = config.pipeline_kwargs.get("max_sequence_length")
        self.init_given = init is not None  # a resumed run must start from the same embedding
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
        self.step, self.history, self.config_log = 0, [], []
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if config.output_dir:
            self.load_checkpoint(os.path.join(config.output_dir, CHECKPOINT), allow_config_change)

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
            **({"config_log": json.dumps(self.config_log)} if self.config_log else {}),
        }
        return NegativeEmbedding(
            self.pipe.family, {names[k]: v.detach().cpu().clone() for k, v in values.items()}, meta
        )

    # ------------------------------------------------------------------ checkpoints
    def run_config(self) -> dict:
        """The settings a checkpoint records and a resumed run must match (prompts and a given initial embedding as
        fingerprints)."""
        c = self.config
        return {
            **asdict(c),
            "prompts": f"{len(c.prompts)} prompts, {fingerprint(list(c.prompts))}",
            "init_embedding": fingerprint(self.base_metadata) if self.init_given else None,
        }

    def save_checkpoint(self, folder: str) -> None:
        """Embedding, AdamW and RNG states, step, history and config; atomic, with checksums
        (negguide.core.checkpoint)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            values = self.accelerator.unwrap_model(self.model).values
            tensors = {"embedding": {k: v.detach() for k, v in values.items()}}
            meta = {"history": self.history}
            save_checkpoint(folder, self.step, self.run_config(), tensors, self.optimizer, meta, self.config_log)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, folder: str, allow_config_change: bool = False) -> bool:
        """Resume from ``folder`` (or the ``.old`` a killed save left); False when there is no checkpoint. A damaged
        checkpoint, or one saved with other settings (outside ``RESUME_MAY_CHANGE``, unless
        ``allow_config_change``), raises a CheckpointError (a ValueError) naming what is wrong."""
        ckpt = load_checkpoint(
            folder,
            self.run_config(),
            RESUME_MAY_CHANGE,
            allow_config_change,
            "allow_config_change=True (negguide train-reneg: --resume-with-changed-config)",
            {f.name: f.default for f in fields(self.config) if f.default is not MISSING},
        )
        if ckpt is None:
            return False
        saved, values = ckpt.group("embedding"), self.accelerator.unwrap_model(self.model).values
        if {k: tuple(v.shape) for k, v in saved.items()} != {k: tuple(v.shape) for k, v in values.items()}:
            raise ValueError(
                f"the embedding in {ckpt.path!r} has tensors {sorted(saved)} of other shapes than this model's: "
                "it was trained for another model; train into another output folder"
            )
        with torch.no_grad():
            for arg, tensor in saved.items():
                values[arg].copy_(tensor)
        ckpt.load_optimizer(self.optimizer)
        ckpt.restore_rng()
        self.step, self.history, self.config_log = ckpt.step, ckpt.meta.get("history", []), ckpt.config_log
        return True


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
