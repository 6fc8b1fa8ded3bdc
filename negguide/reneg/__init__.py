"""ReNeg: negative embeddings learned from a reward (Li et al., arXiv 2412.19637)."""

from negguide.reneg.embedding import NegativeEmbedding, null_embedding
from negguide.reneg.per_sample import fit_per_sample, load_per_sample, per_sample_embedding
from negguide.reneg.trainer import ReNegConfig, ReNegTrainer

__all__ = [
    "NegativeEmbedding",
    "ReNegConfig",
    "ReNegTrainer",
    "fit_per_sample",
    "load_per_sample",
    "null_embedding",
    "per_sample_embedding",
]
