"""NegToMe: negative token merging inside the denoiser's attention (Singh et al., arXiv 2412.01339)."""

from .hooks import NegToMeHandle, apply, remove
from .merge import match_tokens, merge_batch_group, negative_merge
from .pipeline import NegToMePipeline
from .settings import FAMILY_DEFAULTS, NegToMeSettings

__all__ = ["NegToMeHandle", "NegToMePipeline", "NegToMeSettings", "FAMILY_DEFAULTS", "apply", "remove",
           "match_tokens", "merge_batch_group", "negative_merge"]
