"""Generation shared by ``negguide generate`` and the demo: one prompt through one or several negative-guidance
methods with the same seed, judged on the bundled ShapeWorld model. The command line is ``generate_cli.py``."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from negguide.cli.comparison import grid_image, judge_scores, negative_role
from negguide.cli.flags import check_device, check_model, load_model
from negguide.cli.inputs import lora_path, lora_target, lora_weights, one_line, open_image, reneg_kwargs
from negguide.core.settings import Settings, setting, validate
from negguide.nag.settings import NAGSettings
from negguide.negtome.settings import NegToMeSettings
from negguide.perpneg.settings import PerpNegSettings

METHODS = {
    "none": "the prompt alone (classifier-free guidance), the baseline",
    "plain": "the negatives as diffusers' negative_prompt (they replace the unconditional branch)",
    "perp-neg": "the negatives with Perp-Neg: weights, windows, only what they do not share with the prompt",
    "nag": "the negatives inside attention (NAG), for models that run without CFG (pair it with guidance scale 1)",
    "negtome": "NegToMe batch diversity: each image pushed away from the rest of its batch",
    "negtome-reference": "NegToMe away from a reference image (optionally only inside a mask)",
    "reneg": "a learned negative embedding (ReNeg) as the unconditional branch",
    "nft-lora": "a DiffusionNFT LoRA on the denoiser",
}
USES_NEGATIVES = ("plain", "perp-neg", "nag")
COMPOSABLE = ("negtome", "negtome-reference", "reneg", "nft-lora")  # --with-negatives adds Perp-Neg to these
MAX_PROMPT_CHARS = 300
MAX_NEGATIVES = 8


@dataclass
class SamplingSettings(Settings):
    """What every method shares: seed, steps, size, batch and CFG scale (``None`` = the model's default)."""

    seed: int = setting(0, "seed of the initial noise, the same for every method", min=0, max=2**32 - 1, step=1)
    steps: int | None = setting(None, "denoising steps", min=1, max=150, step=1)
    height: int | None = setting(None, "image height in pixels", min=16, max=2048, step=8)
    width: int | None = setting(None, "image width in pixels", min=16, max=2048, step=8)
    batch: int = setting(4, "images per method", min=1, max=16, step=1)
    guidance_scale: float | None = setting(None, "classifier-free guidance scale", min=0.0, max=30.0, step=0.5)


@dataclass
class GenerateRequest(Settings):
    """One comparison: a prompt, the methods to run with the same seed, and each method's inputs."""

    prompt: str = setting(help="the prompt")
    methods: tuple[str, ...] = setting(("perp-neg",), "the methods, run with the same seed", choices=tuple(METHODS))
    perp_neg: PerpNegSettings = setting(default_factory=PerpNegSettings, help="the negatives and their weights")
    sampling: SamplingSettings = setting(default_factory=SamplingSettings, help="seed, steps, size, batch, scale")
    negtome: NegToMeSettings | None = None  # None: the model's preset (the bundled model: tuned on ShapeWorld)
    negtome_overrides: dict = setting({}, "NegToMeSettings fields replaced in the settings or preset")
    nag_overrides: dict = setting({}, "NAGSettings fields replaced in the family's defaults (nag; NAG elsewhere)")
    reference_image: Any = None  # PIL image or path (negtome-reference)
    reference_mask: Any = None  # PIL image or path, white = the region to avoid
    reneg: str | None = None  # .safetensors (default on a bundled ShapeWorld model, SD3 or SD: its own)
    lora: str | None = None  # LoRA folder or file (nft-lora; default: the bundled model's, when it exists)
    lora_scale: float = setting(1.0, "LoRA strength", min=0.0, max=2.0, step=0.05)
    with_negatives: bool = setting(False, "also apply the Perp-Neg negatives in the COMPOSABLE methods")

    def __post_init__(self) -> None:
        if isinstance(self.methods, str) or self.methods is None:
            self.methods = () if self.methods is None else (self.methods,)
        validate(self)
        if not self.prompt.strip():
            raise ValueError("the prompt is empty: give a text such as 'a red shape'")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt has {len(self.prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        if not self.methods:
            raise ValueError(f"choose at least one method of {list(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {list(self.methods)} repeat a method; give each once")
        if len(self.perp_neg.negatives) > MAX_NEGATIVES:
            raise ValueError(f"{len(self.perp_neg.negatives)} negatives; the limit is {MAX_NEGATIVES}")
        for i, text in enumerate(self.perp_neg.negatives):
            if not text.strip() or len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"negative {i + 1} is empty or longer than {MAX_PROMPT_CHARS} characters")
        for cls, overrides in ((NegToMeSettings, self.negtome_overrides), (NAGSettings, self.nag_overrides)):
            try:
                cls(**overrides)  # check the values before any compute
            except TypeError as error:
                raise ValueError(one_line(error)) from None
        needs = [m for m in self.methods if m in USES_NEGATIVES] + (
            [m for m in self.methods if m in COMPOSABLE] if self.with_negatives else []
        )
        if needs and not self.perp_neg.negatives:
            raise ValueError(f"{needs[0]} needs at least one negative prompt (e.g. --negative 'a red circle')")
        if "negtome" in self.methods and self.sampling.batch < 2:
            raise ValueError("negtome (batch diversity) pushes the images of a batch apart: use a batch of 2 or more")
        if "negtome-reference" in self.methods and self.reference_image is None:
            raise ValueError("negtome-reference needs a reference image (--reference IMAGE, or upload one)")


@dataclass
class MethodResult:
    method: str
    images: list  # PIL images
    readings: list | None  # the ShapeWorld judge's reading of each image (bundled model only)
    seconds: float
    role: str = ""  # what the row does with the negatives (comparison.negative_role)
    scores: dict | None = None  # the judge's figures of the row (bundled model only): comparison.judge_scores


# ---------------------------------------------------------------------------------------------------- the model
def is_bundled(model: str | None) -> bool:
    """The bundled ShapeWorld SD3 model, the default (its NegToMe presets and DiffusionNFT LoRA apply)."""
    return shapeworld_model(model) == "sd3"


def shapeworld_model(model: str | None) -> str | None:
    """ "sd3" for the default (bundled SD3) model, "sd" for the bundled SD (UNet) model (a copy of either too),
    else None."""
    from negguide.shapeworld.assets import bundled_model_kind

    return bundled_model_kind(model)


def load_pipeline(model: str | None = None, device: str | None = None, dtype: str = "float32"):
    """A PerpNegPipeline for a local diffusers folder or a hub id (default: the bundled ShapeWorld model). The
    device, dtype and model are checked first (:func:`~negguide.cli.flags.check_device`, ``check_model``): a
    ValueError naming the bad one before anything loads."""
    import torch

    from negguide.shapeworld.bench import load_bench_pipeline

    check_device(device)
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype = {dtype!r}: use float32, float16 or bfloat16")
    check_model(model)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if is_bundled(model):
        pipe = load_bench_pipeline(model)
    else:
        from negguide.perpneg.pipeline import PerpNegPipeline

        pipe = load_model(model, lambda name: PerpNegPipeline.from_pretrained(name, torch_dtype=getattr(torch, dtype)))
        pipe.set_progress_bar_config(disable=True)
    pipe.negguide_bundled = is_bundled(model)
    pipe.negguide_shapeworld = shapeworld_model(model)  # which bundled model, if any (its own ReNeg embedding)
    pipe = pipe.to(device)
    return pipe if pipe.dtype == getattr(torch, dtype) else pipe.to(dtype=getattr(torch, dtype))


def model_defaults(pipe) -> dict:
    """Defaults and limits of a loaded pipeline: size (and its step and maximum), steps, CFG scale, extra kwargs."""
    from negguide.core.families import call_defaults, get_adapter
    from negguide.shapeworld.bench import BenchSettings

    inner = pipe.family_pipeline()
    adapter = get_adapter(pipe.family)
    denoiser = getattr(pipe, adapter.denoiser_attr)
    scale = inner.vae_scale_factor
    size = (getattr(inner, "default_sample_size", None) or denoiser.config.sample_size) * scale
    step = scale * (2 if pipe.family in ("sd3", "flux") else 1)
    size_max = SamplingSettings.field_specs()["height"]["max"]
    if pipe.family == "sd3" and denoiser.config.get("pos_embed_max_size"):
        size_max = min(size_max, denoiser.config.pos_embed_max_size * denoiser.config.patch_size * scale)
    defaults = call_defaults(inner)
    out = dict(
        size=size,
        size_step=step,
        size_max=size_max,
        steps=defaults.get("num_inference_steps", 30),
        guidance_scale=defaults.get(adapter.scale_argument, 5.0),
        scale_argument=adapter.scale_argument,
        extra={},
        bundled=bool(getattr(pipe, "negguide_bundled", False)),
    )
    if out["bundled"]:
        bench = BenchSettings()
        out.update(steps=bench.steps, guidance_scale=bench.guidance_scale, extra=dict(bench.extra))
    return out


def negtome_preset(pipe, method: str) -> NegToMeSettings:
    """The NegToMe settings a method uses when none are given: tuned ones on the bundled model, else the defaults."""
    if getattr(pipe, "negguide_bundled", False):
        from negguide.shapeworld.bench_negtome import DIVERSITY_SETTINGS, REFERENCE_SETTINGS

        return replace(REFERENCE_SETTINGS if method == "negtome-reference" else DIVERSITY_SETTINGS)
    return NegToMeSettings()


# ---------------------------------------------------------------------------------------------------- generation
def _method_call(pipe, method: str, request: GenerateRequest, size: tuple):
    """(pipeline kwargs, context manager) of one method."""
    pn = request.perp_neg
    negatives = dict(negatives=pn.negatives, negative_weights=pn.negative_weights, negative_windows=pn.negative_windows)
    kwargs: dict = {}
    if method == "plain":
        return dict(negatives, guidance_mode="plain"), contextlib.nullcontext()
    if method == "perp-neg":
        return dict(
            negatives, positives=pn.positives, positive_weights=pn.positive_weights, perp_neg_eps=pn.eps
        ), contextlib.nullcontext()
    if method == "nag":
        return dict(negatives, negative_mode="nag", nag=NAGSettings(**request.nag_overrides)), contextlib.nullcontext()
    if method in COMPOSABLE and request.with_negatives:
        kwargs.update(negatives)
        if request.nag_overrides:  # where the negatives go through NAG (CFG off, or a CFG-free LoRA)
            kwargs["nag"] = NAGSettings(**request.nag_overrides)
    context = contextlib.nullcontext()
    if method in ("negtome", "negtome-reference"):
        settings = request.negtome if request.negtome is not None else negtome_preset(pipe, method)
        kwargs["negtome"] = replace(settings, **request.negtome_overrides)
    if method == "negtome-reference":
        kwargs["negtome_reference_images"] = [open_image(request.reference_image, "RGB", size, "reference image")]
        if request.reference_mask is not None:
            from negguide.negtome.reference import prepare_masks

            mask = open_image(request.reference_mask, "L", size, "reference mask")
            prepare_masks([mask], 1, (size[1], size[0]))  # an empty mask is refused here, before any compute
            kwargs["negtome_reference_masks"] = [mask]
    elif method == "reneg":
        kwargs.update(reneg_kwargs(pipe, request.reneg))
    elif method == "nft-lora":
        path = lora_path(pipe, request.lora)
        lora_target(pipe, path)
        context = _stacked(lora_weights(pipe, path, request.lora_scale), cfg_free(pipe))
    return kwargs, context


@contextlib.contextmanager
def cfg_free(pipe):
    """Flag the pipeline CFG-free while a DiffusionNFT LoRA is loaded (it is trained to run without CFG): with
    negatives, ``negative_mode="auto"`` then sends them through NAG."""
    from negguide.nag.routing import CFG_FREE_ATTR

    before = pipe.__dict__.get(CFG_FREE_ATTR, None)
    setattr(pipe, CFG_FREE_ATTR, True)
    try:
        yield
    finally:
        if before is None:
            pipe.__dict__.pop(CFG_FREE_ATTR, None)
        else:
            setattr(pipe, CFG_FREE_ATTR, before)


@contextlib.contextmanager
def _stacked(*contexts):
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def check_request(pipe, request: GenerateRequest, d: dict | None = None) -> tuple:
    """Validate what depends on the model (size) before any compute; return (height, width, steps, scale)."""
    d = d or model_defaults(pipe)
    s = request.sampling
    height, width = s.height or d["size"], s.width or d["size"]
    for name, value in (("height", height), ("width", width)):
        if value % d["size_step"] or value > d["size_max"]:
            raise ValueError(f"{name} = {value}: this model takes multiples of {d['size_step']} up to {d['size_max']}")
    return height, width, s.steps or d["steps"], d["guidance_scale"] if s.guidance_scale is None else s.guidance_scale


@dataclass
class PreparedRun:
    """A request checked against a model: sizes, steps, scale and each method's call, before any compute."""

    defaults: dict
    height: int
    width: int
    steps: int
    scale: float
    calls: list


def prepare(pipe, request: GenerateRequest) -> PreparedRun:
    """Check everything ``request`` reads (sizes, files, embeddings, LoRAs) against ``pipe``; ValueError if bad."""
    defaults = model_defaults(pipe)
    height, width, steps, scale = check_request(pipe, request, defaults)
    calls = [(m, *_method_call(pipe, m, request, (width, height))) for m in request.methods]  # all checked first
    return PreparedRun(defaults, height, width, steps, scale, calls)


def run(
    pipe,
    request: GenerateRequest,
    progress: Callable[[float, str], None] | None = None,
    prepared: PreparedRun | None = None,
    warmup: bool = False,
) -> list[MethodResult]:
    """Every method of ``request`` with the same seed (the same initial noise); the judge reads the bundled model's
    images. ``progress(fraction, text)`` is called after every denoising step. ``prepared``: :func:`prepare`'s
    result when the caller checked the request already. ``warmup``: run one step of every method before the timed
    rows."""
    import torch

    p = prepared or prepare(pipe, request)
    defaults, height, width, steps, scale, calls = p.defaults, p.height, p.width, p.steps, p.scale, p.calls
    results = []
    for index, (method, kwargs, context) in enumerate(calls):

        def on_step(_pipe, step, _timestep, tensors, index=index, method=method):
            if progress is not None:
                progress((index + (step + 1) / steps) / len(calls), f"{method}: step {step + 1}/{steps}")
            return tensors

        call = {**defaults["extra"], **kwargs}
        with context:
            if warmup:  # one step first, so the row's time holds no one-time cost (first calls, allocations)
                pipe(
                    request.prompt,
                    num_inference_steps=1,
                    height=height,
                    width=width,
                    output_type="latent",
                    **{defaults["scale_argument"]: scale},
                    **call,
                )
            start = time.perf_counter()
            output = pipe(
                request.prompt,
                num_inference_steps=steps,
                height=height,
                width=width,
                num_images_per_prompt=request.sampling.batch,
                **{defaults["scale_argument"]: scale},
                generator=torch.Generator("cpu").manual_seed(request.sampling.seed),
                callback_on_step_end=on_step,
                output_type="pil",
                **call,
            )
        seconds = time.perf_counter() - start
        images = list(output.images)
        readings = scores = None
        if defaults["bundled"]:
            from negguide.shapeworld.bench import judge_reading

            readings = [judge_reading(np.asarray(img.convert("RGB"))) for img in images]
            scores = judge_scores(images, request)
        role = negative_role(method, request, getattr(pipe, "family", ""))
        results.append(MethodResult(method, images, readings, seconds, role, scores))
    return results


#: the record of what a run wrote in its output folder, so a later run with overwrite removes exactly those files
RUN_RECORD = "negguide_generate.json"


def prepare_output(folder: str, overwrite: bool = False) -> None:
    """Check the output folder before any compute: writable, and empty unless ``overwrite``; with ``overwrite`` the
    files an earlier run wrote there (listed in its RUN_RECORD) are removed, so no stale image stays beside a new
    grid. Files negguide did not write are never removed."""
    from negguide.core.training_io import check_writable

    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"output folder {folder!r} is a file; choose a folder")
    present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if present and not overwrite:
        raise ValueError(
            f"output folder {folder!r} is not empty ({len(present)} entries, e.g. {present[0]!r}): choose another "
            "folder, or overwrite to replace an earlier run's images"
        )
    check_writable(folder)
    record = os.path.join(folder, RUN_RECORD)
    if overwrite and os.path.isfile(record):
        try:
            with open(record) as f:
                written = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"{record} is damaged; remove the folder's old images by hand") from None
        for name in written:
            path = os.path.join(folder, os.path.basename(name))  # never outside the folder
            if os.path.isfile(path):
                os.remove(path)
        os.remove(record)


def save(results: list[MethodResult], folder: str, title: str = "") -> list[str]:
    """Every image as <method>_<i>.png and the comparison as grid.png, and RUN_RECORD listing them; returns the
    image paths (grid last)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for result in results:
        for i, image in enumerate(result.images):
            paths.append(os.path.join(folder, f"{result.method}_{i}.png"))
            image.save(paths[-1])
    paths.append(os.path.join(folder, "grid.png"))
    grid_image(results, title).save(paths[-1])
    with open(os.path.join(folder, RUN_RECORD), "w") as f:
        json.dump({"title": title, "files": [os.path.basename(p) for p in paths]}, f, indent=1)
    return paths
