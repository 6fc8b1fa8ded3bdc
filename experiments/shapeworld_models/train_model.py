"""Train the bundled ShapeWorld SD3-style model from scratch (CPU or GPU), resumable, and export it.

    python -m experiments.shapeworld_models.train_model --out assets/shapeworld/sd3 --ckpt /tmp/shapeworld_run --max-minutes 90
    # the SD-format (UNet, epsilon prediction) model, sharing sd3/'s VAE and text encoder
    python -m experiments.shapeworld_models.train_model --family sd --out assets/shapeworld/sd --ckpt /tmp/shapeworld_sd

Stage 1 trains the tiny VAE until the judge reads its reconstructions back (or ``--vae-minutes`` run out) and
sets its scaling/shift factors from the latent statistics. Stage 2 trains the transformer and both CLIP text
encoders jointly with rectified flow (logit-normal times), an EMA, and captions that are empty 10% of the time
(for classifier-free guidance). The batch of step ``k`` is a pure function of (seed, stage, k), so a run that
is stopped and restarted from its checkpoint continues exactly. ``--export-only`` writes the EMA weights of the
latest checkpoint as a diffusers folder loadable with ``StableDiffusion3Pipeline.from_pretrained(out)``.

``--two-object-prob`` and ``--pair-caption-weights`` change the data mix from the current step on (recorded in
the checkpoint as a phase, so resuming keeps every step's batch): the bundled model's second phase trains on more
two-object scenes and more relation captions ("X to the left of Y"), which the first phase left at chance.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

import numpy as np
import torch
import torch.nn.functional as F

from experiments.shapeworld_models import checkpoint as ck
from experiments.shapeworld_models.components import ModelSizes, build_pipeline
from negguide.cli.flags import ranged
from negguide.shapeworld.judge import detect_objects
from negguide.shapeworld.world import CaptionProbs, render, sample_caption, sample_scene

STAGE_IDS = {"vae": 1, "dit": 2, "unet": 3}
STOP = False  # set by SIGTERM/SIGINT: the loops save a checkpoint and return


def _request_stop(signum, frame) -> None:
    global STOP
    STOP = True
    log(f"signal {signum}: saving a checkpoint and stopping")


#: number of all-zero "T5" tokens the pipeline appends (max_sequence_length): trained over a spread so that
#: both max_sequence_length=0 and the diffusers default 256 work
ZERO_TOKEN_CHOICES = (0, 1, 2, 4, 8, 16, 32, 64, 256)
ZERO_TOKEN_PROBS = (0.35, 0.06, 0.06, 0.06, 0.08, 0.08, 0.08, 0.08, 0.15)


#: the data mix a run starts with (sample_scene's and CaptionProbs' defaults)
DEFAULT_MIX = {"two_object_prob": 0.4, "pair": list(CaptionProbs().pair)}


def batch_for_step(seed: int, stage: str, step: int, batch: int, size: int, mix: dict | None = None):
    """The training batch of ``step``: (images ``[B,3,H,W]`` in [-1, 1], captions, scenes, numpy rng).
    ``mix`` ({"two_object_prob", "pair"}, default ``DEFAULT_MIX``) sets how often scenes hold two objects and
    the weights of the two-object caption kinds (and, left of, right of, partial)."""
    mix = mix or DEFAULT_MIX
    rng = np.random.default_rng([seed, STAGE_IDS[stage], step])
    scenes = [sample_scene(rng, two_object_prob=mix["two_object_prob"]) for _ in range(batch)]
    probs = CaptionProbs(pair=tuple(mix["pair"]))
    captions = [sample_caption(sc, rng, probs) for sc in scenes]
    pixels = np.stack([render(sc, size) for sc in scenes])  # [B, H, W, 3]
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # [B, 3, H, W]
    return images, captions, scenes, rng


def vae_readback(vae, seed: int, n: int = 256, size: int = 64) -> float:
    """Fraction of ``n`` fresh scenes whose VAE reconstruction the judge reads back exactly."""
    images, _, scenes, _ = batch_for_step(seed + 7919, "vae", 10**9, n, size)
    with torch.no_grad():
        rec = vae.decode(vae.encode(images.to(vae.device)).latent_dist.mode()).sample.cpu()  # [n, 3, H, W]
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    ok = 0
    for img, sc in zip(rec, scenes):
        objs = detect_objects(img)
        ok += len(objs) == len(sc.objects) and all(
            o.colour == s.colour and o.shape == s.shape for o, s in zip(objs, sc.objects)
        )
    return ok / n


def latent_stats(vae, seed: int, size: int, n: int = 512) -> tuple[float, float]:
    """(shift, scale) so that ``(z - shift) * scale`` has zero mean and unit variance over fresh scenes."""
    images, _, _, _ = batch_for_step(seed + 104729, "vae", 10**9, n, size)
    with torch.no_grad():
        z = vae.encode(images.to(vae.device)).latent_dist.mode()
    return float(z.mean()), float(1.0 / z.std())


def ema_update(ema: dict[str, torch.Tensor], modules: dict, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * weights`` over every float tensor of ``modules``' state dicts."""
    with torch.no_grad():
        for key, v in ck.prefixed_state(modules).items():
            if key in ema and v.is_floating_point():
                ema[key].mul_(decay).add_(v.to(ema[key].device), alpha=1.0 - decay)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def train_vae(pipe, args, state, deadline, resumed=None) -> None:
    """Stage 1 (resumable from the checkpoint ``resumed``): L1 + MSE reconstruction and a tiny KL, until read-back
    >= 0.995 or the deadline."""
    vae = pipe.vae
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    if state["step"] > 0:
        resumed.load_optimizer(opt)
    vae_deadline = time.time() + max(0.0, args.vae_minutes * 60 - state.get("vae_elapsed", 0.0))
    t_last, t_ckpt = time.time(), time.time()
    while time.time() < min(deadline, vae_deadline) and not STOP:
        step = state["step"]
        images, _, _, _ = batch_for_step(args.seed, "vae", step, 32, args.size)
        images = images.to(args.device)
        post = vae.encode(images).latent_dist
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # CPU draws: same numbers on any device
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(args.device)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, images) + F.mse_loss(rec, images) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] += 1
        now = time.time()
        state["vae_elapsed"] = state.get("vae_elapsed", 0.0) + (now - t_last)
        t_last = now
        if state["step"] % 50 == 0:
            log(f"vae step {state['step']} loss {loss.item():.4f}")
        if state["step"] % 100 == 0 and state["step"] >= 200:
            acc = vae_readback(vae, args.seed)
            log(f"vae step {state['step']} read-back {acc:.3f}")
            if acc >= 0.99:
                break
        if now - t_ckpt > args.ckpt_minutes * 60:
            ck.save(args.ckpt, state, {"vae": vae}, {}, opt, args)
            t_ckpt = now
    if (STOP or time.time() >= deadline) and time.time() < vae_deadline:
        ck.save(args.ckpt, state, {"vae": vae}, {}, opt, args)
        return
    shift, scale = latent_stats(vae, args.seed, args.size)
    state["vae_readback"] = vae_readback(vae, args.seed, n=512)
    state.update(stage="dit", step=0, vae_shift=shift, vae_scale=scale)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    log(f"vae done: read-back {state['vae_readback']:.4f} shift {shift:.4f} scale {scale:.4f}")


def mix_for_step(state: dict, step: int) -> dict:
    """The data mix of ``step``: the last phase of ``state["data_mix"]`` that starts at or before it."""
    mix = DEFAULT_MIX
    for phase in state.get("data_mix", []):
        if phase["from_step"] <= step:
            mix = phase
    return mix


def set_data_mix(state: dict, two_object_prob: float | None, pair: list | None) -> None:
    """Start a new data-mix phase at the current step when the flags differ from the mix in force (a resumed
    run keeps its recorded phases, so every step's batch stays a function of the state)."""
    start = state["step"] if state["stage"] == "dit" else 0  # the mix is a property of the model stage's steps
    current = mix_for_step(state, start)
    wanted = {
        "two_object_prob": current["two_object_prob"] if two_object_prob is None else two_object_prob,
        "pair": list(current["pair"]) if pair is None else list(pair),
    }
    if wanted["two_object_prob"] != current["two_object_prob"] or wanted["pair"] != list(current["pair"]):
        phases = [p for p in state.get("data_mix", []) if p["from_step"] < start]
        state["data_mix"] = phases + [{"from_step": start, **wanted}]
        log(f"data mix from step {start}: {wanted}")


def sample_zero_tokens(rng: np.random.Generator) -> int:
    p = np.asarray(ZERO_TOKEN_PROBS) / sum(ZERO_TOKEN_PROBS)
    return int(ZERO_TOKEN_CHOICES[int(rng.choice(len(p), p=p))])


def dit_modules(pipe) -> dict:
    return {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}


def train_dit(pipe, args, state, deadline, resumed=None) -> None:
    """Stage 2 (resumable from the checkpoint ``resumed``): rectified flow on VAE latents, transformer + text
    encoders, EMA."""
    mods = dit_modules(pipe)
    params = [p for m in mods.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = dict(resumed.group("ema")) if state["step"] > 0 else {}
    if state["step"] > 0:
        resumed.load_optimizer(opt)
    if not ema:
        ema = {k: v.clone().float() for k, v in ck.prefixed_state(mods).items()}
    ema = {k: v.to(args.device) for k, v in ema.items()}
    vae = pipe.vae.requires_grad_(False)
    shift, scale = state["vae_shift"], state["vae_scale"]
    t_ckpt, t_eval, t_win, losses = time.time(), time.time(), time.time(), []
    while time.time() < deadline and not STOP and not (args.max_steps and state["step"] >= args.max_steps):
        step = state["step"]
        images, captions, _, rng = batch_for_step(
            args.seed, "dit", step, args.batch, args.size, mix_for_step(state, step)
        )
        images = images.to(args.device)
        with torch.no_grad():
            z0 = (vae.encode(images).latent_dist.mode() - shift) * scale  # [B, 4, h, w]
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        t = torch.sigmoid(torch.randn(args.batch, generator=gen)).to(args.device)  # logit-normal times in (0, 1)
        noise = torch.randn(z0.shape, generator=gen).to(args.device)  # CPU draws: same numbers on any device
        zt = (1 - t.view(-1, 1, 1, 1)) * z0 + t.view(-1, 1, 1, 1) * noise
        emb, _, pooled, _ = pipe.encode_prompt(
            captions,
            None,
            None,
            device=args.device,
            do_classifier_free_guidance=False,
            max_sequence_length=sample_zero_tokens(rng),
        )
        pred = pipe.transformer(
            hidden_states=zt, timestep=t * 1000, encoder_hidden_states=emb, pooled_projections=pooled
        ).sample
        loss = F.mse_loss(pred, noise - z0)
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 200)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(ema, mods, min(args.ema, (1 + step) / (10 + step)))
        state["step"] += 1
        losses.append(loss.item())
        now = time.time()
        if state["step"] % 25 == 0:
            state["dit_elapsed"] = state.get("dit_elapsed", 0.0) + (now - t_win)
            log(
                f"dit step {state['step']} loss {np.mean(losses):.4f} {(now - t_win) / len(losses):.2f} s/step "
                f"elapsed {state['dit_elapsed'] / 60:.1f} min"
            )
            t_win, losses = now, []
        if now - t_ckpt > args.ckpt_minutes * 60:
            ck.save(args.ckpt, state, {"vae": vae, **mods}, ema, opt, args)
            t_ckpt = now
        if args.eval_minutes > 0 and now - t_eval > args.eval_minutes * 60:
            quick_eval(args, state)
            t_eval = time.time()
            t_win = t_eval
    ck.save(args.ckpt, state, {"vae": vae, **mods}, ema, opt, args)


def load_pipeline_from_checkpoint(run: str, use_ema: bool = True, resumed=None):
    """(A StableDiffusion3Pipeline holding the (EMA) weights of RUN's checkpoint, or of the checkpoint ``resumed``
    when given; its state)."""
    resumed = resumed or ck.load(run)
    if resumed is None:
        raise ValueError(f"no checkpoint in {run!r} ({ck.CHECKPOINT}/ is missing); train first")
    state = ck.state_of(resumed)
    pipe = build_pipeline(ModelSizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["sizes"].items()}))
    flat = dict(resumed.group("model"))
    if use_ema and "ema" in resumed.tensors:
        flat.update(resumed.group("ema"))
    mods = {"vae": pipe.vae, **dit_modules(pipe)}
    ck.load_prefixed({k: m for k, m in mods.items() if any(key.startswith(k + ".") for key in flat)}, flat)
    if "vae_shift" in state:
        pipe.vae.register_to_config(shift_factor=state["vae_shift"], scaling_factor=state["vae_scale"])
    return pipe, state


def quick_eval(args, state) -> None:
    """A cheap evaluation of the latest checkpoint's EMA weights, appended to ``{ckpt}/evals.jsonl``."""
    from negguide.shapeworld.evaluate import evaluate_model

    pipe, _ = load_pipeline_from_checkpoint(args.ckpt)
    rep = evaluate_model(pipe, n_per_prompt=4, seed=90_000, guidance_scale=5.0, steps=20, max_sequence_length=0)
    rep = {k: v for k, v in rep.items() if k != "per_prompt"} | {"step": state["step"]}
    with open(os.path.join(args.ckpt, "evals.jsonl"), "a") as f:
        f.write(json.dumps(rep) + "\n")
    log(f"eval {rep}")


def export(ckpt: str, out: str) -> None:
    """Save the checkpoint's EMA pipeline as a diffusers folder at ``out``."""
    pipe, state = load_pipeline_from_checkpoint(ckpt)
    pipe.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "shapeworld_training.json"), "w") as f:
        json.dump({k: v for k, v in state.items()}, f, indent=1)
    log(f"exported step {state['step']} to {out}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="assets/shapeworld/sd3", help="diffusers folder written at the end")
    p.add_argument("--ckpt", default="/tmp/shapeworld_run", help="checkpoint folder (resumed if present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=90.0, help="wall-clock budget of this invocation")
    p.add_argument("--vae-minutes", type=float, default=8.0)
    p.add_argument("--ckpt-minutes", type=float, default=4.0)
    p.add_argument("--eval-minutes", type=float, default=15.0, help="0 disables the periodic quick eval")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (batches and noise are drawn on the CPU: same run on either, up to float noise)",
    )
    p.add_argument("--export-only", action="store_true")
    p.add_argument("--max-steps", type=int, default=0, help="stop the model stage at this step (default 0: no limit)")
    p.add_argument(
        "--family",
        choices=("sd3", "sd"),
        default="sd3",
        help="sd3: the SD3-layout flow model (VAE, text encoders, transformer); sd: an SD-format UNet model "
        "(epsilon or v prediction) sharing --base's VAE and text encoder (default sd3)",
    )
    p.add_argument("--prediction", choices=("epsilon", "v_prediction"), default="epsilon", help="with --family sd")
    p.add_argument("--base", default="assets/shapeworld/sd3", help="with --family sd: the SD3-layout model folder")
    p.add_argument(
        "--resume-with-changed-config",
        action="store_true",
        help="resume --ckpt even when --seed, --batch, --lr, --ema, --size, --family, --prediction or --base differ "
        "from the run's (recorded in the checkpoint); refused without it",
    )
    p.add_argument(
        "--two-object-prob",
        type=ranged(float, 0.0, 1.0, "--two-object-prob"),
        default=None,
        help="share of two-object scenes from the current step on (default: keep the run's; starts at 0.4)",
    )
    p.add_argument(
        "--pair-caption-weights",
        type=_four_weights,
        default=None,
        metavar="AND,LEFT,RIGHT,PARTIAL",
        help="weights of the two-object caption kinds from the current step on, e.g. 0.25,0.3,0.3,0.15 "
        "(default: keep the run's; starts at 0.4,0.2,0.2,0.2)",
    )
    args = p.parse_args(argv)
    if args.family == "sd" and (args.two_object_prob is not None or args.pair_caption_weights is not None):
        p.error(
            "--two-object-prob / --pair-caption-weights set the SD3-layout model's data mix; --family sd trains "
            "on the default mix"
        )
    if args.family == "sd":
        from experiments.shapeworld_models.train_unet import export_sd, train_unet

        if args.export_only:
            return export_sd(args.ckpt, args.out, log)
        torch.set_num_threads(args.threads)
        signal.signal(signal.SIGTERM, _request_stop)
        signal.signal(signal.SIGINT, _request_stop)
        train_unet(args, batch_for_step, log, lambda: STOP)
        if not STOP:
            export_sd(args.ckpt, args.out, log)
        return
    if args.export_only:
        return export(args.ckpt, args.out)
    torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    deadline = time.time() + args.max_minutes * 60
    resumed = ck.load(args.ckpt, args)
    sizes = ModelSizes(image_size=args.size)
    if resumed is None:
        pipe = build_pipeline(sizes, seed=args.seed)
        state = {"stage": "vae", "step": 0, "seed": args.seed, "sizes": ck_sizes(sizes)}
    else:
        pipe, state = load_pipeline_from_checkpoint(args.ckpt, use_ema=False, resumed=resumed)
        resumed.restore_rng()
        log(f"resuming {state['stage']} at step {state['step']}")
    pipe.to(args.device)
    set_data_mix(state, args.two_object_prob, args.pair_caption_weights)
    if state["stage"] == "vae":
        train_vae(pipe, args, state, deadline, resumed)
        if state["stage"] == "vae":
            return
        ck.save(args.ckpt, state, {"vae": pipe.vae, **dit_modules(pipe)}, {}, None, args)
    if state["stage"] == "dit":
        train_dit(pipe, args, state, deadline, resumed)
        if not STOP:
            export(args.ckpt, args.out)


def _four_weights(text: str) -> list:
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        weights = []
    if len(weights) != 4 or min(weights) < 0 or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be 4 comma-separated non-negative weights, e.g. 0.4,0.2,0.2,0.2"
        )
    return weights


def ck_sizes(sizes: ModelSizes) -> dict:
    from dataclasses import asdict

    return asdict(sizes)


if __name__ == "__main__":
    main()
