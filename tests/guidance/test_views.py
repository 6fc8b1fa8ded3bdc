"""View-dependent weights (threestudio and stable-dreamfusion schemes) and the SDS gradient helper."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from negguide.guidance import blend_view_embeddings, cfg_combine, perp_neg_combine, sds_gradient, view_weights


def test_threestudio_key_angles():
    front = view_weights(0.0)
    assert front.positive_blend == {"front": 1.0, "side": 0.0}
    assert front.negative_weights["front"] == pytest.approx(0.0, abs=1e-3)  # f_fs(1) = 4 e^-0.5 - 2.426
    assert front.negative_weights["side"] == pytest.approx(4 - 2.426)  # f_sf(0)
    side = view_weights(90.0)
    assert side.positive_blend == {"side": 1.0, "back": 0.0}
    assert side.negative_weights["side"] == pytest.approx(0.0, abs=1e-3)
    assert side.negative_weights["front"] == pytest.approx(math.exp(-0.5) + 0.967)
    back = view_weights(180.0)
    assert back.positive_blend == {"side": 0.0, "back": 1.0}
    assert back.negative_weights["front"] == pytest.approx(1 + 0.967)
    assert view_weights(30.0, elevation=75.0).negative_weights == {}


@settings(max_examples=100, deadline=None)
@example(azimuth=89.99999999999999, elevation=0.0, scheme="threestudio")  # found by hypothesis: wrap asymmetry
@given(
    azimuth=st.floats(-720, 720),
    elevation=st.floats(-90, 60),
    scheme=st.sampled_from(["threestudio", "stable-dreamfusion"]),
)
def test_weights_are_valid_and_symmetric(azimuth, elevation, scheme):
    w = view_weights(azimuth, elevation, scheme=scheme)
    assert sum(w.positive_blend.values()) == pytest.approx(1.0)
    assert all(v >= 0 and math.isfinite(v) for v in w.negative_weights.values())
    mirrored = view_weights(-azimuth, elevation, scheme=scheme)
    assert w.positive_blend == pytest.approx(mirrored.positive_blend)


def test_stable_dreamfusion_gates():
    assert view_weights(0.0, scheme="stable-dreamfusion").negative_weights["front"] == 0.0  # r > 0.8: gate closed
    assert view_weights(60.0, scheme="stable-dreamfusion").negative_weights["front"] == pytest.approx(
        2 * math.exp(-2 / 3)
    )
    assert view_weights(150.0, scheme="stable-dreamfusion").negative_weights["front"] == 2.0


@pytest.mark.parametrize(
    "bad", [dict(azimuth=float("nan")), dict(azimuth=0.0, elevation=120.0), dict(azimuth=0.0, scheme="x")]
)
def test_bad_angles(bad):
    with pytest.raises(ValueError):
        view_weights(**bad)


def test_blend_and_sds_gradient():
    g = torch.Generator().manual_seed(0)
    embeds = {v: torch.randn(1, 77, 32, generator=g) for v in ("front", "side", "back")}
    w = view_weights(45.0)
    torch.testing.assert_close(blend_view_embeddings(w, embeds), 0.5 * embeds["front"] + 0.5 * embeds["side"])
    with pytest.raises(ValueError, match="lacks"):
        blend_view_embeddings(view_weights(10.0, 80.0), embeds)
    noise, u, pos, neg = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(4))
    torch.testing.assert_close(sds_gradient(noise, u, pos, 100.0), cfg_combine(u, pos, 100.0) - noise)
    weights = torch.tensor([[0.5, 2.0]])  # per camera
    grad = sds_gradient(noise, u, pos, 100.0, [neg], weights, weighting=torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(grad[1:], 0.5 * (perp_neg_combine(u[1:], pos[1:], 100.0, [neg[1:]], [2.0]) - noise[1:]))


def _published_stable_dreamfusion(azimuth: float, negative_w: float, front_decay: float, side_decay: float) -> dict:
    """The stable-dreamfusion scheme as its public code computes it (azimuth in [-180, 180], signed negative_w < 0,
    weights applied with a plus sign; the elevation is not used): {view: weight}, transcribed for this test."""
    if -90 <= azimuth < 90:
        r = 1 - azimuth / 90 if azimuth >= 0 else 1 + azimuth / 90
        front = 0.0 if r > 0.8 else math.exp(-r * front_decay) * negative_w
        side = 0.0 if r < 0.2 else math.exp(-(1 - r) * side_decay) * negative_w
        return {"front": front, "side": side}
    r = 1 - (azimuth - 90) / 90 if azimuth >= 0 else 1 + (azimuth + 90) / 90
    side = 0.0 if r > 0.8 else math.exp(-r * side_decay) * negative_w / 2
    return {"side": side, "front": negative_w}


@pytest.mark.parametrize("front_decay, side_decay, negative_w", [(2.0, 10.0, -2.0), (1.0, 3.0, -1.5), (4.0, 0.5, -3.0)])
def test_stable_dreamfusion_matches_its_published_scheme(front_decay, side_decay, negative_w):
    for azimuth in [a + 0.5 for a in range(-180, 180, 7)]:
        for elevation in (0.0, 75.0):  # the published scheme has no overhead rule
            got = view_weights(
                azimuth, elevation, "stable-dreamfusion", None, -negative_w, front_decay, side_decay
            ).negative_weights
            want = {
                k: -v for k, v in _published_stable_dreamfusion(azimuth, negative_w, front_decay, side_decay).items()
            }
            assert got == pytest.approx(want, abs=1e-12), (azimuth, elevation)


def test_the_overhead_rule_is_an_explicit_option():
    assert view_weights(30.0, 75.0).negative_weights == {}  # threestudio: overhead above 60 degrees by default
    assert view_weights(30.0, 75.0, overhead_elevation=math.inf).negative_weights != {}
    assert view_weights(30.0, 75.0, "stable-dreamfusion").positive_blend != {"overhead": 1.0}
    assert view_weights(30.0, 75.0, "stable-dreamfusion", overhead_elevation=60.0).negative_weights == {}
    with pytest.raises(TypeError, match="overhead_elevation"):
        view_weights(30.0, 75.0, overhead_elevation="high")
