"""NAGGuider: normalized attention guidance (Chen et al., arXiv 2505.21179) as a diffusers guider.

NAG puts negative prompts inside the denoiser's attention, so it also works where CFG is off (few-step and
distilled models). Like diffusers' layer-skip guiders, the guider changes the model only for one batch: its
``prepare_models`` installs :class:`~negguide.nag.hooks.NAGHandle`'s attention processors for the conditional
batch, and ``cleanup_models`` (or the end of that batch's forward, even one that raises) restores them, so the
unconditional batch of CFG runs the model untouched. The arguments are :class:`~negguide.nag.NAGSettings`'s fields
plus diffusers' ``guidance_scale``, ``guidance_rescale``, ``start``, ``stop`` and ``enabled``; CFG, when on, is
diffusers' ``ClassifierFreeGuidance`` (same operations).
"""

from __future__ import annotations

import torch
from diffusers.guiders.guider_utils import GuiderOutput

from negguide.core.families import detect_family
from negguide.core.multibranch import POSITIVE
from negguide.guidance.combine import cfg_combine
from negguide.guiders.base import TEXT_FIELDS, UNCOND, BranchGuidance, guider_init
from negguide.nag.settings import NAGSettings


def family_of(denoiser: torch.nn.Module) -> str:
    """The negguide family of a denoiser (ValueError naming the supported ones otherwise)."""
    return detect_family({"unet": denoiser, "transformer": denoiser})


class NAGGuider(BranchGuidance):
    """NAG on the conditional batch, with diffusers' CFG (``guidance_scale``; 1 switches it off) around it.

    Each negative has a scale ``s_i`` (``negative_weights``, family default 2-4) and a window; ``tau``, ``alpha`` and
    ``blocks`` default to the family's values (:data:`negguide.nag.FAMILY_DEFAULTS`). The negatives'
    embeddings come from the pipeline's text encoders: build the pipeline from
    :func:`negguide.guiders.add_negatives`.

        guider = NAGGuider(guidance_scale=1.0, negatives=["blurry"], negative_weights=[3.0])
        pipe.update_components(guider=guider)
    """

    settings_class = NAGSettings
    __init__ = guider_init(NAGSettings)

    def _setup(self, arguments: dict) -> None:
        super()._setup(arguments)
        self._contexts: list = []
        self._handle = None  # this run's NAGHandle (built at the first conditional batch)
        self._installed = None
        self._after = None

    def branches(self) -> list[str]:
        return [POSITIVE, UNCOND] if self.cfg_on() else [POSITIVE]

    def branch_texts(self) -> list[tuple[str, str]]:
        return [(f"nag:{i}", text) for i, text in enumerate(self.settings.negatives)]

    def check_pipeline(self, family: str, denoiser: torch.nn.Module, inputs: dict) -> None:
        super().check_pipeline(family, denoiser, inputs)
        if self.settings.negatives:
            from negguide.nag.hooks import select_attention

            resolved = self.settings.resolved(family, len(self.settings.negatives))  # the family's blocks exist
            select_attention(denoiser, family, resolved.blocks)

    def set_state(self, step: int, num_inference_steps: int, timestep) -> None:
        super().set_state(step, num_inference_steps, timestep)
        self._uninstall()
        if step == 0:
            self._handle = None

    def prepare_inputs(self, data: dict) -> list:
        batches = super().prepare_inputs(data)
        count = len(self.settings.negatives)
        self._contexts = []
        if count and self.guiding():
            field = next((k for k in TEXT_FIELDS if isinstance(data.get(k), tuple) and len(data[k]) >= 2 + count), None)
            if field is None:
                raise ValueError(
                    f"NAGGuider has the negatives {self.settings.negatives} but the pipeline's denoise loop passed the "
                    f"guider no embeddings for them: build the pipeline from negguide.guiders.add_negatives(blocks)"
                )
            self._contexts = list(data[field][2 : 2 + count])
        return batches

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        self._count_prepared += 1
        if not (self.is_conditional and self._contexts):
            return
        from negguide.nag.hooks import NAGHandle, NAGProgress

        self._uninstall()
        if self._handle is None or self._handle.denoiser is not denoiser:  # once per run: the contexts are the run's
            self._handle = NAGHandle(denoiser, family_of(denoiser), self.settings, self._contexts, None, NAGProgress())
        if self.in_run():
            self._handle.progress.set(self._step, self._num_inference_steps)
        else:
            self._handle.progress.reset()
        self._installed = self._handle.install()
        # NAG lives for this one forward: removed after it even when it raises (cleanup_models then never runs)
        self._after = denoiser.register_forward_hook(lambda *args: self._uninstall(), always_call=True)

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        self._uninstall()

    def _uninstall(self) -> None:
        if self._after is not None:
            self._after.remove()
            self._after = None
        if self._installed is not None:
            self._installed.remove()
            self._installed = None

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        pred = pred_cond if pred_uncond is None else cfg_combine(pred_uncond, pred_cond, self.guidance_scale)
        return GuiderOutput(pred=self.finish(pred, pred_cond), pred_cond=pred_cond, pred_uncond=pred_uncond)
