"""NAG on ShapeWorld: the efficacy benchmark's CFG-free rows.

Importing this module registers "none at CFG 1" and "nag at CFG 1" with :mod:`negguide.shapeworld.bench`: the
negative scenarios at guidance 1 (no CFG, as a distilled or few-step model runs), without the negative and with
it through NAG (``negative_mode="nag"``, the family's defaults). The CFG-based rows of the same table are the
reference.
"""

from __future__ import annotations

from dataclasses import replace

from negguide.shapeworld.bench import _generate, register_method

CFG_OFF = 1.0  # the guidance scale of the CFG-free rows


@register_method("none at CFG 1")
def _none_cfg_off(pipe, scenario, seed, settings):
    return _generate(pipe, scenario, seed, replace(settings, guidance_scale=CFG_OFF))


@register_method("nag at CFG 1")
def _nag_cfg_off(pipe, scenario, seed, settings):
    return _generate(
        pipe,
        scenario,
        seed,
        replace(settings, guidance_scale=CFG_OFF),
        negatives=[scenario.negative],
        negative_mode="nag",
    )
