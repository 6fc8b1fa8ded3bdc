"""NAGSettings: the one validator, per-family defaults and block selectors (no torch needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from negguide.core.settings import field_specs
from negguide.guidance.windows import FULL_WINDOW
from negguide.nag.settings import FAMILY_DEFAULTS, NAGSettings


@pytest.mark.parametrize("family", sorted(FAMILY_DEFAULTS))
def test_resolved_takes_the_family_defaults(family):
    defaults = FAMILY_DEFAULTS[family]
    s = NAGSettings(negatives=["blurry", "a red circle"]).resolved(family)
    assert s.negative_weights == [defaults["weight"]] * 2 and s.negative_windows == [FULL_WINDOW] * 2
    assert (s.tau, s.alpha, s.blocks) == (defaults["tau"], defaults["alpha"], defaults["blocks"])
    given = NAGSettings(negatives="blurry", negative_weights=1.5, tau=3.0, alpha=0.0, negative_windows=(0.2, 1.0))
    s = given.resolved(family)
    assert (s.negatives, s.negative_weights, s.negative_windows) == (["blurry"], [1.5], [(0.2, 1.0)])
    assert (s.tau, s.alpha) == (3.0, 0.0) and s.is_noop


def test_contexts_without_prompts_share_one_weight_and_window():
    s = NAGSettings(negative_weights=2.0, negative_windows=(0.0, 0.5)).resolved("sd", count=3)
    assert s.negative_weights == [2.0] * 3 and s.negative_windows == [(0.0, 0.5)] * 3
    assert NAGSettings().resolved("flux", count=2).negative_weights == [4.0, 4.0]
    with pytest.raises(ValueError, match="negative_weights has 2 entries"):
        NAGSettings(negative_weights=[1.0, 2.0]).resolved("sd", count=3)
    with pytest.raises(ValueError, match="3 negative contexts were given for 1 negative prompts"):
        NAGSettings(negatives=["blurry"]).resolved("sd", count=3)


@pytest.mark.parametrize(
    "family, blocks",
    [("sd", ["up"]), ("sdxl", ["down", "mid"]), ("sd", ["up_blocks.1"]), ("sd3", ["transformer_blocks.0"])]
    + [("flux", ["single"]), ("flux", ["joint", "single_transformer_blocks.0"])],
)
def test_block_selectors(family, blocks):
    assert NAGSettings(blocks=blocks).resolved(family).blocks == tuple(blocks)


@pytest.mark.parametrize("family, blocks", [("sd3", ["single"]), ("sd", ["joint"]), ("flux", ["up"]), ("sdxl", ["x"])])
def test_unknown_blocks_name_the_choices(family, blocks):
    with pytest.raises(ValueError, match=f"{family} models do not have"):
        NAGSettings(blocks=blocks).resolved(family)


def test_unknown_family_and_specs():
    with pytest.raises(ValueError, match="family"):
        NAGSettings().resolved("kandinsky")
    specs = field_specs(NAGSettings)
    assert specs["tau"]["min"] == 1.0 and specs["alpha"]["max"] == 1.0 and "mode" not in specs
    assert specs["negative_weights"]["container"] is list and specs["negative_windows"]["length"] == 2


def test_package_imports_light_and_stays_in_its_layer():
    """The settings load without torch; the hooks pull in no CLI, lab or other method (the layers contract)."""
    forbidden = ("negguide.cli", "negguide.shapeworld", "negguide.perpneg", "negguide.negtome", "negguide.reneg")
    code = (
        "import sys, negguide.nag as n; assert 'torch' not in sys.modules; n.NAGSettings(); n.apply; n.nag_combine;"
        f"n.NAGProcessor; print(sorted(m for m in sys.modules if m.startswith({forbidden!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
