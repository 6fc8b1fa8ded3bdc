"""NAG: normalized attention guidance, negative prompts inside attention (Chen et al., arXiv 2505.21179).

The settings import without torch (the CLI's help reads them); the math and the hooks load on first use.
"""

from negguide._lazy import lazy_exports
from negguide.nag.settings import FAMILY_DEFAULTS, NAGSettings

_EXPORTS = {
    "nag_combine": "negguide.nag.math",
    "NAGHandle": "negguide.nag.hooks",
    "NAGProcessor": "negguide.nag.processor",
    "NAGProgress": "negguide.nag.hooks",
    "apply": "negguide.nag.hooks",
    "remove": "negguide.nag.hooks",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "FAMILY_DEFAULTS",
    "NAGHandle",
    "NAGProcessor",
    "NAGProgress",
    "NAGSettings",
    "apply",
    "nag_combine",
    "remove",
]
