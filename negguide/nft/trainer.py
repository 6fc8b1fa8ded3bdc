"""The DiffusionNFT trainer: a LoRA fine-tuned online from a reward, on one process or many (accelerate).

    from negguide.nft import NFTConfig, NFTTrainer
    trainer = NFTTrainer(pipe, reward, NFTConfig(prompts=[...], group_size=8, output_dir="runs/nft"))
    history = trainer.train()         # resumes from runs/nft/checkpoint; writes runs/nft/lora (pipe.load_lora_weights)

A resumed run must have the checkpoint's settings, except ``checkpointing.RESUME_MAY_CHANGE``'s; pass
``allow_config_change=True`` to go on with others (the change is recorded in the checkpoint's config_log).

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
from dataclasses import dataclass

import torch

from negguide.core.accelerate_setup import make_accelerator
from negguide.core.call_checks import check_size, size_multiple
from negguide.core.training_io import check_writable, save_curve
from negguide.nft import checkpointing
from negguide.nft.advantages import group_stats, optimality_probability
from negguide.nft.config import NFTConfig
from negguide.nft.ema import ema_update_, eval_ema_decay, old_policy_decay
from negguide.nft.loss import (
    adaptive_x0_loss,
    kl_penalty,
    native_kl_scale,
    native_target,
    nft_loss,
    nft_loss_x0,
    per_sample_mean,
    positive_only_loss,
    x0_from_flow,
    x0_from_prediction,
)
from negguide.nft.policies import CURRENT, OLD, REFERENCE, NFTPolicies
from negguide.nft.rollout import (
    check_prediction_type,
    default_size,
    denoiser_inputs,
    denoiser_of,
    forward_noise,
    predict,
    resolve_pipeline,
    rollout,
    rollout_scheduler,
    sample_generators,
    seed_of,
)
from negguide.rewards.registry import check_prompts_for_reward

CHECKPOINT = "checkpoint"


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: training stopped and nothing was saved from that state."""


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
    "current" and "old" adapters in place: pass a pipeline the trainer may own. ``allow_config_change``: resume
    OUT/checkpoint even when its settings differ from ``config``."""

    def __init__(self, pipe, reward, config: NFTConfig, accelerator=None, accuracy=None, allow_config_change=False):
        if not isinstance(config, NFTConfig):
            raise TypeError(f"config must be an NFTConfig, got {type(config).__name__}")
        for name, fn in (("reward", reward), ("accuracy", accuracy)):
            if fn is not None and not callable(fn) or (name == "reward" and fn is None):
                raise ValueError(
                    f"{name} must be a callable (images [B,3,H,W] in [0,1], prompts) -> Tensor[B], "
                    f"got {type(fn).__name__}"
                )
        self.pipe, self.family = resolve_pipeline(pipe)
        self.prediction = check_prediction_type(self.family, self.pipe)
        self.reward, self.accuracy, self.config = reward, accuracy, config
        c = config
        self.accelerator = acc = accelerator or make_accelerator(mixed_precision=c.mixed_precision)
        if acc.gradient_accumulation_steps != 1:
            raise ValueError(
                "give gradient accumulation as NFTConfig.gradient_accumulation_steps, not to the Accelerator"
            )
        world = acc.num_processes * c.gradient_accumulation_steps
        if c.batch_size % world:
            raise ValueError(
                f"prompts_per_step x group_size = {c.batch_size} samples do not split into "
                f"{acc.num_processes} processes x {c.gradient_accumulation_steps} micro-batches: use a "
                f"multiple of {world}"
            )
        if c.output_dir is not None:
            check_writable(c.output_dir)
        side = default_size(self.pipe)
        self.height, self.width = c.height or side, c.width or side
        check_size(self.family, size_multiple(self.family, self.pipe), self.height, self.width)
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
        self.rollout_scheduler = rollout_scheduler(self.pipe, self.family, c.rollout_sampler)
        self.denoiser = denoiser_of(self.pipe, self.family)
        self.policies = NFTPolicies(self.denoiser, c.lora_rank, c.lora_alpha, c.lora_targets.split(","), seed=c.seed)
        optimizer = torch.optim.AdamW(self.policies.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.optimizer = acc.prepare(optimizer)
        self.ema = self.policies.state_dict(CURRENT) if c.eval_ema else None
        self.step, self.history, self.config_log = 0, [], []
        if c.output_dir:
            self.load_checkpoint(os.path.join(c.output_dir, CHECKPOINT), allow_config_change)

    # ------------------------------------------------------------------ checks
    def _score(self, fn, images, prompts) -> torch.Tensor:
        from negguide.rewards.combine import check_reward_output

        with torch.no_grad():
            value = fn(images, prompts)
        name = getattr(fn, "__name__", None) or type(fn).__name__
        return check_reward_output(value, len(prompts), name).detach().float()

    def _probe_reward(self) -> None:
        """Call the reward (and accuracy) once on two small images before any rollout: bad output fails here."""
        g = torch.Generator().manual_seed(0)
        images = torch.stack(
            [torch.full((3, self.height, self.width), 0.5), torch.rand(3, self.height, self.width, generator=g)]
        )  # [2, 3, H, W]
        images = images.to(self.accelerator.device)
        for fn, what in ((self.reward, "the reward"), (self.accuracy, "the accuracy")):
            if fn is not None:
                self._score(fn, images, [self.config.prompts[0]] * 2)
                check_prompts_for_reward(fn, self.config.prompts, what, device=self.accelerator.device)

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

    def _rollouts(self, step: int, prompts: list, chunks: list) -> tuple:
        """Rollouts and scores chunk by chunk; a reward error is returned (not raised) so every process stops together."""
        c, acc = self.config, self.accelerator
        outs, rewards, accuracy, error = [], [], [], None
        for chunk in chunks:
            generators = sample_generators(c.seed, step, chunk)
            if self.rollout_scheduler is not None:
                self.rollout_scheduler.generators = generators  # they go on from the initial noise, sample by sample
            out = rollout(
                self.pipe,
                self.family,
                [prompts[i] for i in chunk],
                generators,
                guidance_scale=c.guidance_scale,
                num_inference_steps=c.num_inference_steps,
                height=self.height,
                width=self.width,
                policies=self.policies,
                policy=OLD,
                pipeline_kwargs=self.pipeline_kwargs,
                autocast=acc.autocast(),
            )
            outs.append(out)
            try:
                rewards.append(self._score(self.reward, out.images, out.prompts))
                if self.accuracy is not None:
                    accuracy.append(self._score(self.accuracy, out.images, out.prompts))
            except (TypeError, ValueError) as failure:
                error = failure
                break
        return outs, rewards, accuracy, error

    def collect(self, step: int | None = None) -> Batch:
        """Rollouts of the old policy on this process's samples, rewards of all processes, r of this process's."""
        c, acc = self.config, self.accelerator
        step = self.step if step is None else step
        prompts = self.plan(step)
        share = len(prompts) // acc.num_processes
        mine = list(range(acc.process_index * share, (acc.process_index + 1) * share))
        size = share // c.gradient_accumulation_steps
        chunks = [mine[i : i + size] for i in range(0, share, size)]
        scheduler, self.pipe.scheduler = self.pipe.scheduler, self.rollout_scheduler or self.pipe.scheduler
        try:
            outs, rewards, accuracy, error = self._rollouts(step, prompts, chunks)
        finally:
            self.pipe.scheduler = scheduler
        if not self._everywhere(error is None):  # every process stops together, none waits in a gather
            raise error or ValueError(f"the reward failed on another process at step {step}")
        every = acc.gather(torch.cat(rewards).to(acc.device)).cpu()  # [B], global sample order
        r = optimality_probability(every, prompts)  # std over the whole step, groups by prompt
        if c.objective != "nft" and c.keep_min_reward > -math.inf:  # the baselines' absolute filter
            r = torch.where(every >= c.keep_min_reward, r, torch.zeros_like(r))
        micro = [(chunk, out.prompts, out.latents, r[chunk].to(acc.device)) for chunk, out in zip(chunks, outs)]
        hits = acc.gather(torch.cat(accuracy).to(acc.device)).cpu() if accuracy else None
        return Batch(micro, every, prompts, hits)

    def _noised(self, x0: torch.Tensor, step: int, indices: list, k: int):
        """forward_noise for samples ``indices`` of ``step`` at their k-th noise level (seeded per sample)."""
        c = self.config
        return forward_noise(
            self.pipe,
            self.family,
            self.prediction,
            x0,
            sample_generators(c.seed, step, indices, f"noise{k}"),
            c.timestep_min,
            c.timestep_max,
            return_noise=True,
        )

    def _positive_only_loss(self, x0, x_t, level, eps, p_theta, p_ref, r):
        """The baselines' loss: the model's own training loss ("positive-only") or NFT's adaptive x0 loss
        ("positive-only-x0") on the samples above their prompt's mean; the KL term in the prediction's own space."""
        p_theta, x0 = p_theta.float(), x0.float()
        kl = kl_penalty(p_theta, p_ref.float()) if p_ref is not None else None
        if self.config.objective == "positive-only":
            fit = per_sample_mean((p_theta - native_target(x0, eps.float(), level, self.prediction)) ** 2)
        elif self.prediction == "flow":
            fit = adaptive_x0_loss(x0_from_flow(p_theta, x_t.float(), level), x0)
        else:
            fit = adaptive_x0_loss(x0_from_prediction(p_theta, x_t.float(), level, self.prediction), x0)
        return positive_only_loss(fit, r, kl, kl_weight=self.config.kl_weight)

    def micro_loss(
        self,
        step: int,
        indices: list,
        prompts: list,
        x0: torch.Tensor,
        r: torch.Tensor,
        k: int = 0,
        inputs: dict | None = None,
    ):
        """The DiffusionNFT loss of one micro-batch at its k-th noise level (grad w.r.t. the current adapter).

        ``inputs``: the denoiser's conditioning for ``prompts`` (:func:`denoiser_inputs`; computed when None)."""
        c, acc = self.config, self.accelerator
        if inputs is None:
            inputs = denoiser_inputs(self.pipe, self.family, prompts, self.height, self.width, self.pipeline_kwargs)
        x_t, level, timestep, eps = self._noised(x0, step, indices, k)
        positive_only = c.objective != "nft"
        with acc.autocast():
            with torch.no_grad():
                p_old = None
                if not positive_only:  # the baselines never read the old policy (it still samples)
                    with self.policies.use(OLD):
                        p_old = predict(self.denoiser, self.family, inputs, x_t, timestep)
                p_ref = None
                if c.kl_weight > 0:
                    with self.policies.use(REFERENCE):
                        p_ref = predict(self.denoiser, self.family, inputs, x_t, timestep)
            p_theta = predict(self.denoiser, self.family, inputs, x_t, timestep)
        if positive_only:
            return self._positive_only_loss(x0, x_t, level, eps, p_theta, p_ref, r)
        if self.prediction == "flow":
            return nft_loss(x0, x_t, level, p_theta, p_old, p_ref, r, beta=c.beta, kl_weight=c.kl_weight)
        to_x0 = lambda p: None if p is None else x0_from_prediction(p, x_t, level, self.prediction)  # noqa: E731
        return nft_loss_x0(
            x0,
            to_x0(p_theta),
            to_x0(p_old),
            to_x0(p_ref),
            r,
            beta=c.beta,
            kl_weight=c.kl_weight,
            kl_scale=native_kl_scale(self.prediction, alpha_bar=level),
        )

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
            raise TrainingDiverged(
                f"{bad or f'a non-finite loss on another process at step {step}'}: training "
                "stopped before the update; lower lr, raise kl_weight or check the model"
            )
        params = self.policies.parameters()
        if acc.num_processes > 1:  # average the gradients over processes: one all-reduce of the flat vector
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
            flat = acc.reduce(flat, reduction="mean")
            offset = 0
            for p in params:
                p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
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
            raise TrainingDiverged(
                f"the gradient norm is {norm} at step {self.step}: training stopped before the "
                "update; lower lr or raise kl_weight (the last checkpoint is intact)"
            )
        for group in self.optimizer.param_groups:
            group["lr"] = c.learning_rate(self.step)
        self.optimizer.step()  # with fp16's scaler a non-finite step is skipped by the scaler
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        decay = old_policy_decay(self.step, c.old_decay_rate, c.old_decay_max, c.old_decay_flat)
        self.policies.update_old(decay)
        if self.ema is not None:
            ema_update_(self.ema, self.policies.tensors[CURRENT], eval_ema_decay(self.step, c.eval_ema_max))
        return {"grad_norm": norm, "old_decay": decay, "lr": c.learning_rate(self.step - 1)}

    def train_step(self) -> dict:
        """Rollouts, rewards, gradients, update; returns (and logs) the step's numbers."""
        step = self.step
        batch = self.collect(step)
        stats = self.backward(batch, step)
        stats.update(self.update())
        groups = group_stats(batch.rewards, batch.prompts)
        entry = {
            "step": step,
            "reward": float(batch.rewards.mean()),
            "reward_std": float(batch.rewards.std(correction=0)),
            "tied_fraction": float(groups["tied_fraction"]),
            **stats,
        }
        if batch.accuracy is not None:
            entry["accuracy"] = float(batch.accuracy.mean())
        self.history.append(entry)
        return entry

    # ------------------------------------------------------------------ the run
    def train(self, progress: bool = True, callback=None) -> list:
        """Train to ``config.steps`` (resuming where the checkpoint left off); returns the history. ``callback``:
        called as ``callback(trainer)`` on every process before the first step and after each step (an evaluation,
        e.g. experiments.nft_heldout.study.HeldoutMonitor); the checkpoint of a step is saved after its callback."""
        from tqdm.auto import tqdm

        c = self.config
        bar = tqdm(
            total=c.steps,
            initial=self.step,
            desc="DiffusionNFT",
            disable=not (progress and self.accelerator.is_main_process),
        )
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
        """Adapters, evaluation EMA, AdamW and RNG states, step, history and config; atomic, with checksums."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            checkpointing.save(self, folder)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, folder: str, allow_config_change: bool = False) -> bool:
        """Resume from ``folder`` (see :func:`negguide.nft.checkpointing.load`); False when there is none."""
        return checkpointing.load(self, folder, allow_config_change)
