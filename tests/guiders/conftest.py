"""Tiny modular pipelines (SDXL, SD3, Flux) on the test components, and runs of them and of PerpNegPipeline."""

from __future__ import annotations

import logging
from unittest import mock

import pytest
import torch
from helpers import call_kwargs, get_tiny

PROMPT = "a red shape"
STEPS = 4
MODULAR_FAMILIES = ("sdxl", "sd3", "flux")
BLOCKS = {"sdxl": "StableDiffusionXLAutoBlocks", "sd3": "StableDiffusion3AutoBlocks", "flux": "FluxAutoBlocks"}
#: the true-CFG scale PerpNegPipeline takes per family (Flux: true_cfg_scale; guidance_scale is the distilled one)
SCALE_ARG = {"sdxl": "guidance_scale", "sd3": "guidance_scale", "flux": "true_cfg_scale"}

_PIPES: dict = {}


@pytest.fixture(autouse=True)
def _quiet_diffusers():
    """diffusers logs a warning for every guider it builds ("experimental feature"): not for these tests."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _quiet(block) -> None:
    if hasattr(block, "set_progress_bar_config"):
        block.set_progress_bar_config(disable=True)
    for sub in block.sub_blocks.values():
        _quiet(sub)


def modular_pipeline(family: str, negguide: bool = True):
    """A session-wide modular pipeline of ``family`` on the tiny test components; with ``negguide``, built from
    ``add_negatives(blocks)``. Callers set their guider on it (``run`` does)."""
    key = (family, negguide)
    if key not in _PIPES:
        import diffusers.modular_pipelines as modular

        from negguide.guiders import add_negatives

        blocks = getattr(modular, BLOCKS[family])()
        if negguide:
            blocks = add_negatives(blocks)
        _quiet(blocks)
        pipe = blocks.init_pipeline()
        pipe.update_components(**{k: v for k, v in get_tiny(family).components.items() if v is not None})
        _PIPES[key] = pipe
    return _PIPES[key]


def run_modular(family: str, guider, negguide: bool = True, seed: int = 0, **extra) -> torch.Tensor:
    """Final latents of the modular pipeline with ``guider`` (SD3 gets negative_prompt='' so that its text encoder
    makes the unconditional embeddings, as StableDiffusion3Pipeline does by default)."""
    pipe = modular_pipeline(family, negguide)
    pipe.update_components(guider=guider)
    kwargs = dict(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(seed),
        output="latents",
    )
    if family in ("sd3", "flux"):
        kwargs["max_sequence_length"] = 16
    if family == "sd3":
        kwargs["negative_prompt"] = ""
    kwargs.update(extra)
    return pipe(**kwargs)


def run_perpneg(family: str, scale: float, seed: int = 0, **options) -> torch.Tensor:
    """Final latents of PerpNegPipeline on the same components and seed (Flux's unpacked like the modular one's)."""
    from negguide import PerpNegPipeline

    pipe = PerpNegPipeline.from_pipe(get_tiny(family))
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(
        PROMPT, **options, **call_kwargs(family, steps=STEPS, seed=seed, **{SCALE_ARG[family]: scale})
    ).images
    if family == "flux":
        latents = type(pipe.family_pipeline())._unpack_latents(latents, 32, 32, pipe.family_pipeline().vae_scale_factor)
    return latents


def denoiser_of(family: str):
    pipe = get_tiny(family)
    return pipe.unet if family == "sdxl" else pipe.transformer


class StepRows:
    """Rows of every denoiser call, grouped by denoising step (the calls of one step share its timestep)."""

    def __init__(self, denoiser):
        self.calls: list = []
        self._handle = denoiser.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        latents = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self.calls.append((float(torch.as_tensor(timestep).flatten()[0]), latents.shape[0]))

    def per_step(self) -> list[int]:
        steps: list = []
        last = None
        for timestep, rows in self.calls:
            if timestep != last:
                steps.append(0)
                last = timestep
            steps[-1] += rows
        return steps

    def remove(self):
        self._handle.remove()


def guided_predictions(family: str, guider, **extra) -> list[torch.Tensor]:
    """The guided prediction of every step (what the scheduler receives) of a modular run with ``guider``."""
    scheduler = get_tiny(family).scheduler
    seen: list = []
    real = type(scheduler).step

    def step(self, model_output, *args, **kwargs):
        seen.append(model_output.clone())
        return real(self, model_output, *args, **kwargs)

    with mock.patch.object(type(scheduler), "step", step):
        run_modular(family, guider, **extra)
    return seen


@pytest.fixture(params=MODULAR_FAMILIES)
def modular_family(request):
    return request.param


class Modular:
    """What the guider tests share (the ``modular`` fixture)."""

    prompt = PROMPT
    steps = STEPS
    scale_arg = SCALE_ARG
    pipeline = staticmethod(modular_pipeline)
    run = staticmethod(run_modular)
    perpneg = staticmethod(run_perpneg)
    denoiser = staticmethod(denoiser_of)
    predictions = staticmethod(guided_predictions)
    StepRows = StepRows


@pytest.fixture
def modular() -> type[Modular]:
    return Modular
