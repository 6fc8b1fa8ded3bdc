"""One ReNeg step on any family (Li et al., arXiv 2412.19637, Sec. 3.2), built on the multi-branch core.

Sample without gradients from noise down to a late step with CFG whose unconditional branch is the embedding n,
take ONE denoiser step with gradients, e = e(x_t, n) + g (e(x_t, c) - e(x_t, n)), predict x0, decode it and
score it: the reward's gradient reaches n through that step only (ReFL-style).

The sampling is the family's own diffusers pipeline run through PerpNegPipeline (u and the prompt batched in one
forward); a pre-hook stops it at the chosen step and hands over the exact denoiser arguments of that step.
"""

from __future__ import annotations

import inspect

import torch

from negguide.core.families import get_adapter, get_nested, set_nested
from negguide.reneg.embedding import tensor_keys


class _Stop(Exception):
    def __init__(self, arguments: dict):
        self.arguments = arguments


def sample_to_step(pipe, prompts: list, embeds: dict, step: int, generators: list, call: dict) -> dict:
    """The denoiser's arguments at sampling step ``step`` (0-based) of a CFG run with ``embeds`` as u."""
    adapter = get_adapter(pipe.family)
    denoiser = getattr(pipe, adapter.denoiser_attr)
    signature = inspect.signature(denoiser.forward)
    calls = []

    def stop(module, args, kwargs):
        calls.append(1)
        if len(calls) - 1 == step:
            raise _Stop(dict(signature.bind_partial(*args, **kwargs).arguments))

    handle = denoiser.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        pipe(prompts, generator=generators, output_type="latent", **{k: v.detach() for k, v in embeds.items()}, **call)
    except _Stop as captured:
        return captured.arguments
    finally:
        handle.remove()
    raise RuntimeError(f"sampling ran {len(calls)} denoiser calls, fewer than step {step} + 1")


def guided_prediction(pipe, arguments: dict, embeds: dict, guidance_scale: float) -> tuple:
    """CFG prediction with gradients w.r.t. ``embeds`` (tensor name -> [1, ...]); returns (guided, x_t rows)."""
    adapter = get_adapter(pipe.family)
    denoiser = getattr(pipe, adapter.denoiser_attr)
    call = dict(arguments)
    latents = call[adapter.latent_key]
    rows = latents.shape[0] // 2  # the core stacks [u; prompt]
    for name, key in tensor_keys(pipe.family).items():
        conditioning = get_nested(call, key)
        u = embeds[_negative_name(name)].to(conditioning.dtype).expand(rows, *conditioning.shape[1:])
        set_nested(call, key, torch.cat([u, conditioning[rows:]]))
    call["return_dict"] = False
    out = denoiser(**call)[0]
    uncond, cond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond), latents[:rows], call.get("timestep")


def _negative_name(name: str) -> str:
    return {"prompt_embeds": "negative_prompt_embeds", "pooled_prompt_embeds": "negative_pooled_prompt_embeds"}[name]


def predict_x0(pipe, x_t: torch.Tensor, prediction: torch.Tensor, timestep) -> torch.Tensor:
    """x0 from the guided prediction: flow x0 = x_t - sigma v; VP eps/v from alphas_cumprod at t."""
    t = timestep.reshape(-1)[0] if isinstance(timestep, torch.Tensor) else torch.tensor(float(timestep))
    if pipe.family in ("sd3", "flux"):
        sigma = t if pipe.family == "flux" else t / 1000.0  # SD3 passes sigma * 1000, Flux sigma
        return x_t - sigma.to(x_t) * prediction
    scheduler = pipe.scheduler
    alpha = scheduler.alphas_cumprod.to(x_t.device)[t.long().clamp(0, len(scheduler.alphas_cumprod) - 1)].to(x_t)
    if scheduler.config.prediction_type == "v_prediction":
        return alpha.sqrt() * x_t - (1 - alpha).sqrt() * prediction
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"prediction_type {scheduler.config.prediction_type!r} is not supported by ReNeg yet")
    return (x_t - (1 - alpha).sqrt() * prediction) / alpha.sqrt()


def decode(pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Latents -> images [B, 3, H, W] in [0, 1], differentiable (the VAE is frozen, not detached)."""
    inner = pipe.family_pipeline()
    if pipe.family == "flux":
        latents = inner._unpack_latents(latents, height, width, inner.vae_scale_factor)
    vae = pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    images = vae.decode((latents / vae.config.scaling_factor + shift).to(vae.dtype), return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def default_size(pipe) -> tuple:
    inner = pipe.family_pipeline()
    if getattr(inner, "default_sample_size", None):
        side = inner.default_sample_size * inner.vae_scale_factor
    else:
        side = inner.unet.config.sample_size * inner.vae_scale_factor
    return side, side
