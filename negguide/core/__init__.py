"""The batched multi-branch denoising core shared by every guidance method, with per-family adapters."""

from negguide.core.families import ADAPTERS, FamilyAdapter, call_defaults, detect_family, get_adapter
from negguide.core.multibranch import POSITIVE, MultiBranchDenoiser, StepRecord

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
