"""PerpNegGuider: Perp-Neg (Armandpour et al., 2023) as a diffusers guider for modular pipelines.

Several weighted negatives, each with its own window, removed perpendicular to the prompt's direction; extra
positives composed perpendicular to it; ``mode="plain"`` replaces the unconditional branch by the negatives. The
arguments are :class:`~negguide.perpneg.PerpNegSettings`'s fields plus diffusers' ``guidance_scale``,
``guidance_rescale``, ``start``, ``stop`` and ``enabled``. The math is :mod:`negguide.guidance.combine`'s, the same
as :class:`~negguide.perpneg.PerpNegPipeline`'s.
"""

from __future__ import annotations

import torch
from diffusers.guiders.guider_utils import GuiderOutput

from negguide.core.multibranch import POSITIVE
from negguide.guidance.combine import cfg_combine, perp_neg_combine, plain_negative_combine
from negguide.guiders.base import UNCOND, BranchGuidance, guider_init
from negguide.perpneg.settings import PerpNegSettings


class PerpNegGuider(BranchGuidance):
    """Perp-Neg guidance: ``e = u + s (D_pos + sum_k v_k perp(D_k, D_pos) - sum_i w_i perp(D_i, D_pos))``.

    A step computes the conditional and unconditional branches, each extra positive of weight > 0 and each negative
    of weight > 0 whose window holds the step; with none of the latter it is diffusers' ``ClassifierFreeGuidance``
    bit for bit. The negatives' and positives' embeddings come from the pipeline's own text encoders: build the
    pipeline from :func:`negguide.guiders.add_negatives`. ``step_records`` lists what each step computed.

        guider = PerpNegGuider(guidance_scale=7.5, negatives=["blurry", "a red circle"],
                               negative_weights=[1.0, 1.5], negative_windows=[(0.0, 1.0), (0.3, 1.0)])
        pipe.update_components(guider=guider)
    """

    settings_class = PerpNegSettings
    __init__ = guider_init(PerpNegSettings)

    def branches(self) -> list[str]:
        if not self.guiding():
            return [POSITIVE]
        s = self.settings
        active = [
            f"negative:{i}"
            for i, (weight, window) in enumerate(zip(s.negative_weights, s.negative_windows))
            if weight > 0 and self.window_open(window)
        ]
        extras = [f"positive:{k}" for k, weight in enumerate(s.positive_weights) if weight > 0]
        if s.mode == "plain" and active:
            return [POSITIVE, *active]
        if s.mode == "perp_neg" and (active or extras):
            return [POSITIVE, UNCOND, *extras, *active]
        return [POSITIVE, UNCOND] if self.cfg_on() else [POSITIVE]

    def branch_texts(self) -> list[tuple[str, str]]:
        s = self.settings
        positives = [(f"positive:{k}", t) for k, (t, w) in enumerate(zip(s.positives, s.positive_weights)) if w > 0]
        negatives = [(f"negative:{i}", t) for i, (t, w) in enumerate(zip(s.negatives, s.negative_weights)) if w > 0]
        return positives + negatives

    def needs_unconditional(self) -> bool:
        if not self._enabled:
            return False
        return super().needs_unconditional() or (self.settings.mode == "perp_neg" and bool(self.branch_texts()))

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None, **branches) -> GuiderOutput:
        s = self.settings
        negatives = [(int(k.rpartition("_")[2]), v) for k, v in branches.items() if k.startswith("pred_negative_")]
        extras = [(int(k.rpartition("_")[2]), v) for k, v in branches.items() if k.startswith("pred_positive_")]
        if s.mode == "plain" and negatives:
            pred = plain_negative_combine(
                pred_cond, self.guidance_scale, [v for _, v in negatives], [s.negative_weights[i] for i, _ in negatives]
            )
        elif negatives or extras:
            pred = perp_neg_combine(
                pred_uncond,
                pred_cond,
                self.guidance_scale,
                [v for _, v in negatives],
                [s.negative_weights[i] for i, _ in negatives],
                [v for _, v in extras],
                [s.positive_weights[k] for k, _ in extras],
                eps=s.eps,
            )
        elif pred_uncond is not None:
            pred = cfg_combine(pred_uncond, pred_cond, self.guidance_scale)
        else:
            pred = pred_cond
        return GuiderOutput(pred=self.finish(pred, pred_cond), pred_cond=pred_cond, pred_uncond=pred_uncond)
