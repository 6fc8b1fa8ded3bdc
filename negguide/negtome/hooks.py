"""NegToMe on a diffusers denoiser: reversible forward hooks on the attention modules' outputs.

The attention modules keep their processors (SDPA, xformers, LoRA, IP-Adapter, custom ones): a forward hook
post-processes each hooked module's output, after the output projection and before the residual add, so whatever
processor is installed (now or later) is still the one that runs. A pre-hook on the denoiser reads the step's
noise level once per call and, in reference mode, appends the reference latents to the batch; a post-hook drops
those rows again. ``remove`` takes every hook off; processors were never touched.

    handle = apply(pipe, NegToMeSettings(alpha=0.9))   # or: with apply(pipe, ...): pipe(...)
    images = pipe("a shape", num_images_per_prompt=8).images
    handle.remove()
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from negguide.core.families import detect_family, get_adapter, get_nested, set_nested
from negguide.negtome import reference as ref_images
from negguide.negtome.merge import merge_batch_group, negative_merge
from negguide.negtome.settings import NegToMeSettings

ATTR = "_negguide_negtome"
BLOCK_ALIASES = {
    "sd": {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."},
    "sdxl": {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."},
    "sd3": {"joint": "transformer_blocks."},
    "flux": {"joint": "transformer_blocks.", "single": "single_transformer_blocks."},
}


@dataclass
class HookedAttention:
    name: str
    module: torch.nn.Module
    text_first: bool  # Flux single blocks: the output holds the text tokens first, then the image tokens


def attention_modules(denoiser: torch.nn.Module) -> dict:
    """Every diffusers attention module of ``denoiser`` by qualified name."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    return {n: m for n, m in denoiser.named_modules() if isinstance(m, (Attention, AttentionModuleMixin))}


def select_attention(denoiser: torch.nn.Module, family: str, blocks: tuple) -> list:
    """The hooked attention modules for ``blocks`` (aliases such as 'up' or module-name prefixes)."""
    found = attention_modules(denoiser)
    if not found:
        raise ValueError(f"{type(denoiser).__name__} has no diffusers attention modules: NegToMe cannot hook it")
    aliases = BLOCK_ALIASES[family]
    chosen: dict = {}
    for block in blocks:
        prefix = aliases.get(block, block)
        matches = [n for n in found if n.startswith(prefix)]
        if not matches:
            raise ValueError(
                f"blocks has {block!r}, which matches no attention module of this {family} model; use one of "
                f"{sorted(aliases)} or a module-name prefix such as {next(iter(found))!r}"
            )
        chosen.update({n: found[n] for n in matches})
    return [HookedAttention(n, m, n.startswith("single_transformer_blocks.")) for n, m in chosen.items()]


def noise_level(timestep, family: str, scheduler) -> float:
    """The step's noise level in [0, 1] from the denoiser's timestep argument (one scalar read per call)."""
    value = timestep.reshape(-1)[0] if isinstance(timestep, torch.Tensor) else timestep
    value = float(value)
    if family == "flux":  # FluxPipeline passes sigma
        return value
    return value / float(getattr(scheduler.config, "num_train_timesteps", 1000))


def cfg_groups(pipe) -> Callable[[int], int]:
    """Groups of a plain diffusers pipeline: its two CFG halves when it batches them, else one group."""

    def groups(rows: int) -> int:
        try:
            cfg = bool(pipe.do_classifier_free_guidance)
        except AttributeError:  # not set before the call, or a pipeline (Flux) that runs branches separately
            cfg = False
        return 2 if cfg and rows % 2 == 0 else 1

    return groups


@dataclass
class _StepState:
    active: bool = False
    rows: int = 0  # image rows of the call (the reference rows follow them)
    groups: int = 1
    references: int = 0  # reference rows per group
    latent_hw: tuple | None = None  # the denoiser input's spatial size (in tokens of the first layer's grid)
    text_tokens: int = 0


class NegToMeHandle:
    """Installed NegToMe hooks on one denoiser; ``remove()`` (or leaving the ``with`` block) takes them off."""

    def __init__(
        self,
        denoiser,
        family: str,
        settings: NegToMeSettings,
        groups: Callable[[int], int],
        scheduler,
        vae=None,
        reference_images=None,
        reference_masks=None,
        pack_latents=None,
    ):
        self.denoiser, self.family = denoiser, family
        self.settings = settings.resolved(family)
        self.adapter = get_adapter(family)
        self.groups_of, self.scheduler, self.vae, self.pack_latents = groups, scheduler, vae, pack_latents
        self.attention = select_attention(denoiser, family, self.settings.blocks)
        self.images = None if reference_images is None else ref_images.prepare_images(reference_images)
        if self.images is None and reference_masks is not None:
            raise ValueError("reference_masks were given without reference_images")
        self.masks = (
            None
            if self.images is None
            else ref_images.prepare_masks(reference_masks, self.images.shape[0], tuple(self.images.shape[-2:]))
        )
        if self.images is not None and vae is None:
            raise ValueError("reference images need the pipeline's VAE to encode them")
        if self.masks is not None and self.settings.legacy_matching:
            raise ValueError(
                "legacy_matching reproduces the reference code's unmasked matching and would ignore reference_masks: "
                "drop the masks or set legacy_matching=False"
            )
        if self.images is not None and self.settings.legacy_matching and self.images.shape[0] != 1:
            raise ValueError("legacy_matching compares with one reference image; give one or set legacy_matching=False")
        self.state = _StepState()
        self._signature = inspect.signature(denoiser.forward)
        self._encoded: dict = {}
        self._generators: dict = {}
        self._seed_offset = 0
        self._handles: list = []
        self.active_calls = 0  # denoiser calls with merging on, since install

    # ------------------------------------------------------------------ install / remove
    def install(self) -> NegToMeHandle:
        if getattr(self.denoiser, ATTR, None) is not None:
            raise RuntimeError("NegToMe is already applied to this denoiser; remove() it first")
        # pre-hook last and post-hook first, so other batch-changing hooks (Perp-Neg's branches) stay outside
        self._handles.append(self.denoiser.register_forward_pre_hook(self._before, with_kwargs=True))
        self._handles.append(self.denoiser.register_forward_hook(self._after, prepend=True))
        for hooked in self.attention:
            self._handles.append(hooked.module.register_forward_hook(self._attention_hook(hooked)))
        setattr(self.denoiser, ATTR, self)
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if getattr(self.denoiser, ATTR, None) is self:
            delattr(self.denoiser, ATTR)
        self.state = _StepState()

    def __enter__(self) -> NegToMeHandle:
        return self if self._handles else self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------------ denoiser hooks
    def _before(self, module, args, kwargs):
        s = self.settings
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        level = noise_level(bound.get("timestep"), self.family, self.scheduler)
        low, high = s.window
        state = self.state = _StepState(active=s.alpha > 0 and low <= level <= high)
        if not state.active:
            return None
        self.active_calls += 1
        latents = bound[self.adapter.latent_key]
        state.rows = latents.shape[0]
        state.groups = self.groups_of(state.rows)
        if state.rows % state.groups:
            raise ValueError(f"{state.rows} batch rows do not split into {state.groups} equal groups")
        if self.family in ("sd3", "flux"):
            state.text_tokens = bound["encoder_hidden_states"].shape[1]
        if s.min_feature_size > 0 or self.images is not None:
            state.latent_hw = self._latent_size(bound, latents)
        # a seed per (seed, step): the same call always draws the same dropout, whatever ran before
        self._seed_offset = int(round(level * 1e6))
        self._generators = {}
        if self.images is None:
            return None
        return (), self._with_references(bound, latents, level)

    def _after(self, module, args, output):
        if not (self.state.active and self.state.references):
            return None
        rows = self.state.rows
        if isinstance(output, tuple):
            return (output[0][:rows], *output[1:])
        output.sample = output.sample[:rows]
        return output

    def _latent_size(self, bound, latents) -> tuple:
        if latents.ndim == 4:
            return tuple(latents.shape[-2:])
        ids = bound.get("img_ids")  # Flux: packed tokens; the grid is in the image ids (one read per call)
        ids = ids[0] if ids.ndim == 3 else ids
        return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1

    def _with_references(self, bound: dict, latents: torch.Tensor, level: float) -> dict:
        state, s = self.state, self.settings
        clean, noise = self._encode_references(latents, state.latent_hw)
        reference = (
            clean
            if s.reference_noise == "clean"
            else ref_images.noised(clean, noise, level, self.scheduler, flow=self.family in ("sd3", "flux"))
        )
        count = reference.shape[0]
        state.references = count
        call = dict(bound)
        call[self.adapter.latent_key] = torch.cat(
            [latents, reference.repeat(state.groups, *[1] * (reference.ndim - 1))]
        )
        size = state.rows // state.groups
        index = torch.arange(state.groups, device=latents.device).repeat_interleave(count) * size  # group's first row
        keys = set(self.adapter.conditioning_keys) | set(self.adapter.per_row_keys) | {"timestep"}
        for key in keys:
            value = get_nested(call, key)
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == state.rows:
                set_nested(call, key, torch.cat([value, value[index]]))
        return call

    def check_size(self, height: int, width: int) -> None:
        """ValueError unless the reference images are ``height`` x ``width`` (the generated size)."""
        if self.images is None:
            return
        have = tuple(self.images.shape[-2:])
        if have != (height, width):
            raise ValueError(
                f"reference images are {have[0]}x{have[1]} (HxW) but the pipeline generates {height}x{width}: "
                f"resize them, e.g. image.resize(({width}, {height}))"
            )

    def _encode_references(self, latents: torch.Tensor, latent_hw: tuple):
        key = (latent_hw, latents.dtype, latents.device)
        if key not in self._encoded:
            factor = _pixel_factor(self.vae, self.family)
            self.check_size(latent_hw[0] * factor, latent_hw[1] * factor)
            with torch.no_grad():
                clean = ref_images.encode_images(self.vae, self.images, latents.dtype, latents.device)
            if self.pack_latents is not None and latents.ndim == 3:  # Flux packs 2x2 latent patches into tokens
                r, c, h, w = clean.shape
                clean = self.pack_latents(clean, r, c, h, w)
            generator = torch.Generator().manual_seed(self.settings.seed)
            noise = torch.randn(clean.shape, generator=generator).to(clean)
            self._encoded = {key: (clean, noise)}
        return self._encoded[key]

    # ------------------------------------------------------------------ attention hooks
    def _attention_hook(self, hooked: HookedAttention):
        def hook(module, args, output):
            state = self.state
            if not state.active:
                return None
            tokens = output[0] if isinstance(output, tuple) else output
            if tokens.ndim != 3:
                return None
            text = state.text_tokens if hooked.text_first else 0
            image = tokens[:, text:]  # [rows', N, D]
            merged = self._merge(image)
            if merged is None:
                return None
            if text:
                merged = torch.cat([tokens[:, :text], merged], dim=1)
            return (merged, *output[1:]) if isinstance(output, tuple) else merged

        return hook

    def _feature_size(self, count: int) -> tuple:
        height, width = self.state.latent_hw
        scale = math.sqrt(height * width / count)
        return max(1, round(height / scale)), max(1, round(width / scale))

    def _keep(self, shape: tuple, device) -> torch.Tensor | None:
        if self.settings.dropout <= 0:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(
                self.settings.seed + self._seed_offset
            )
        return torch.rand(shape, generator=self._generators[device], device=device) >= self.settings.dropout

    def _merge(self, image: torch.Tensor) -> torch.Tensor | None:
        state, s = self.state, self.settings
        rows, groups, count, dim = state.rows, state.groups, image.shape[1], image.shape[2]
        size = rows // groups
        feature = self._feature_size(count) if state.latent_hw is not None else None
        if s.min_feature_size > 0 and min(feature) < s.min_feature_size:
            return None
        sources = image[:rows].reshape(groups, size, count, dim)  # [G, n, N, D]
        keep = self._keep((groups, size, count), image.device)
        if not state.references:
            merged = merge_batch_group(
                sources, s.batch_reference, s.alpha, s.threshold, keep, s.legacy_matching, s.chunk_tokens
            ).reshape(rows, count, dim)
            return merged if image.shape[0] == rows else torch.cat([merged, image[rows:]])
        refs = image[rows:].reshape(groups, 1, state.references * count, dim)  # [G, 1, R*N, D]
        valid = None
        if self.masks is not None:
            valid = ref_images.token_mask(self.masks, *feature).to(image.device)  # [R*N]
        merged = negative_merge(sources, refs, s.alpha, s.threshold, valid, keep, s.legacy_matching, s.chunk_tokens)
        return torch.cat([merged.reshape(rows, count, dim), image[rows:]])


def _pixel_factor(vae, family: str) -> int:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return factor * 2 if family == "flux" else factor  # Flux's grid counts packed 2x2 latent patches


def apply(
    pipe,
    settings: NegToMeSettings | None = None,
    reference_images=None,
    reference_masks=None,
    groups: Callable[[int], int] | None = None,
) -> NegToMeHandle:
    """Install NegToMe on a diffusers pipeline (SD1.x/2.x, SDXL, SD3, Flux) and return the handle.

    Batch mode (no reference images): the images of each CFG half are pushed apart. Reference mode: generated
    images are pushed away from ``reference_images`` (PIL RGB or tensors in [0, 1] of the output size), optionally
    only inside ``reference_masks``. Use the handle as a context manager or call ``remove(pipe)``.
    """
    settings = NegToMeSettings() if settings is None else settings
    if not isinstance(settings, NegToMeSettings):
        raise TypeError(f"settings must be a NegToMeSettings, got {type(settings).__name__}")
    components = getattr(pipe, "components", None)
    if components is None:
        raise TypeError(f"apply() takes a diffusers pipeline, got {type(pipe).__name__}")
    family = detect_family(components)
    denoiser = components[get_adapter(family).denoiser_attr]
    pack = getattr(type(pipe), "_pack_latents", None)
    if family == "flux" and pack is None:
        from diffusers import FluxPipeline

        pack = FluxPipeline._pack_latents
    handle = NegToMeHandle(
        denoiser,
        family,
        settings,
        groups or cfg_groups(pipe),
        pipe.scheduler,
        components.get("vae"),
        reference_images,
        reference_masks,
        pack,
    )
    return handle.install()


def remove(pipe) -> bool:
    """Take NegToMe off ``pipe``'s denoiser; True when something was removed."""
    for name in ("unet", "transformer"):
        denoiser = getattr(pipe, name, None)
        handle = getattr(denoiser, ATTR, None) if denoiser is not None else None
        if handle is not None:
            handle.remove()
            return True
    return False
