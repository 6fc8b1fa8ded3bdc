"""diffusers custom-pipeline entry point for Perp-Neg (needs `pip install negguide`).

    DiffusionPipeline.from_pretrained(model, custom_pipeline="path/to/negguide/pipelines/perp_neg")

loads any SD1.x/2.x, SDXL, SD3 or Flux checkpoint as a negguide PerpNegPipeline.
"""

from negguide.perpneg.pipeline import PerpNegPipeline  # noqa: F401  (the one DiffusionPipeline class diffusers finds)
