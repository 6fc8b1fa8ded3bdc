"""ReNeg: negative embeddings learned from a reward (Li et al., arXiv 2412.19637).

``ReNegConfig`` imports without torch (the CLI's help reads it); the other names load on first use."""

from negguide._lazy import lazy_exports
from negguide.reneg.config import ReNegConfig

_EXPORTS = {
    "NegativeEmbedding": "negguide.reneg.embedding",
    "null_embedding": "negguide.reneg.embedding",
    "fit_per_sample": "negguide.reneg.per_sample",
    "load_per_sample": "negguide.reneg.per_sample",
    "per_sample_embedding": "negguide.reneg.per_sample",
    "ReNegTrainer": "negguide.reneg.trainer",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "NegativeEmbedding",
    "ReNegConfig",
    "ReNegTrainer",
    "fit_per_sample",
    "load_per_sample",
    "null_embedding",
    "per_sample_embedding",
]
