"""The DiffusionNFT trainer: a LoRA fine-tuned online from a reward, on one process or many (accelerate).

    from negguide.nft import NFTConfig, NFTTrainer
    trainer = NFTTrainer(pipe, reward, NFTConfig(prompts=[...], group_size=8, output_dir="runs/nft"))
    history = trainer.train()         # resumes from runs/nft/checkpoint; writes runs/nft/lora (pipe.load_lora_weights)

One step (Zheng et al., arXiv 2509.16117, Alg. 1): the old policy samples G images per prompt (CFG-free by
default, any scheduler) -> rewards -> r = optimality_probability per prompt group, std over the whole step's
rewards gathered from every process -> forward process x_t = (1 - s) x0 + s eps (flow; SD3, Flux) or
sqrt(ab) x0 + sqrt(1 - ab) eps (epsilon / v prediction; SD, SDXL) -> current (grad), old and reference predictions ->
nft_loss / nft_loss_x0 -> AdamW -> old <- EMA(current). Noise levels: u ~ U[timestep_min, timestep_max] per sample,
flow s = u through the scheduler's static shift, discrete t = floor(u T).

Every random choice (the step's prompts, each sample's rollout noise, noise level and eps) is a function of
(seed, step, sample index): a resumed run equals an uninterrupted one, and N processes equal one process with the
same effective batch (each takes a contiguous share of the samples; gradients are averaged).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass, field, fields

import torch

from ..core.accelerate_setup import make_accelerator
from ..core.training_io import check_writable, save_curve
from .advantages import group_stats, optimality_probability
from .ema import ema_update_, eval_ema_decay, old_policy_decay
from .loss import (kl_penalty, native_kl_scale, nft_loss, nft_loss_x0, positive_only_loss, x0_from_flow,
                   x0_from_prediction)
from .policies import (CURRENT, DEFAULT_TARGETS, OLD, REFERENCE, NFTPolicies, load_training_state,
                       save_training_state)
from .rollout import (check_prediction_type, default_size, denoiser_inputs, denoiser_of, forward_noise, predict,
                      resolve_pipeline, rollout, sample_generators, seed_of)

CHECKPOINT = "checkpoint"
PRECISIONS = ("no", "fp16", "bf16")
OBJECTIVES = ("nft", "positive-only")


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: training stopped and nothing was saved from that state."""


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
    beta: float = _f(1.0, "beta in (0, 1]: strength of the implicit policies (0.1 for multi-reward)", 0.0, 1.0,
                     low_open=True)
    kl_weight: float = _f(1e-4, "weight of the KL-to-reference term", 0.0, 100.0)
    lr: float = _f(3e-4, "AdamW learning rate", 1e-8, 1.0)
    weight_decay: float = _f(1e-4, "AdamW weight decay", 0.0, 1.0)
    grad_clip: float = _f(1.0, "max gradient norm (0: no clipping)", 0.0, 1e6)
    num_inference_steps: int = _f(10, "sampler steps of a rollout", 1, 1000)
    guidance_scale: float = _f(1.0, "CFG scale of the rollouts (1: CFG-free)", 1.0, 100.0)
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
    seed: int = _f(0, "seed of prompts, rollouts, noise and LoRA init", 0, 2**62)
    gradient_accumulation_steps: int = _f(1, "micro-batches per step on each process", 1, 1024)
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16", "choices": PRECISIONS})
    height: int | None = field(default=None, metadata={"help": "image height (default: the model's)"})
    width: int | None = field(default=None, metadata={"help": "image width (default: the model's)"})
    max_sequence_length: int | None = field(default=None, metadata={"help": "T5 tokens (SD3 / Flux)"})
    output_dir: str | None = field(default=None, metadata={"help": "checkpoint, LoRA, curves"})
    pipeline_kwargs: dict = field(default_factory=dict, metadata={"help": "more rollout pipeline arguments"})
    objective: str = field(default="nft", metadata={"help": "nft | positive-only (baseline: x0 regression on the "
                                                     "samples rewarded above their prompt's mean, r > 0.5)",
                                                     "choices": OBJECTIVES})

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        if not isinstance(self.prompts, (list, tuple)) or not self.prompts or not all(
                isinstance(p, str) and p.strip() for p in self.prompts):
            raise ValueError("prompts must be a non-empty list of non-empty strings (or use --prompts-file)")
        self.prompts = list(self.prompts)
        for f in fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            if "min" not in meta:
                continue
            kind = int if isinstance(f.default, int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
                raise ValueError(f"{f.name} = {value!r} must be {'an integer' if kind is int else 'a number'}")
            low_ok = value > meta["min"] if meta.get("low_open") else value >= meta["min"]
            if not (math.isfinite(value) and low_ok and value <= meta["max"]):
                bracket = "(" if meta.get("low_open") else "["
                extra = " (G must be >= 2: DiffusionNFT compares samples of the same prompt)" if f.name == "group_size" else ""
                raise ValueError(f"{f.name} = {value!r} is outside {bracket}{meta['min']}, {meta['max']}]{extra}")
        if self.timestep_min >= self.timestep_max:
            raise ValueError(f"timestep_min = {self.timestep_min} must be below timestep_max = {self.timestep_max}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective = {self.objective!r} is not one of {OBJECTIVES}")
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

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size


@dataclass
class Batch:
    """One step's rollouts on this process, split into micro-batches of (indices, prompts, x0 [b, ...], r [b])."""

    micro: list
    rewards: torch.Tensor  # [B], every process
    prompts: list  # [B]
    accuracy: torch.Tensor | None = None


class NFTTrainer:
    """Fine-tunes a LoRA of ``pipe`` (SD1.x/2.x, SDXL, SD3, Flux; a diffusers pipeline or a PerpNegPipeline) with
    DiffusionNFT on ``reward(images [B, 3, H, W] in [0, 1], prompts) -> Tensor[B]``. ``accuracy``: an optional
    callable of the same signature (values in [0, 1]) logged and plotted per step. The pipeline's denoiser gets the
    "current" and "old" adapters in place: pass a pipeline the trainer may own."""

    def __init__(self, pipe, reward, config: NFTConfig, accelerator=None, accuracy=None):
        if not isinstance(config, NFTConfig):
            raise TypeError(f"config must be an NFTConfig, got {type(config).__name__}")
        for name, fn in (("reward", reward), ("accuracy", accuracy)):
            if fn is not None and not callable(fn) or (name == "reward" and fn is None):
                raise ValueError(f"{name} must be a callable (images [B,3,H,W] in [0,1], prompts) -> Tensor[B], "
                                 f"got {type(fn).__name__}")
        self.pipe, self.family = resolve_pipeline(pipe)
        self.prediction = check_prediction_type(self.family, self.pipe)
        self.reward, self.accuracy, self.config = reward, accuracy, config
        c = config
        self.accelerator = acc = accelerator or make_accelerator(mixed_precision=c.mixed_precision)
        if acc.gradient_accumulation_steps != 1:
            raise ValueError("give gradient accumulation as NFTConfig.gradient_accumulation_steps, not to the Accelerator")
        world = acc.num_processes * c.gradient_accumulation_steps
        if c.batch_size % world:
            raise ValueError(f"prompts_per_step x group_size = {c.batch_size} samples do not split into "
                             f"{acc.num_processes} processes x {c.gradient_accumulation_steps} micro-batches: use a "
                             f"multiple of {world}")
        if c.output_dir is not None:
            check_writable(c.output_dir)
        side = default_size(self.pipe)
        self.height, self.width = c.height or side, c.width or side
        self.pipeline_kwargs = dict(c.pipeline_kwargs)
        if c.max_sequence_length is not None and self.family in ("sd3", "flux"):
            self.pipeline_kwargs["max_sequence_length"] = c.max_sequence_length
        for fn in (reward, accuracy):
            if isinstance(fn, torch.nn.Module):
                fn.to(acc.device)
        self._probe_reward()
        self.pipe.to(acc.device)
        self.pipe.set_progress_bar_config(disable=True)
        for module in self.pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
        self.denoiser = denoiser_of(self.pipe, self.family)
        self.policies = NFTPolicies(self.denoiser, c.lora_rank, c.lora_alpha, c.lora_targets.split(","), seed=c.seed)
        optimizer = torch.optim.AdamW(self.policies.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.optimizer = acc.prepare(optimizer)
        self.ema = self.policies.state_dict(CURRENT) if c.eval_ema else None
        self.step, self.history = 0, []
        for name in (CHECKPOINT, CHECKPOINT + ".old"):  # .old: a save interrupted between its two renames
            if c.output_dir and os.path.isfile(os.path.join(c.output_dir, name, "state.json")):
                self.load_checkpoint(os.path.join(c.output_dir, name))
                break

    # ------------------------------------------------------------------ checks
    def _score(self, fn, images, prompts) -> torch.Tensor:
        from ..rewards.combine import check_reward_output

        with torch.no_grad():
            value = fn(images, prompts)
        name = getattr(fn, "__name__", None) or type(fn).__name__
        return check_reward_output(value, len(prompts), name).detach().float()

    def _probe_reward(self) -> None:
        """Call the reward (and accuracy) once on two small images before any rollout: bad output fails here."""
        g = torch.Generator().manual_seed(0)
        images = torch.stack([torch.full((3, self.height, self.width), 0.5),
                              torch.rand(3, self.height, self.width, generator=g)])  # [2, 3, H, W]
        images = images.to(self.accelerator.device)
        for fn in (self.reward, self.accuracy):
            if fn is not None:
                self._score(fn, images, [self.config.prompts[0]] * 2)

    # ------------------------------------------------------------------ one step
    def plan(self, step: int) -> list:
        """The step's prompts, prompt-major (each prompt G times): a pure function of (seed, step)."""
        c = self.config
        rng = random.Random(seed_of(c.seed, "plan", step))
        if c.prompts_per_step <= len(c.prompts):
            chosen = rng.sample(c.prompts, c.prompts_per_step)
        else:
            chosen = [c.prompts[rng.randrange(len(c.prompts))] for _ in range(c.prompts_per_step)]
        return [p for p in chosen for _ in range(c.group_size)]

    def collect(self, step: int | None = None) -> Batch:
        """Rollouts of the old policy on this process's samples, rewards of all processes, r of this process's."""
        c, acc = self.config, self.accelerator
        step = self.step if step is None else step
        prompts = self.plan(step)
        share = len(prompts) // acc.num_processes
        mine = list(range(acc.process_index * share, (acc.process_index + 1) * share))
        size = share // c.gradient_accumulation_steps
        chunks = [mine[i:i + size] for i in range(0, share, size)]
        outs, rewards, accuracy, error = [], [], [], None
        for chunk in chunks:
            out = rollout(self.pipe, self.family, [prompts[i] for i in chunk], sample_generators(c.seed, step, chunk),
                          guidance_scale=c.guidance_scale, num_inference_steps=c.num_inference_steps,
                          height=self.height, width=self.width, policies=self.policies, policy=OLD,
                          pipeline_kwargs=self.pipeline_kwargs, autocast=acc.autocast())
            outs.append(out)
            try:
                rewards.append(self._score(self.reward, out.images, out.prompts))
                if self.accuracy is not None:
                    accuracy.append(self._score(self.accuracy, out.images, out.prompts))
            except (TypeError, ValueError) as failure:
                error = failure
                break
        if not self._everywhere(error is None):  # every process stops together, none waits in a gather
            raise error or ValueError(f"the reward failed on another process at step {step}")
        every = acc.gather(torch.cat(rewards).to(acc.device)).cpu()  # [B], global sample order
        r = optimality_probability(every, prompts)  # std over the whole step, groups by prompt
        micro = [(chunk, out.prompts, out.latents, r[chunk].to(acc.device)) for chunk, out in zip(chunks, outs)]
        hits = acc.gather(torch.cat(accuracy).to(acc.device)).cpu() if accuracy else None
        return Batch(micro, every, prompts, hits)

    def _noised(self, x0: torch.Tensor, step: int, indices: list, k: int):
        """forward_noise for samples ``indices`` of ``step`` at their k-th noise level (seeded per sample)."""
        c = self.config
        return forward_noise(self.pipe, self.family, self.prediction, x0,
                             sample_generators(c.seed, step, indices, f"noise{k}"), c.timestep_min, c.timestep_max)

    def micro_loss(self, step: int, indices: list, prompts: list, x0: torch.Tensor, r: torch.Tensor, k: int = 0,
                   inputs: dict | None = None):
        """The DiffusionNFT loss of one micro-batch at its k-th noise level (grad w.r.t. the current adapter).

        ``inputs``: the denoiser's conditioning for ``prompts`` (:func:`denoiser_inputs`; computed when None)."""
        c, acc = self.config, self.accelerator
        if inputs is None:
            inputs = denoiser_inputs(self.pipe, self.family, prompts, self.height, self.width, self.pipeline_kwargs)
        x_t, level, timestep = self._noised(x0, step, indices, k)
        positive_only = c.objective == "positive-only"
        with acc.autocast():
            with torch.no_grad():
                p_old = None
                if not positive_only:  # the baseline's loss never reads the old policy (it still samples)
                    with self.policies.use(OLD):
                        p_old = predict(self.denoiser, self.family, inputs, x_t, timestep)
                p_ref = None
                if c.kl_weight > 0:
                    with self.policies.use(REFERENCE):
                        p_ref = predict(self.denoiser, self.family, inputs, x_t, timestep)
            p_theta = predict(self.denoiser, self.family, inputs, x_t, timestep)
        if positive_only:
            if self.prediction == "flow":
                x0_theta = x0_from_flow(p_theta.float(), x_t.float(), level)
                kl = kl_penalty(p_theta.float(), p_ref.float()) if p_ref is not None else None
            else:
                x0_theta = x0_from_prediction(p_theta.float(), x_t.float(), level, self.prediction)
                kl = None
                if p_ref is not None:
                    kl = kl_penalty(x0_theta, x0_from_prediction(p_ref.float(), x_t.float(), level, self.prediction))
                    kl = kl * native_kl_scale(self.prediction, alpha_bar=level).to(kl).reshape(-1)
            return positive_only_loss(x0, x0_theta, r, kl, kl_weight=c.kl_weight)
        if self.prediction == "flow":
            return nft_loss(x0, x_t, level, p_theta, p_old, p_ref, r, beta=c.beta, kl_weight=c.kl_weight)
        to_x0 = lambda p: None if p is None else x0_from_prediction(p, x_t, level, self.prediction)  # noqa: E731
        return nft_loss_x0(x0, to_x0(p_theta), to_x0(p_old), to_x0(p_ref), r, beta=c.beta, kl_weight=c.kl_weight,
                           kl_scale=native_kl_scale(self.prediction, alpha_bar=level))

    def backward(self, batch: Batch, step: int | None = None) -> dict:
        """Accumulate the gradients of the step's loss (mean over every sample and noise level of every process)."""
        c, acc = self.config, self.accelerator
        step = self.step if step is None else step
        parts = len(batch.micro) * c.timesteps_per_sample
        logs, bad = [], None
        for indices, prompts, x0, r in batch.micro:
            inputs = denoiser_inputs(self.pipe, self.family, prompts, self.height, self.width, self.pipeline_kwargs)
            for k in range(c.timesteps_per_sample):
                loss, stats = self.micro_loss(step, indices, prompts, x0, r, k, inputs)
                if not torch.isfinite(loss):
                    bad = f"the loss is {loss.item()} at step {step} (samples {indices[:4]}...)"
                    break
                acc.backward(loss / parts)
                logs.append(torch.stack([loss.detach(), *(stats[n] for n in ("policy", "kl", "old_deviation"))]))
            if bad:
                break
        if not self._everywhere(bad is None):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"{bad or f'a non-finite loss on another process at step {step}'}: training "
                                   "stopped before the update; lower lr, raise kl_weight or check the model")
        params = self.policies.parameters()
        if acc.num_processes > 1:  # average the gradients over processes: one all-reduce of the flat vector
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
            flat = acc.reduce(flat, reduction="mean")
            offset = 0
            for p in params:
                p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
                offset += p.numel()
        mean = torch.stack(logs).mean(0)
        mean = acc.reduce(mean.to(acc.device), reduction="mean") if acc.num_processes > 1 else mean
        return dict(zip(("loss", "policy", "kl", "old_deviation"), mean.tolist()))

    def _everywhere(self, ok: bool) -> bool:
        """True when ``ok`` holds on every process (one all-reduce; no communication on one process)."""
        if self.accelerator.num_processes == 1:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.accelerator.device)
        return float(self.accelerator.reduce(flag, reduction="sum")) == 0.0

    def update(self) -> dict:
        """Clip, check and apply the gradients (AdamW), then the old-policy and evaluation EMAs; step += 1."""
        c, acc = self.config, self.accelerator
        params = self.policies.parameters()
        norm = acc.clip_grad_norm_(params, c.grad_clip if c.grad_clip > 0 else float("inf"))
        norm = float(norm)
        if not math.isfinite(norm) and acc.scaler is None:
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"the gradient norm is {norm} at step {self.step}: training stopped before the "
                                   "update; lower lr or raise kl_weight (the last checkpoint is intact)")
        self.optimizer.step()  # with fp16's scaler a non-finite step is skipped by the scaler
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        decay = old_policy_decay(self.step, c.old_decay_rate, c.old_decay_max, c.old_decay_flat)
        self.policies.update_old(decay)
        if self.ema is not None:
            ema_update_(self.ema, self.policies.tensors[CURRENT], eval_ema_decay(self.step, c.eval_ema_max))
        return {"grad_norm": norm, "old_decay": decay}

    def train_step(self) -> dict:
        """Rollouts, rewards, gradients, update; returns (and logs) the step's numbers."""
        step = self.step
        batch = self.collect(step)
        stats = self.backward(batch, step)
        stats.update(self.update())
        groups = group_stats(batch.rewards, batch.prompts)
        entry = {"step": step, "reward": float(batch.rewards.mean()), "reward_std": float(batch.rewards.std(correction=0)),
                 "tied_fraction": float(groups["tied_fraction"]), **stats}
        if batch.accuracy is not None:
            entry["accuracy"] = float(batch.accuracy.mean())
        self.history.append(entry)
        return entry

    # ------------------------------------------------------------------ the run
    def train(self, progress: bool = True, callback=None) -> list:
        """Train to ``config.steps`` (resuming where the checkpoint left off); returns the history. ``callback``:
        called as ``callback(trainer)`` on every process before the first step and after each step (an evaluation,
        e.g. negguide.nft.shapeworld.HeldoutMonitor); the checkpoint of a step is saved after its callback."""
        from tqdm.auto import tqdm

        c = self.config
        bar = tqdm(total=c.steps, initial=self.step, desc="DiffusionNFT",
                   disable=not (progress and self.accelerator.is_main_process))
        if callback is not None:
            callback(self)
        while self.step < c.steps:
            entry = self.train_step()
            bar.update(1)
            bar.set_postfix(reward=f"{entry['reward']:.3f}", loss=f"{entry['loss']:.3g}")
            if callback is not None:
                callback(self)
            if c.output_dir and (self.step % c.checkpoint_every == 0 or self.step == c.steps):
                self.save_checkpoint(os.path.join(c.output_dir, CHECKPOINT))
        bar.close()
        if c.output_dir:
            self.save_outputs(c.output_dir)
        return self.history

    def save_outputs(self, folder: str) -> None:
        """OUT/lora (current), OUT/lora_ema (evaluation EMA), reward_curve.png (and accuracy_curve.png)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.policies.export(os.path.join(folder, "lora"), self.family)
            if self.ema is not None:
                self.policies.export(os.path.join(folder, "lora_ema"), self.family, self.ema)
            save_curve(self.history, "reward", os.path.join(folder, "reward_curve.png"), "DiffusionNFT")
            if any("accuracy" in h for h in self.history):
                save_curve(self.history, "accuracy", os.path.join(folder, "accuracy_curve.png"), "DiffusionNFT")
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: str) -> None:
        """Adapters, evaluation EMA and AdamW moments as safetensors, step/history/config as JSON; atomic."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            config = {k: v for k, v in asdict(self.config).items() if k != "prompts"}
            save_training_state(folder, self.policies, self.optimizer, self.ema,
                                {"step": self.step, "history": self.history, "family": self.family, "config": config})
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, folder: str) -> None:
        ema, meta = load_training_state(folder, self.policies, self.optimizer)
        if meta.get("family") != self.family:
            raise ValueError(f"the checkpoint in {folder!r} trained a {meta.get('family')} model, this is {self.family}")
        self.ema = ema if self.ema is not None and ema is not None else self.ema
        self.step, self.history = meta["step"], meta["history"]
