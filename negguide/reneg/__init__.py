"""ReNeg: negative embeddings learned from a reward (Li et al., arXiv 2412.19637)."""

from .embedding import NegativeEmbedding, null_embedding
from .trainer import ReNegConfig, ReNegTrainer, per_sample_embedding

__all__ = ["NegativeEmbedding", "ReNegConfig", "ReNegTrainer", "null_embedding", "per_sample_embedding"]
