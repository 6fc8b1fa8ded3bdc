"""Guidance combiners: pure tensor functions of branch predictions, step and settings."""

from negguide.guidance.combine import cfg_combine, perp_neg_combine, perpendicular, plain_negative_combine
from negguide.guidance.views import ViewWeights, blend_view_embeddings, sds_gradient, view_weights
from negguide.guidance.windows import FULL_WINDOW, active_mask, is_active, validate_window

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
