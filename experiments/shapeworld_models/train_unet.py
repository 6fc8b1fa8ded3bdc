"""Stage "unet" of ``experiments.shapeworld_models.train_model --family sd``: a ShapeWorld model in SD (UNet) format.

The SD-format model shares the bundled SD3-layout model's VAE, tokenizer and first CLIP text encoder (frozen) and
trains a small UNet2DConditionModel from scratch with epsilon (or v) prediction on DDPM's scaled-linear schedule,
captions empty 10% of the time (classifier-free guidance), an EMA. As in the SD3 stage, the batch of step ``k`` is a
pure function of (seed, k): a stopped run restarted from its checkpoint continues exactly.

    python -m experiments.shapeworld_models.train_model --family sd --out assets/shapeworld/sd --ckpt /tmp/shapeworld_sd
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from experiments.shapeworld_models import checkpoint as ck
from experiments.shapeworld_models.components import build_sd_pipeline

PREDICTIONS = ("epsilon", "v_prediction")


def encode_captions(pipe, captions: list, device) -> torch.Tensor:
    """The frozen CLIP hidden states [B, tokens, hidden] the SD pipeline conditions on."""
    ids = pipe.tokenizer(
        captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def diffusion_target(scheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses: the noise (epsilon) or v = sqrt(ab) eps - sqrt(1 - ab) z0."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    return scheduler.get_velocity(z0, noise, t)


def new_pipeline(args):
    """A fresh (seeded) SD-format ShapeWorld pipeline built around the bundled SD3 model's VAE and text encoder."""
    if args.prediction not in PREDICTIONS:
        raise ValueError(f"--prediction {args.prediction!r} is not one of {PREDICTIONS}")
    if not os.path.isdir(args.base):
        raise ValueError(
            f"--base {args.base!r} is not a folder: the SD3-layout model whose VAE and text encoder "
            "the SD model shares (default assets/shapeworld/sd3)"
        )
    return build_sd_pipeline(args.base, args.prediction, seed=args.seed)


def load_sd_checkpoint(run: str, use_ema: bool = True, resumed=None):
    """The SD pipeline (EMA UNet by default) of RUN's checkpoint, or of the checkpoint ``resumed``; and its state."""
    from argparse import Namespace

    resumed = resumed or ck.load(run)
    state = None if resumed is None else ck.state_of(resumed)
    if state is None or state.get("stage") != "unet":
        raise ValueError(f"no SD-format checkpoint in {run!r}; train with --family sd first")
    pipe = new_pipeline(Namespace(base=state["base"], prediction=state["prediction"], seed=state["seed"]))
    flat = dict(resumed.group("model"))
    if use_ema and "ema" in resumed.tensors:
        flat.update(resumed.group("ema"))
    ck.load_prefixed({"unet": pipe.unet}, flat)
    return pipe, state


def train_unet(args, batch_for_step, log, should_stop) -> dict:
    """Train (or resume) to the deadline; returns the final state. ``batch_for_step(seed, stage, step, batch, size)``
    gives the images and captions; ``should_stop()`` is True after SIGTERM/SIGINT."""
    from experiments.shapeworld_models.train_model import ema_update

    resumed = ck.load(args.ckpt, args)
    if resumed is None:
        pipe = new_pipeline(args)
        state = {
            "stage": "unet",
            "step": 0,
            "seed": args.seed,
            "base": os.path.abspath(args.base),
            "prediction": args.prediction,
            "unet_elapsed": 0.0,
        }
    else:
        pipe, state = load_sd_checkpoint(args.ckpt, use_ema=False, resumed=resumed)
        resumed.restore_rng()
        log(f"resuming unet at step {state['step']}")
    pipe.to(args.device)
    unet, vae, scheduler = pipe.unet, pipe.vae.requires_grad_(False), pipe.scheduler
    pipe.text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = dict(resumed.group("ema")) if state["step"] > 0 else {}
    if state["step"] > 0:
        resumed.load_optimizer(opt)
    if not ema:
        ema = {k: v.detach().clone().float() for k, v in ck.prefixed_state({"unet": unet}).items()}
    ema = {k: v.to(args.device) for k, v in ema.items()}
    scale = vae.config.scaling_factor
    deadline = time.time() + args.max_minutes * 60
    t_ckpt, t_win, losses = time.time(), time.time(), []
    while time.time() < deadline and not should_stop() and not (args.max_steps and state["step"] >= args.max_steps):
        step = state["step"]
        images, captions, _, _ = batch_for_step(args.seed, "unet", step, args.batch, args.size)
        with torch.no_grad():
            z0 = vae.encode(images.to(args.device)).latent_dist.mode() * scale  # [B, 4, h, w]
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=gen).to(args.device)
        noise = torch.randn(z0.shape, generator=gen).to(args.device)  # CPU draws: the same run on any device
        zt = scheduler.add_noise(z0, noise, t)
        pred = unet(zt, t, encoder_hidden_states=encode_captions(pipe, captions, args.device)).sample
        loss = F.mse_loss(pred, diffusion_target(scheduler, z0, noise, t))
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 200)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema_update(ema, {"unet": unet}, min(args.ema, (1 + step) / (10 + step)))
        state["step"] += 1
        losses.append(loss.item())
        now = time.time()
        if state["step"] % 50 == 0:
            state["unet_elapsed"] += now - t_win
            log(
                f"unet step {state['step']} loss {np.mean(losses):.4f} {(now - t_win) / len(losses):.2f} s/step "
                f"elapsed {state['unet_elapsed'] / 60:.1f} min"
            )
            t_win, losses = now, []
        if now - t_ckpt > args.ckpt_minutes * 60:
            ck.save(args.ckpt, state, {"unet": unet}, ema, opt, args)
            t_ckpt = now
    ck.save(args.ckpt, state, {"unet": unet}, ema, opt, args)
    return state


def export_sd(ckpt: str, out: str, log=print) -> None:
    """Save the checkpoint's EMA SD pipeline as a diffusers folder (StableDiffusionPipeline.from_pretrained)."""
    pipe, state = load_sd_checkpoint(ckpt)
    pipe.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "shapeworld_training.json"), "w") as f:
        json.dump({**state, "base": os.path.relpath(state["base"], os.path.abspath(out))}, f, indent=1)
    log(f"exported SD-format step {state['step']} to {out}")
