"""Where a call's negatives act: CFG-based guidance (Perp-Neg or plain), NAG, or both (no torch here).

``negative_mode="auto"`` sends the negatives to CFG-based guidance where CFG is on and to NAG where it is off
(scale <= 1, Flux without true CFG, or a model flagged :data:`CFG_FREE_ATTR`). A negative that can act on neither
path is reported (:class:`NegativeIgnoredWarning`) with the setting that would make it work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from negguide.nag.settings import NAGSettings

NEGATIVE_MODES = ("auto", "cfg", "nag", "both")
#: set ``pipe.negguide_cfg_free = True`` (on the PerpNegPipeline or on its denoiser) for a model meant to run
#: without CFG (few-step, distilled, DiffusionNFT-trained): ``negative_mode="auto"`` then sends negatives to NAG
#: even when a CFG scale above 1 is given.
CFG_FREE_ATTR = "negguide_cfg_free"


class NegativeIgnoredWarning(UserWarning):
    """Negatives were given but, with this call's settings, neither CFG-based guidance nor NAG can use them."""


@dataclass
class CallGuidance:
    """What one pipeline call's guidance looks like, as the router needs it."""

    scale: float  # the CFG scale of the call
    scale_argument: str  # its name (guidance_scale, or Flux's true_cfg_scale)
    cfg_on: bool  # whether the unconditional branch is in use (the family's rule)
    cfg_free: bool = False  # the pipeline or its denoiser is flagged CFG_FREE_ATTR
    negative_prompt: bool = False  # the call gives diffusers' own negative_prompt / negative_prompt_embeds


@dataclass
class Route:
    """The CFG-path settings (Perp-Neg's, with the negatives NAG took removed), NAG's (None: no NAG) and the
    warnings the call must raise."""

    settings: Any
    nag: NAGSettings | None
    warnings: list[str] = field(default_factory=list)


def check_negative_mode(mode, nag) -> None:
    if mode not in NEGATIVE_MODES:
        raise ValueError(f"negative_mode = {mode!r}; choose one of {list(NEGATIVE_MODES)}")
    if nag is not None and not isinstance(nag, NAGSettings):
        raise TypeError(f"nag must be a NAGSettings (from negguide.nag import NAGSettings), got {type(nag).__name__}")


def route(settings, nag: NAGSettings | None, mode: str, call: CallGuidance) -> Route:
    """Split the negatives of ``settings`` (a PerpNegSettings) between the CFG path and NAG for ``mode``."""
    check_negative_mode(mode, nag)
    warnings = []
    active = any(w > 0 for w in settings.negative_weights)
    if call.negative_prompt and not call.cfg_on:
        warnings.append(
            f"negative_prompt is ignored at {call.scale_argument} = {call.scale} (CFG off): pass the text as "
            f"negatives=[...] (NAG uses it without CFG) or set {call.scale_argument} > 1"
        )
    if mode == "auto":
        mode = "cfg" if call.cfg_on and not call.cfg_free else "nag"
    # NAG takes the negatives whose (Perp-Neg) weight is not 0: weight 0 switches a negative off on both paths
    kept = [i for i, w in enumerate(settings.negative_weights) if w > 0]
    own = nag is not None and bool(nag.negatives)
    nag_negatives = list(nag.negatives) if own else [settings.negatives[i] for i in kept]
    nag_windows = [settings.negative_windows[i] for i in kept]
    if mode == "cfg":
        if own:
            raise ValueError("nag.negatives need negative_mode='nag', 'both' or 'auto' (CFG off)")
        if settings.negatives and active and call.scale <= 0:
            warnings.append(
                f"{call.scale_argument} = {call.scale} multiplies the CFG-based guidance by 0: the negatives "
                f"{settings.negatives} have no effect; use negative_mode='nag' (or 'auto') or "
                f"{call.scale_argument} > 1"
            )
        return Route(settings, None, warnings)
    if mode == "nag":  # the negatives leave the CFG path (extra positives stay)
        settings = replace(settings, negatives=[], negative_weights=[], negative_windows=[])
    if not nag_negatives:
        return Route(settings, None, warnings)
    base = nag or NAGSettings()
    weights = base.negative_weights
    if weights is not None and len(weights) == 1 and len(nag_negatives) > 1 and not base.negatives:
        weights = weights * len(nag_negatives)
    windows = base.negative_windows
    if windows is None and not own:
        windows = nag_windows
    nag = replace(base, negatives=nag_negatives, negative_weights=weights, negative_windows=windows)
    return Route(settings, nag, warnings)
