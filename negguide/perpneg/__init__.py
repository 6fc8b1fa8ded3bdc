"""Perp-Neg: several weighted negatives removed perpendicular to the prompt (Armandpour et al., 2023)."""

from .pipeline import PerpNegPipeline
from .settings import PerpNegSettings

__all__ = ["PerpNegPipeline", "PerpNegSettings"]
