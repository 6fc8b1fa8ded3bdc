"""Guidance combiners: pure tensor functions of branch predictions, step and settings.

The names load on first use: ``windows`` and ``constants`` import without torch (the settings use them)."""

from negguide._lazy import lazy_exports

_EXPORTS = {
    "cfg_combine": "negguide.guidance.combine",
    "perp_neg_combine": "negguide.guidance.combine",
    "perpendicular": "negguide.guidance.combine",
    "plain_negative_combine": "negguide.guidance.combine",
    "ViewWeights": "negguide.guidance.views",
    "blend_view_embeddings": "negguide.guidance.views",
    "sds_gradient": "negguide.guidance.views",
    "view_weights": "negguide.guidance.views",
    "FULL_WINDOW": "negguide.guidance.windows",
    "active_mask": "negguide.guidance.windows",
    "is_active": "negguide.guidance.windows",
    "validate_window": "negguide.guidance.windows",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "FULL_WINDOW",
    "ViewWeights",
    "active_mask",
    "blend_view_embeddings",
    "cfg_combine",
    "is_active",
    "perp_neg_combine",
    "perpendicular",
    "plain_negative_combine",
    "sds_gradient",
    "validate_window",
    "view_weights",
]
