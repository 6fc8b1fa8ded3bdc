"""negguide: negative guidance for Hugging Face diffusers (Perp-Neg, NegToMe, ReNeg, DiffusionNFT)."""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "PerpNegPipeline": ("negguide.perpneg.pipeline", "PerpNegPipeline"),
    "PerpNegSettings": ("negguide.perpneg.settings", "PerpNegSettings"),
    "NegToMePipeline": ("negguide.negtome.pipeline", "NegToMePipeline"),
    "NegToMeSettings": ("negguide.negtome.settings", "NegToMeSettings"),
    "view_weights": ("negguide.guidance.views", "view_weights"),
    "sds_gradient": ("negguide.guidance.views", "sds_gradient"),
    "perp_neg_combine": ("negguide.guidance.combine", "perp_neg_combine"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    """Import heavy submodules (diffusers, transformers) only when their names are used."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'negguide' has no attribute {name!r}")
