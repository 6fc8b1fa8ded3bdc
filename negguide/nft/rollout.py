"""DiffusionNFT rollouts: the family's own diffusers pipeline, its scheduler a black box, under the old policy.

    inner, family = resolve_pipeline(pipe)                      # a diffusers pipeline, or PerpNegPipeline.family_pipeline()
    gens = sample_generators(seed, step, indices)                # one generator per sample: (seed, step, index)
    out = rollout(inner, family, prompts, gens, num_inference_steps=10, policies=policies)   # CFG-free by default
    out.latents  # x0 [B, ...] as the denoiser sees it (Flux: packed)     out.images  # [B, 3, H, W] in [0, 1]

Every sample is one row of the pipeline call with its own generator, so a sample does not depend on which other
samples share its batch (N processes == 1 process). CFG > 1 goes through the pipeline's own batching: each row's
prompt (each prompt repeated G times) gets its own unconditional row, so the batch sizes always match.

``forward_noise`` draws the trainer's noisy x_t from clean x0 (flow or VP, one level per sample), and
``denoiser_inputs`` returns the keyword arguments the pipeline gives the denoiser for a batch of prompts (text
embeddings, pooled embeddings, SDXL time ids, Flux ids and guidance), captured before the first forward runs: the
trainer conditions its forward-process predictions exactly as the pipeline conditions sampling.
"""

from __future__ import annotations

import contextlib
import inspect
import random
from dataclasses import dataclass

import torch

from negguide.core.families import detect_family, get_adapter


def seed_of(*parts) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. (seed, "rollout", step, index))."""
    return random.Random(":".join(str(p) for p in parts)).randrange(2**63)


def sample_generators(seed: int, step: int, indices, purpose: str = "rollout") -> list:
    """One CPU generator per sample, seeded by (seed, purpose, step, global sample index)."""
    return [torch.Generator().manual_seed(seed_of(seed, purpose, step, int(i))) for i in indices]


def resolve_pipeline(pipe) -> tuple:
    """(the family's diffusers pipeline, family) for a diffusers pipeline or a PerpNegPipeline; ValueError otherwise."""
    if hasattr(pipe, "family_pipeline") and hasattr(pipe, "family"):
        return pipe.family_pipeline(), pipe.family
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict) or not callable(pipe):
        raise ValueError(
            f"DiffusionNFT trains a diffusers text-to-image pipeline, got {type(pipe).__name__}; load one "
            "with DiffusionPipeline.from_pretrained (SD1.x/2.x, SDXL, SD3 or Flux)"
        )
    family = detect_family(components)
    expected = get_adapter(family).pipeline_class
    if not any(cls.__name__ == expected for cls in type(pipe).__mro__):
        import diffusers

        pipe = getattr(diffusers, expected).from_pipe(pipe)  # shares the modules
    return pipe, family


def rollout_scheduler(pipe, family: str, sampler: str):
    """The scheduler rollouts use instead of the pipeline's own, or None to keep it. "stochastic" (flow models): the
    pipeline's Euler scheduler with ``stochastic_sampling``, which re-noises every step's x0 prediction; the noise
    comes from each sample's own generator (set ``.generators`` before a rollout), so a rollout stays a function of
    (seed, step, index)."""
    if sampler == "default":
        return None
    if sampler != "stochastic":
        raise ValueError(f"rollout_sampler = {sampler!r} is not one of ('default', 'stochastic')")
    from diffusers import FlowMatchEulerDiscreteScheduler

    if family not in ("sd3", "flux") or not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError(
            f"rollout_sampler = 'stochastic' needs a flow model with FlowMatchEulerDiscreteScheduler, got "
            f"{type(pipe.scheduler).__name__} on {family!r}; for SD / SDXL use a DDIM scheduler and "
            "pipeline_kwargs={'eta': 1.0}"
        )

    class SeededStochasticEuler(FlowMatchEulerDiscreteScheduler):
        generators = None  # one per row of the rollout; the pipelines do not pass theirs to step()

        def step(self, *args, generator=None, **kwargs):
            return super().step(*args, generator=generator or self.generators, **kwargs)

    return SeededStochasticEuler.from_config(pipe.scheduler.config, stochastic_sampling=True)


def denoiser_of(pipe, family: str) -> torch.nn.Module:
    return getattr(pipe, get_adapter(family).denoiser_attr)


def _call_arguments(
    family: str,
    prompts: list,
    guidance_scale: float,
    num_inference_steps: int,
    height,
    width,
    pipeline_kwargs: dict | None,
) -> dict:
    """The pipeline call: one row per prompt, the family's CFG argument, CFG off at scale 1."""
    adapter = get_adapter(family)
    call = {
        "prompt": list(prompts),
        "num_inference_steps": num_inference_steps,
        "height": height,
        "width": width,
        **(pipeline_kwargs or {}),
        adapter.scale_argument: float(guidance_scale),
    }
    if family == "flux" and guidance_scale > 1.0:
        call.setdefault("negative_prompt", [""] * len(prompts))  # Flux runs true CFG only with a negative prompt
    return call


@dataclass
class Rollout:
    """Clean samples of one batch: latents x0 [B, ...] (float32), images [B, 3, H, W] in [0, 1], their prompts."""

    latents: torch.Tensor
    images: torch.Tensor
    prompts: list


@torch.no_grad()
def rollout(
    pipe,
    family: str,
    prompts: list,
    generators: list,
    *,
    guidance_scale: float = 1.0,
    num_inference_steps: int = 10,
    height: int | None = None,
    width: int | None = None,
    policies=None,
    policy: str = "old",
    pipeline_kwargs: dict | None = None,
    autocast=None,
) -> Rollout:
    """Sample one image per prompt row with the pipeline (under ``policies.use(policy)`` when given).

    ``generators``: one per row (see :func:`sample_generators`). Returns the final latents (caught at the last step
    through ``callback_on_step_end``) and the pipeline's own decoded images.
    """
    if len(generators) != len(prompts):
        raise ValueError(f"{len(generators)} generators for {len(prompts)} prompts: give one generator per sample")
    final = {}

    def keep(pipeline, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return {}

    call = _call_arguments(family, prompts, guidance_scale, num_inference_steps, height, width, pipeline_kwargs)
    scope = policies.use(policy) if policies is not None else contextlib.nullcontext()
    with scope, autocast or contextlib.nullcontext():
        images = pipe(
            **call,
            generator=list(generators),
            output_type="pt",
            callback_on_step_end=keep,
            callback_on_step_end_tensor_inputs=["latents"],
            return_dict=False,
        )[0]
    if "latents" not in final:
        raise RuntimeError("the pipeline never called callback_on_step_end: it cannot be used for rollouts")
    images = images.float().clamp(0.0, 1.0)
    return Rollout(final["latents"].float(), images, list(prompts))


class _Captured(Exception):
    def __init__(self, arguments: dict):
        self.arguments = arguments


@torch.no_grad()
def denoiser_inputs(
    pipe,
    family: str,
    prompts: list,
    height: int | None = None,
    width: int | None = None,
    pipeline_kwargs: dict | None = None,
) -> dict:
    """The denoiser's keyword arguments for ``prompts`` at CFG 1, as the pipeline builds them (no forward runs)."""
    denoiser = denoiser_of(pipe, family)
    signature = inspect.signature(denoiser.forward)

    def capture(module, args, kwargs):
        raise _Captured(dict(signature.bind_partial(*args, **kwargs).arguments))

    call = _call_arguments(family, prompts, 1.0, 1, height, width, pipeline_kwargs)
    generator = [torch.Generator().manual_seed(0) for _ in prompts]  # the latents are replaced; keep global RNG
    handle = denoiser.register_forward_pre_hook(capture, with_kwargs=True, prepend=True)
    try:
        pipe(**call, generator=generator, output_type="latent")
    except _Captured as captured:
        arguments = captured.arguments
    else:
        raise RuntimeError("the pipeline finished without calling its denoiser")
    finally:
        handle.remove()
    arguments.pop(get_adapter(family).latent_key, None)
    arguments.pop("timestep", None)
    arguments["return_dict"] = False
    return arguments


def model_timestep(family: str, pipe, level: torch.Tensor) -> torch.Tensor:
    """The denoiser's ``timestep`` for noise levels ``level`` [B]: sigma for flow (SD3: x num_train_timesteps),
    the integer step for epsilon / v prediction."""
    if family == "flux":
        return level
    if family == "sd3":
        return level * pipe.scheduler.config.num_train_timesteps
    return level.long()


def predict(denoiser, family: str, inputs: dict, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """One denoiser forward at (x_t, timestep) with the captured conditioning ``inputs``; float32 output [B, ...]."""
    call = dict(inputs)
    call[get_adapter(family).latent_key] = x_t.to(next(denoiser.parameters()).dtype)
    call["timestep"] = timestep
    out = denoiser(**call)
    return (out[0] if isinstance(out, tuple) else out.sample).float()


def forward_noise(
    pipe,
    family: str,
    prediction: str,
    x0: torch.Tensor,
    generators: list,
    low: float = 0.0,
    high: float = 1.0,
    return_noise: bool = False,
) -> tuple:
    """The forward process at a random level per sample: (x_t, level for the loss, the denoiser's timestep), all [b];
    with ``return_noise`` the noise eps too, as a fourth item.

    Each sample's generator draws u ~ U[low, high] then eps ~ N(0, I). Flow: s = u through the scheduler's static
    shift, x_t = (1 - s) x0 + s eps, level s. Epsilon / v: t = floor(u T), ab = alphas_cumprod[t],
    x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, level ab.
    """
    u, eps = [], []
    for g in generators:
        u.append(torch.rand((), generator=g, dtype=torch.float64))
        eps.append(torch.randn(x0.shape[1:], generator=g))
    u = low + (high - low) * torch.stack(u)  # [b]
    eps = torch.stack(eps).to(x0.device)  # [b, ...]
    shape = (-1,) + (1,) * (x0.ndim - 1)
    config = pipe.scheduler.config
    if prediction == "flow":
        shift = float(getattr(config, "shift", 1.0) or 1.0)
        if not getattr(config, "use_dynamic_shifting", False) and shift != 1.0:
            u = shift * u / (1 + (shift - 1) * u)
        s = u.float().to(x0.device)
        out = ((1 - s.view(shape)) * x0 + s.view(shape) * eps, s, model_timestep(family, pipe, s))
        return out + (eps,) if return_noise else out
    t = (u * config.num_train_timesteps).floor().clamp(max=config.num_train_timesteps - 1).long()  # [b]
    ab = pipe.scheduler.alphas_cumprod[t].float().to(x0.device)  # [b]
    x_t = ab.sqrt().view(shape) * x0 + (1 - ab).sqrt().view(shape) * eps
    out = (x_t, ab, model_timestep(family, pipe, t.to(x0.device)))
    return out + (eps,) if return_noise else out


def default_size(pipe) -> int:
    """The model's native image side in pixels (sample size x VAE scale factor)."""
    if getattr(pipe, "default_sample_size", None):
        return pipe.default_sample_size * pipe.vae_scale_factor
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def check_prediction_type(family: str, pipe) -> str:
    """ "flow" for SD3 / Flux, else the scheduler's prediction_type (epsilon or v_prediction); ValueError otherwise."""
    if family in ("sd3", "flux"):
        return "flow"
    kind = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"the scheduler's prediction_type is {kind!r}; DiffusionNFT's x0 form supports epsilon and v_prediction"
        )
    if getattr(pipe.scheduler, "alphas_cumprod", None) is None:
        raise ValueError(
            f"{type(pipe.scheduler).__name__} has no alphas_cumprod; load the model with a DDPM-family "
            "scheduler (Euler, DDIM, DPM-Solver...)"
        )
    return kind
