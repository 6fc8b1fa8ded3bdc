"""Perp-Neg: several weighted negatives removed perpendicular to the prompt (Armandpour et al., 2023).

The settings import without torch (the CLI's help reads them); the pipeline (diffusers) loads on first use."""

from negguide._lazy import lazy_exports
from negguide.perpneg.settings import PerpNegSettings

__getattr__, __dir__ = lazy_exports(__name__, {"PerpNegPipeline": "negguide.perpneg.pipeline"})

__all__ = ["PerpNegPipeline", "PerpNegSettings"]
