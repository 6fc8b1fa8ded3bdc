"""ShapeWorld vocabulary, sampler, renderer, captions and caption parsing."""

import numpy as np
import pytest

from negguide.shapeworld.world import (
    COLOURS,
    FAVOURITE_COLOUR,
    SHAPES,
    CaptionProbs,
    ObjectSpec,
    Scene,
    ShapeObject,
    make_dataset,
    parse_caption,
    render,
    sample_caption,
    sample_scene,
)


def _scenes(seed, n, **kw):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, **kw) for _ in range(n)]


def test_same_seed_same_scenes_and_images():
    a, b = _scenes(3, 20), _scenes(3, 20)
    assert a == b
    assert all(np.array_equal(render(x), render(y)) for x, y in zip(a, b))
    assert _scenes(4, 20) != a


def test_make_dataset_deterministic_and_shaped():
    imgs, caps, scenes = make_dataset(16, seed=5, size=32)
    imgs2, caps2, _ = make_dataset(16, seed=5, size=32)
    assert imgs.shape == (16, 3, 32, 32) and imgs.dtype.is_floating_point
    assert float(imgs.min()) >= 0.0 and float(imgs.max()) <= 1.0
    assert caps == caps2 and bool((imgs == imgs2).all())
    assert make_dataset(16, seed=6, size=32)[1] != caps


def test_favourite_colour_about_half_and_all_pairs_appear():
    scenes = _scenes(0, 3000, two_object_prob=0.0)
    objs = [sc.objects[0] for sc in scenes]
    for shape, fav in FAVOURITE_COLOUR.items():
        cols = [o.colour for o in objs if o.shape == shape]
        frac = np.mean([c == fav for c in cols])
        assert 0.45 < frac < 0.55, (shape, frac)
        for c in COLOURS:
            if c != fav:  # each other colour gets about a sixth
                assert 0.12 < np.mean([x == c for x in cols]) < 0.22
    shape_freq = [np.mean([o.shape == s for o in objs]) for s in SHAPES]
    assert all(0.29 < f < 0.38 for f in shape_freq)


def test_two_object_scenes_one_per_half_and_inside_the_image():
    for sc in _scenes(1, 500, two_object_prob=1.0):
        left, right = sc.objects
        assert left.half == "left" and right.half == "right"
        assert left.cx + left.size < 0.5 < right.cx - right.size
        for o in sc.objects:
            assert 0 < o.cx - o.size and o.cx + o.size < 1 and 0 < o.cy - o.size and o.cy + o.size < 1


def test_render_white_background_and_colour_at_centre():
    obj = ShapeObject("blue", "square", 0.5, 0.5, 0.2, COLOURS["blue"])
    img = render(Scene((obj,)), size=64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[2, 2]) == (255, 255, 255)
    assert tuple(img[32, 32]) == COLOURS["blue"]
    # a square fills its box, a circle pi/4 of it, a triangle half of it
    areas = {}
    for shape in SHAPES:
        im = render(Scene((ShapeObject("red", shape, 0.5, 0.5, 0.25, COLOURS["red"]),)), size=128)
        areas[shape] = (255 - im[..., 1].astype(float)).sum() / (255 - COLOURS["red"][1]) / 64**2
    assert areas["square"] == pytest.approx(1.0, abs=0.02)
    assert areas["circle"] == pytest.approx(np.pi / 4, abs=0.02)
    assert areas["triangle"] == pytest.approx(0.5, abs=0.02)


def test_triangle_is_upright():
    img = render(Scene((ShapeObject("green", "triangle", 0.5, 0.5, 0.3, COLOURS["green"]),)), size=64)
    coloured = img.min(-1) < 200
    rows = coloured.sum(1)
    top, bottom = rows[:32].sum(), rows[32:].sum()
    assert bottom > 2 * top


def test_captions_are_true_of_their_scene():
    rng = np.random.default_rng(2)
    kinds = set()
    for sc in _scenes(2, 400):
        cap = sample_caption(sc, rng)
        parsed = parse_caption(cap)
        if cap == "":
            kinds.add("empty")
            continue
        assert len(parsed.objects) == len(sc.objects)
        if len(sc.objects) == 1:
            spec, obj = parsed.objects[0], sc.objects[0]
            assert spec.colour in (None, obj.colour) and spec.shape in (None, obj.shape)
            kinds.add(("single", spec.colour is not None, spec.shape is not None))
        else:
            kinds.add(("pair", parsed.relation))
    assert "empty" in kinds and ("single", True, True) in kinds and ("single", False, False) in kinds
    assert ("pair", "left_of") in kinds and ("pair", "right_of") in kinds and ("pair", None) in kinds


def test_empty_caption_rate_follows_probs():
    rng = np.random.default_rng(0)
    scenes = _scenes(9, 2000)
    rate = np.mean([sample_caption(sc, rng, CaptionProbs(empty=0.25)) == "" for sc in scenes])
    assert 0.22 < rate < 0.28


@pytest.mark.parametrize(
    "text, objects, relation",
    [
        ("a red circle", (ObjectSpec("red", "circle"),), None),
        ("A circle.", (ObjectSpec(None, "circle"),), None),
        ("a red shape", (ObjectSpec("red", None),), None),
        ("a shape", (ObjectSpec(None, None),), None),
        ("", (), None),
        ("a red circle and a blue square", (ObjectSpec("red", "circle"), ObjectSpec("blue", "square")), None),
        (
            "a red circle to the left of a blue square",
            (ObjectSpec("red", "circle"), ObjectSpec("blue", "square")),
            "left_of",
        ),
        ("a green triangle to the right of a shape", (ObjectSpec("green", "triangle"), ObjectSpec()), "right_of"),
    ],
)
def test_parse_caption(text, objects, relation):
    parsed = parse_caption(text)
    assert parsed.objects == objects and parsed.relation == relation


def test_parse_caption_attributes_list():
    attrs = parse_caption("a red circle to the left of a square").attributes()
    assert attrs == [(0, "colour", "red"), (0, "shape", "circle"), (1, "shape", "square"), (-1, "relation", "left_of")]


@pytest.mark.parametrize("bad", ["a purple circle", "a red hexagon", "two circles", "a red circle and"])
def test_parse_caption_rejects_unknown_words(bad):
    with pytest.raises(ValueError):
        parse_caption(bad)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="Generator"):
        sample_scene(42)
    with pytest.raises(ValueError, match="two_object_prob"):
        sample_scene(np.random.default_rng(0), two_object_prob=1.5)
    with pytest.raises(ValueError, match="colour"):
        ShapeObject("purple", "circle", 0.5, 0.5, 0.2, (0, 0, 0))
    with pytest.raises(ValueError, match="size"):
        render(_scenes(0, 1)[0], size=4)
    with pytest.raises(TypeError, match="caption must be a str"):
        parse_caption(None)
    with pytest.raises(ValueError, match="n="):
        make_dataset(0, seed=0)
