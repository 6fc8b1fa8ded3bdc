"""diffusers custom-pipeline entry point for NegToMe (needs `pip install negguide`).

    DiffusionPipeline.from_pretrained(model, custom_pipeline="path/to/negguide/pipelines/negtome", trust_remote_code=True)

loads any SD1.x/2.x, SDXL, SD3 or Flux checkpoint as a negguide NegToMePipeline.
"""

from negguide.negtome.pipeline import NegToMePipeline  # noqa: F401  (the one DiffusionPipeline class diffusers finds)
