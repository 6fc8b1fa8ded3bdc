"""The batched multi-branch denoising core shared by every guidance method, with per-family adapters.

The names load on first use, so ``negguide.core.settings`` (the settings validator) imports without torch."""

from negguide._lazy import lazy_exports

_EXPORTS = {
    "ADAPTERS": "negguide.core.families",
    "FamilyAdapter": "negguide.core.families",
    "call_defaults": "negguide.core.families",
    "detect_family": "negguide.core.families",
    "get_adapter": "negguide.core.families",
    "POSITIVE": "negguide.core.multibranch",
    "MultiBranchDenoiser": "negguide.core.multibranch",
    "StepRecord": "negguide.core.multibranch",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ADAPTERS",
    "POSITIVE",
    "FamilyAdapter",
    "MultiBranchDenoiser",
    "StepRecord",
    "call_defaults",
    "detect_family",
    "get_adapter",
]
