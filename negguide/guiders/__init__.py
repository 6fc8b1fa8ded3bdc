"""negguide's guidance as diffusers guiders for modular pipelines: Perp-Neg and NAG.

``PerpNegGuider`` and ``NAGGuider`` follow diffusers' ``BaseGuidance`` contract (set them with
``pipe.update_components(guider=...)``, save them with ``save_pretrained``); ``add_negatives(blocks)`` returns a
family's modular blocks through which a guider receives its negative prompts. The names load on first use (they
import diffusers).
"""

from negguide._lazy import lazy_exports

_EXPORTS = {
    "PerpNegGuider": "negguide.guiders.perpneg",
    "NAGGuider": "negguide.guiders.nag",
    "BranchGuidance": "negguide.guiders.base",
    "GuidanceSettings": "negguide.guiders.fields",
    "add_negatives": "negguide.guiders.blocks",
    "NegativePromptsStep": "negguide.guiders.blocks",
    "NegativesLoopDenoiser": "negguide.guiders.blocks",
    "FluxGuidedLoopDenoiser": "negguide.guiders.flux",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
