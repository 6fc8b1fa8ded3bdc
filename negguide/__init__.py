"""negguide: negative guidance for Hugging Face diffusers (Perp-Neg, NegToMe, ReNeg, DiffusionNFT)."""

from __future__ import annotations

from negguide._lazy import lazy_exports

__version__ = "0.2.0.dev0"

_EXPORTS = {
    "PerpNegPipeline": "negguide.perpneg.pipeline",
    "PerpNegSettings": "negguide.perpneg.settings",
    "NegToMePipeline": "negguide.negtome.pipeline",
    "NegToMeSettings": "negguide.negtome.settings",
    "view_weights": "negguide.guidance.views",
    "sds_gradient": "negguide.guidance.views",
    "perp_neg_combine": "negguide.guidance.combine",
    "PerpNegGuider": "negguide.guiders.perpneg",
    "NAGGuider": "negguide.guiders.nag",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
