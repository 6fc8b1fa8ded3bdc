"""NegToMe: negative token merging inside the denoiser's attention (Singh et al., arXiv 2412.01339).

The settings import without torch (the CLI's help reads them); the math (``merge``), the hooks and the pipeline
load on first use.
"""

from negguide._lazy import lazy_exports
from negguide.negtome.settings import FAMILY_DEFAULTS, NegToMeSettings

_EXPORTS = {
    "match_tokens": "negguide.negtome.merge",
    "merge_batch_group": "negguide.negtome.merge",
    "negative_merge": "negguide.negtome.merge",
    "NegToMeHandle": "negguide.negtome.hooks",
    "apply": "negguide.negtome.hooks",
    "remove": "negguide.negtome.hooks",
    "NegToMePipeline": "negguide.negtome.pipeline",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "NegToMeHandle",
    "NegToMePipeline",
    "NegToMeSettings",
    "FAMILY_DEFAULTS",
    "apply",
    "remove",
    "match_tokens",
    "merge_batch_group",
    "negative_merge",
]
