"""PerpNegPipeline: Perp-Neg (and plain negatives, for comparison) on any SD1.x/2.x, SDXL, SD3 or Flux checkpoint.

The class holds the components of a diffusers pipeline and runs that family's own diffusers pipeline with its
guidance switched off; the multi-branch core batches every branch of a step into one denoiser forward and the
Perp-Neg combiner guides. Load it like any pipeline::

    pipe = PerpNegPipeline.from_pretrained("stabilityai/stable-diffusion-2-1-base")   # family detected
    pipe = PerpNegPipeline.from_pipe(existing_pipe)                                    # no weights reloaded
    image = pipe("a red shape", negatives=["a red circle"], negative_weights=[1.5]).images[0]
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)

from negguide.core.call_checks import check_call, size_multiple
from negguide.core.chunking import RowChunking, check_max_rows
from negguide.core.families import (
    call_defaults,
    check_shared_embeds,
    detect_family,
    get_adapter,
    repeat_per_image,
    split_conditioning,
)
from negguide.core.multibranch import POSITIVE, MultiBranchDenoiser, check_conditioning
from negguide.guidance.combine import cfg_combine, perp_neg_combine, plain_negative_combine
from negguide.guidance.windows import is_active
from negguide.nag.routing import (  # noqa: F401 (NEGATIVE_MODES: re-exported)
    CFG_FREE_ATTR,
    NEGATIVE_MODES,
    CallGuidance,
    NegativeIgnoredWarning,
    check_negative_mode,
    route,
)
from negguide.nag.settings import NAGSettings
from negguide.negtome.settings import NegToMeSettings
from negguide.perpneg.mixins import FamilyMixins, carry_offload
from negguide.perpneg.settings import PerpNegSettings

UNCOND = "uncond"

COMPONENT_NAMES = (
    "vae",
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
    "text_encoder_3",
    "tokenizer_3",
    "unet",
    "transformer",
    "scheduler",
    "safety_checker",
    "feature_extractor",
    "image_encoder",
)
UNSUPPORTED_WITH_BRANCHES = (
    "ip_adapter_image",
    "ip_adapter_image_embeds",
    "skip_guidance_layers",
    "negative_ip_adapter_image",
    "negative_ip_adapter_image_embeds",
)


class PerpNegPipeline(FamilyMixins, DiffusionPipeline):
    """Text-to-image with several weighted negative prompts that remove only what they do not share with the prompt.

    Works on the components of a StableDiffusion(XL|3)Pipeline or FluxPipeline; the family is detected from the
    denoiser. The call takes the family's diffusers arguments with their meaning (``negative_prompt`` and
    ``negative_prompt_embeds`` still set the unconditional branch ``u``, so a learned negative embedding plugs in
    there) plus the Perp-Neg arguments of :class:`PerpNegSettings`. LoRA, textual inversion, CPU offload, VAE
    tiling/slicing and attention backends go to the family pipeline or a component (:mod:`negguide.perpneg.mixins`).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->unet->transformer->vae"
    _optional_components = list(COMPONENT_NAMES)

    def __init__(
        self,
        vae: AutoencoderKL | None = None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
        unet: UNet2DConditionModel | None = None,
        transformer: SD3Transformer2DModel | FluxTransformer2DModel | None = None,
        scheduler=None,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker: bool = False,
        force_zeros_for_empty_prompt: bool = True,
    ):
        super().__init__()
        components = dict(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
            unet=unet,
            transformer=transformer,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )
        family = detect_family(components)
        missing = [n for n in get_adapter(family).requires if components.get(n) is None]
        if missing:
            raise ValueError(f"a {family} pipeline needs {missing}; load a complete checkpoint or pass them")
        self.register_modules(**components)
        self.register_to_config(
            requires_safety_checker=requires_safety_checker, force_zeros_for_empty_prompt=force_zeros_for_empty_prompt
        )
        self.family = family
        self.step_records: list = []
        self._inner_cache = (None, None)

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """Wrap an existing diffusers pipeline; its modules are shared, not copied or reloaded."""
        for name in ("vae", "unet", "transformer"):
            component = pipeline.components.get(name)
            if component is not None:
                kwargs.setdefault(name, component)  # also subclasses of the annotated model classes
        return super().from_pipe(pipeline, **kwargs)

    # ------------------------------------------------------------------ the family's own diffusers pipeline
    def family_pipeline(self):
        """The family's diffusers pipeline built on this pipeline's modules (shared, never copied)."""
        import diffusers

        cls = getattr(diffusers, get_adapter(self.family).pipeline_class)
        expected, optional = cls._get_signature_keys(cls)
        modules = {name: getattr(self, name, None) for name in expected}
        key = tuple(id(m) for m in modules.values())
        if self._inner_cache[0] != key:
            extra = {
                k: self.config[k] for k in ("requires_safety_checker", "force_zeros_for_empty_prompt") if k in optional
            }
            inner = cls(**modules, **extra)
            carry_offload(self._inner_cache[1], inner)
            self._inner_cache = (key, inner)
        inner = self._inner_cache[1]
        inner.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return inner

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        negatives: str | list[str] | None = None,
        negative_weights: list[float] | None = None,
        negative_windows: list[tuple[float, float]] | None = None,
        positives: str | list[str] | None = None,
        positive_weights: list[float] | None = None,
        guidance_mode: str = "perp_neg",
        perp_neg_eps: float = 1e-8,
        negtome=None,
        negtome_reference_images=None,
        negtome_reference_masks=None,
        negative_mode: str = "auto",
        nag: NAGSettings | None = None,
        max_rows_per_forward: int | None = None,
        **kwargs: Any,
    ):
        """Generate. All arguments of the family's diffusers pipeline are accepted with their usual meaning.

        Args:
            negatives: negative prompts removed with Perp-Neg (or plainly, ``guidance_mode="plain"``).
            negative_weights: one weight >= 0 per negative (default 1.0; the paper's 2D examples use 1-2).
            negative_windows: one ``(start, end)`` per negative in fractions of the run (delayed negatives).
            positives, positive_weights: extra positive prompts composed perpendicular to the main one.
            guidance_mode: ``"perp_neg"`` or ``"plain"`` (negatives replace the unconditional branch).
            negtome: a :class:`~negguide.negtome.NegToMeSettings` to run negative token merging in the same call
                (each branch is its own group: negative prompts' rows are never references for the images).
            negtome_reference_images, negtome_reference_masks: NegToMe's reference mode (images to move away from).
            negative_mode: where ``negatives`` act. ``"auto"`` (default): CFG-based guidance (Perp-Neg or plain)
                where CFG is on, NAG (normalized attention guidance) where it is off: ``guidance_scale <= 1``
                (SD/SDXL/SD3), Flux without true CFG (``true_cfg_scale <= 1``, or neither ``negative_prompt`` nor
                ``negatives``: :meth:`FamilyAdapter.cfg_enabled`), or a pipeline flagged
                ``pipe.negguide_cfg_free = True``. ``"cfg"``: CFG-based only; ``"nag"``: NAG only (CFG, if on,
                stays plain CFG); ``"both"``: both. A negative that can act on neither path warns
                (:class:`NegativeIgnoredWarning`).
            nag: a :class:`~negguide.nag.NAGSettings` with NAG's tau/alpha/mode/blocks/weights (default: the
                family's); its ``negatives``, if any, replace ``negatives`` on the NAG path. NAG weights are
                NAG's scale ``s`` (``nag.negative_weights``, family default 2-4), not ``negative_weights`` (whose 0
                still switches a negative off on both paths); ``negative_windows`` apply to both paths unless
                ``nag.negative_windows`` is given.
            max_rows_per_forward: memory bound: at most this many batch rows per denoiser forward (the K + 2 branch
                rows of a step run in chunks, outputs concatenated; same result up to float noise, slower). None
                (default): one forward per step. Not with ``negtome`` or NAG.
        """
        check_negative_mode(negative_mode, nag)
        if negtome is not None and not isinstance(negtome, NegToMeSettings):
            raise TypeError(
                f"negtome must be a NegToMeSettings (from negguide.negtome import NegToMeSettings), "
                f"got {type(negtome).__name__}"
            )
        settings = PerpNegSettings(
            negatives=negatives,
            negative_weights=negative_weights,
            negative_windows=negative_windows,
            positives=positives,
            positive_weights=positive_weights,
            mode=guidance_mode,
            eps=perp_neg_eps,
        )
        inner = self.family_pipeline()
        call = self._check_call(inner, prompt, kwargs)
        settings, nag_settings = self._route(inner, call, settings, negative_mode, nag)
        check_max_rows(max_rows_per_forward, negtome=negtome is not None, nag=nag_settings is not None)
        denoiser = getattr(self, get_adapter(self.family).denoiser_attr)
        if getattr(denoiser, "_negguide_negtome", None) is not None:
            raise ValueError(
                "NegToMe is already applied to this pipeline's denoiser; remove it and pass negtome= instead"
            )
        if negtome is None:
            if negtome_reference_images is not None or negtome_reference_masks is not None:
                raise ValueError("negtome_reference_images need negtome=NegToMeSettings(...) as well")
            with RowChunking(denoiser, max_rows_per_forward, get_adapter(self.family).latent_key):
                return self._generate(inner, call, settings, nag_settings)
        from negguide.negtome.hooks import NegToMeHandle

        images = self._images_per_branch(call)
        handle = NegToMeHandle(
            denoiser,
            self.family,
            negtome,
            lambda rows: max(1, rows // images),
            inner.scheduler,
            self.vae,
            negtome_reference_images,
            negtome_reference_masks,
            getattr(type(inner), "_pack_latents", None),
        )
        if call.get("height") and call.get("width"):
            handle.check_size(call["height"], call["width"])
        with handle:
            return self._generate(inner, call, settings, nag_settings)

    # ------------------------------------------------------------------ negative routing (CFG-based vs NAG)
    def _scale(self, inner, call: dict) -> float:
        adapter = get_adapter(self.family)
        scale = call.get(adapter.scale_argument, call_defaults(inner).get(adapter.scale_argument))
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"{adapter.scale_argument} = {scale!r} must be a finite number")
        return scale

    def cfg_free(self) -> bool:
        """Whether this pipeline (or its denoiser) is flagged ``negguide_cfg_free = True``."""
        denoiser = getattr(self, get_adapter(self.family).denoiser_attr, None)
        return bool(getattr(self, CFG_FREE_ATTR, False) or getattr(denoiser, CFG_FREE_ATTR, False))

    def _route(self, inner, call: dict, settings: PerpNegSettings, mode: str, nag: NAGSettings | None):
        """(Perp-Neg settings, NAG settings or None) for this call's ``negative_mode``; warns where negatives
        would have no effect."""
        adapter = get_adapter(self.family)
        scale = self._scale(inner, call)
        routed = route(
            settings,
            nag,
            mode,
            CallGuidance(
                scale,
                adapter.scale_argument,
                adapter.cfg_enabled(call, scale, has_negatives=any(w > 0 for w in settings.negative_weights)),
                self.cfg_free(),
                call.get("negative_prompt") is not None or call.get("negative_prompt_embeds") is not None,
            ),
        )
        for message in routed.warnings:
            warnings.warn(message, NegativeIgnoredWarning, stacklevel=4)  # the caller (past no_grad)
        return routed.settings, routed.nag

    def _nag_handle(self, inner, call: dict, nag_settings: NAGSettings, rows):
        from negguide.nag.hooks import NAGHandle, NAGProgress, encode_negatives

        options = {k: call[k] for k in ("clip_skip", "max_sequence_length") if call.get(k) is not None}
        contexts = encode_negatives(inner, self.family, nag_settings.negatives, options)
        denoiser = getattr(self, get_adapter(self.family).denoiser_attr)
        return NAGHandle(denoiser, self.family, nag_settings, contexts, rows, NAGProgress(scheduler=inner.scheduler))

    @staticmethod
    def _batch_size(call: dict) -> int:
        prompt = call["prompt"]
        return len(prompt) if isinstance(prompt, list) else 1 if prompt is not None else call["prompt_embeds"].shape[0]

    def _images_per_branch(self, call: dict) -> int:
        return self._batch_size(call) * (call.get("num_images_per_prompt", 1) or 1)

    def _generate(self, inner, call: dict, settings: PerpNegSettings, nag_settings: NAGSettings | None = None):
        adapter = get_adapter(self.family)
        scale = self._scale(inner, call)
        cfg_on = adapter.cfg_enabled(call, scale, has_negatives=not settings.is_noop)
        if settings.is_noop and not cfg_on:
            self.step_records = []
            if nag_settings is None:
                return inner(**call)  # nothing to guide: the plain diffusers call
            with self._nag_handle(inner, call, nag_settings, None):  # no CFG inside: every row is guided
                return inner(**call)
        for name in UNSUPPORTED_WITH_BRANCHES:
            if call.get(name) is not None:
                raise ValueError(f"{name} is not supported by PerpNegPipeline yet; call the diffusers pipeline for it")

        device = inner._execution_device
        batch_size = self._batch_size(call)
        per_prompt = call.get("num_images_per_prompt", 1) or 1
        call = check_shared_embeds(call, batch_size)
        positive, uncond = adapter.encode_pair(inner, call, batch_size, per_prompt, device)
        uncond = repeat_per_image(uncond, positive, per_prompt)
        branches = {UNCOND: uncond}
        texts = settings.positives + settings.negatives
        if texts:
            options = {k: call[k] for k in ("clip_skip", "max_sequence_length") if call.get(k) is not None}
            encoded = adapter.encode(inner, [t for t in texts for _ in range(batch_size)], per_prompt, device, options)
            for i, part in enumerate(split_conditioning(encoded, len(texts))):
                branches[
                    f"positive:{i}" if i < len(settings.positives) else f"negative:{i - len(settings.positives)}"
                ] = part
        for name, conditioning in branches.items():
            check_conditioning(adapter, "negative_prompt_embeds" if name == UNCOND else name, conditioning, positive)

        plan = _make_plan(settings, cfg_on)
        combine = _make_combiner(settings, scale, call.get("guidance_rescale", 0.0) or 0.0)
        hook = MultiBranchDenoiser(
            getattr(self, adapter.denoiser_attr),
            adapter,
            branches,
            plan,
            combine,
            num_steps=lambda: getattr(inner, "_num_timesteps", None) or len(inner.scheduler.timesteps),
        )
        nag_handle = contextlib.nullcontext()
        if nag_settings is not None:

            def rows(total: int) -> slice:  # NAG guides the positive branch's rows of the batched step
                names = hook._pending[-1][0] if hook._pending else [POSITIVE]
                count = total // len(names)
                index = names.index(POSITIVE)
                return slice(index * count, (index + 1) * count)

            nag_handle = self._nag_handle(inner, call, nag_settings, rows)
        with hook, nag_handle:
            output = inner(**{**call, **adapter.inner_overrides(call)})
        self.step_records = hook.records
        return output

    def _check_call(self, inner, prompt, kwargs: dict) -> dict:
        """Reject arguments the family's pipeline does not know, before any compute."""
        import inspect

        accepted = set(inspect.signature(type(inner).__call__).parameters) - {"self"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise TypeError(
                f"{type(inner).__name__} does not take {unknown}; negguide adds negatives, negative_weights, "
                f"negative_windows, positives, positive_weights, guidance_mode, perp_neg_eps, negative_mode, nag and "
                f"max_rows_per_forward"
            )
        if (prompt is None) == (kwargs.get("prompt_embeds") is None):
            raise ValueError("give exactly one of prompt and prompt_embeds")
        call = {"prompt": prompt, **kwargs}
        denoiser = getattr(self, get_adapter(self.family).denoiser_attr)
        check_call(self.family, call, getattr(denoiser, "dtype", None), size_multiple(self.family, inner))
        return call


def _make_plan(settings: PerpNegSettings, cfg_on: bool):
    """Which branches a step computes: zero-weight and out-of-window negatives are never computed."""
    extras = [f"positive:{k}" for k, v in enumerate(settings.positive_weights) if v > 0]

    def plan(step: int, total: int) -> list:
        active = [
            f"negative:{i}"
            for i, (w, window) in enumerate(zip(settings.negative_weights, settings.negative_windows))
            if w > 0 and is_active(window, step, total)
        ]
        if settings.mode == "plain" and active:
            return active + [POSITIVE]
        if settings.mode == "perp_neg" and (active or extras):
            return [UNCOND, POSITIVE] + extras + active
        return [UNCOND, POSITIVE] if cfg_on else [POSITIVE]

    return plan


def _make_combiner(settings: PerpNegSettings, scale: float, guidance_rescale: float):
    def weight_of(name: str) -> float:
        kind, index = name.split(":")
        return (settings.negative_weights if kind == "negative" else settings.positive_weights)[int(index)]

    def combine(preds: dict, step: int, total: int) -> torch.Tensor:
        positive = preds[POSITIVE]
        negs = [n for n in preds if n.startswith("negative:")]
        extras = [n for n in preds if n.startswith("positive:")]
        if settings.mode == "plain" and negs:
            guided = plain_negative_combine(positive, scale, [preds[n] for n in negs], [weight_of(n) for n in negs])
        elif negs or extras:
            guided = perp_neg_combine(
                preds[UNCOND],
                positive,
                scale,
                [preds[n] for n in negs],
                [weight_of(n) for n in negs],
                [preds[n] for n in extras],
                [weight_of(n) for n in extras],
                eps=settings.eps,
            )
        else:
            guided = cfg_combine(preds[UNCOND], positive, scale)
        if guidance_rescale > 0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            guided = rescale_noise_cfg(guided, positive, guidance_rescale=guidance_rescale)
        return guided

    return combine
