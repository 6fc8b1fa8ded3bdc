"""NegToMePipeline: text-to-image with negative token merging on any SD1.x/2.x, SDXL, SD3 or Flux checkpoint.

A convenience over :class:`~negguide.PerpNegPipeline` with NegToMe switched on; Perp-Neg negatives still work in the
same call. For a pipeline you already have, ``negguide.negtome.apply(pipe, settings)`` hooks it in place.

    pipe = NegToMePipeline.from_pretrained("assets/shapeworld/sd3")
    images = pipe("a shape", num_images_per_prompt=8, max_sequence_length=0).images          # a more diverse batch
    images = pipe("a circle", reference_images=[red_circle], max_sequence_length=0).images   # away from a reference
"""

from __future__ import annotations

from typing import Any

from negguide.negtome.settings import NegToMeSettings
from negguide.perpneg.pipeline import PerpNegPipeline


class NegToMePipeline(PerpNegPipeline):
    """PerpNegPipeline with NegToMe on by default (``negtome=NegToMeSettings()``)."""

    def __call__(
        self,
        prompt=None,
        *,
        negtome: NegToMeSettings | None = None,
        reference_images=None,
        reference_masks=None,
        **kwargs: Any,
    ):
        """Generate with NegToMe.

        Args:
            negtome: the settings (default ``NegToMeSettings()`` with the family's defaults).
            reference_images: PIL RGB images or tensors in [0, 1] of the output size to move away from; without
                them the images of the batch are pushed apart (diversity).
            reference_masks: one mask per reference image (white/True = the region to avoid).
            **kwargs: the family's diffusers arguments and PerpNegPipeline's (negatives, negative_weights, ...).
        """
        return super().__call__(
            prompt,
            negtome=NegToMeSettings() if negtome is None else negtome,
            negtome_reference_images=reference_images,
            negtome_reference_masks=reference_masks,
            **kwargs,
        )
