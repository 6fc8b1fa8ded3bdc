"""Fuzz the Python API with hostile values: every refusal is a ValueError or TypeError raised by negguide itself
(the traceback's last frame is in negguide/, never inside torch, diffusers or numpy) whose message names the
argument, and a call is refused before any denoiser forward.

Covered: PerpNegPipeline.__call__ and NegToMePipeline (tiny pipelines of every family), the settings dataclasses
(PerpNegSettings, NegToMeSettings, ReNegConfig, NFTConfig: every field, from a table and from hypothesis),
NegativeEmbedding.load and build_reward."""

from __future__ import annotations

import math
import os
import traceback

import pytest
import torch
from helpers import ForwardCounter, call_kwargs, get_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negguide import PerpNegPipeline
from negguide.core.families import get_adapter
from negguide.core.settings import field_specs
from negguide.negtome.pipeline import NegToMePipeline
from negguide.negtome.settings import NegToMeSettings
from negguide.nft.config import NFTConfig
from negguide.perpneg.settings import PerpNegSettings
from negguide.reneg.config import ReNegConfig
from negguide.reneg.embedding import NegativeEmbedding
from negguide.rewards.registry import RewardSourceNotFound, build_reward

NAN, INF = float("nan"), float("inf")
FUZZ = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
NEGGUIDE = os.sep + "negguide" + os.sep


def refusal(call, *names: str) -> str | None:
    """None when ``call()`` raises a ValueError or TypeError from negguide's own code whose message names one of
    ``names``; else what happened instead."""
    try:
        call()
    except (ValueError, TypeError) as error:
        last = traceback.extract_tb(error.__traceback__)[-1]
        if NEGGUIDE not in last.filename:
            return f"{type(error).__name__} raised inside {last.filename}:{last.lineno}: {error}"
        if names and not any(name in str(error) for name in names):
            return f"{type(error).__name__} does not name {names}: {error}"
        return None
    except Exception as error:  # anything else is a bug
        last = traceback.extract_tb(error.__traceback__)[-1]
        return f"{type(error).__name__} from {last.filename}:{last.lineno}: {error}"
    return "accepted"


# ------------------------------------------------------------------------------------------ pipelines
#: argument -> hostile values; every one must be refused before the denoiser runs
CALL_CASES = {
    "negatives": [5, [5], [None], {"a": 1}, b"blue", [["blue"]]],
    "negative_weights": [NAN, INF, -1, "a", [1, 2], [NAN], [INF], [-1], [10**9], True, [True], [None], {}],
    "negative_windows": [(0.5, 0.2), (NAN, 1), [(0, 1, 2)], "x", [(0, NAN)], [(-1, 1)], [(0, 2)], 5, [(0.9, 0.1)]],
    "positives": [5, [3], [None]],
    "positive_weights": [[NAN], [-1], "x", [1, 2]],
    "guidance_mode": ["bogus", None, 1, ""],
    "perp_neg_eps": [0, -1, NAN, INF, "x", None],
    "num_inference_steps": [0, -1, 1.5, NAN, "4", True, 10**6],
    "max_sequence_length": [-1, 10**6, 1.5, "8"],
    "height": [0, -8, NAN, "32", 32.5, True, 2**40, 33],
    "width": [0, -8, "32"],
    "guidance_scale": [NAN, INF, -INF, "x", [1], True],
    "true_cfg_scale": [NAN, "x"],
    "num_images_per_prompt": [0, -1, 1.5, "2", 10**9, True],
    "prompt": [5, [], [1], b"x", [None]],
    "prompt_embeds": ["x", torch.zeros(1, 4, 8, dtype=torch.int64)],
    "negative_prompt_embeds": [[1.0], torch.zeros(1, 4, 8, dtype=torch.float64)],
    "negtome": ["x", 5, {"alpha": 1.0}],
    "negtome_reference_images": ["x", [5], []],
    "no_such_argument": [1],
}
#: argument aliases: what a message may call it (PerpNegSettings' field names)
ALIASES = {"negtome_reference_images": ("reference",)}


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_perp_neg_pipeline_call_refuses_hostile_arguments_before_compute(family):
    pipe = PerpNegPipeline.from_pipe(get_tiny(family))
    counter = ForwardCounter(getattr(pipe, get_adapter(family).denoiser_attr))
    base = {"prompt": "a red circle", **call_kwargs(family, steps=2), "negatives": ["blue"]}
    failures = []
    try:
        for argument, values in CALL_CASES.items():
            for value in values:
                kwargs = {**base, argument: value}
                if argument in ("prompt_embeds",):
                    kwargs["prompt"] = None
                if argument == "negtome_reference_images":
                    kwargs["negtome"] = NegToMeSettings()
                before = counter.calls
                names = (argument, *ALIASES.get(argument, ()))
                problem = refusal(lambda kwargs=kwargs: pipe(**kwargs), *names)
                if counter.calls != before:
                    problem = f"{problem or 'refused'} after {counter.calls - before} denoiser calls"
                if problem:
                    failures.append(f"{argument}={value!r}: {problem}")
    finally:
        counter.remove()
    assert not failures, "\n".join(failures)


def test_negtome_pipeline_refuses_hostile_settings_and_references(family):
    from PIL import Image

    pipe = NegToMePipeline.from_pipe(get_tiny(family))
    counter = ForwardCounter(getattr(pipe, get_adapter(family).denoiser_attr))
    base = {"prompt": "a red circle", **call_kwargs(family, steps=1), "num_images_per_prompt": 2}
    image, other = Image.new("RGB", (32, 32), (200, 0, 0)), Image.new("RGB", (16, 16))
    cases = [
        (dict(negtome=NegToMeSettings(blocks=("no_such_block",))), "blocks"),
        (dict(reference_images="x"), "reference_images"),
        (dict(reference_images=[5]), "reference_images"),
        (dict(reference_images=[]), "reference_images"),
        (dict(reference_images=[other]), "reference images are 16x16"),
        (dict(reference_images=[torch.zeros(3, 16, 16)]), "reference images are 16x16"),
        (dict(reference_images=[torch.zeros(5, 32, 32)]), "reference"),
        (dict(reference_images=[torch.full((3, 32, 32), NAN)]), "reference"),
        (dict(reference_images=[image], reference_masks=["x"]), "reference_masks"),
        (dict(reference_images=[image], reference_masks=[image]), "reference_masks"),
        (dict(reference_images=[image], reference_masks=[Image.new("L", (32, 32))]), "mask"),
        (dict(reference_images=[image], reference_masks=[image, image]), "mask"),
        (dict(reference_masks=[Image.new("L", (32, 32), 255)]), "reference_masks"),
    ]
    failures = []
    try:
        for extra, name in cases:
            before = counter.calls
            problem = refusal(lambda extra=extra: pipe(**{**base, **extra}), name)
            if counter.calls != before:
                problem = f"{problem or 'refused'} after {counter.calls - before} denoiser calls"
            if problem:
                failures.append(f"{list(extra)}: {problem}")
    finally:
        counter.remove()
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------ settings dataclasses
#: one valid set of arguments per class (the fuzzed field replaces its entry)
CLASSES = {
    PerpNegSettings: dict(negatives=["a red circle"]),
    NegToMeSettings: {},
    ReNegConfig: dict(prompts=["a red circle"]),
    NFTConfig: dict(prompts=["a red circle"]),
}
HOSTILE = [
    None,
    NAN,
    INF,
    -INF,
    -1,
    -(10**30),
    10**30,
    1.5,
    0,
    "",
    "x",
    b"x",
    True,
    [],
    [NAN],
    [None],
    ["x"],
    (1.0, NAN),
    (0.9, 0.1),
    {},
    object(),
]


def accepted_value_is_valid(obj, name: str, spec: dict) -> str | None:
    """A value a settings class accepted must be what its metadata allows (no normalisation may bypass it)."""
    value = getattr(obj, name)
    values = value if isinstance(value, (list, tuple)) else [value]
    flat = [v for item in values for v in (item if isinstance(item, (list, tuple)) else [item])]
    for v in flat:
        if v is None:
            if not spec["nullable"] and spec["container"] is None:
                return f"{name} = None was accepted"
            continue
        if spec["type"] in (int, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f"{name} holds {v!r}, not a number"
            if isinstance(v, float) and math.isnan(v):
                return f"{name} holds NaN"
            if math.isinf(v) and not spec.get("infinite_ok"):
                return f"{name} holds {v}"
            low, high = spec.get("min"), spec.get("max")
            if (low is not None and (v < low or (spec.get("low_open") and v == low))) or (
                high is not None and v > high
            ):
                return f"{name} holds {v!r}, outside its range"
        if spec.get("choices") is not None and v not in spec["choices"]:
            return f"{name} holds {v!r}, not one of its choices"
    return None


def check_field(cls, name: str, value) -> str | None:
    kwargs = {**CLASSES[cls], name: value}
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as error:
        last = traceback.extract_tb(error.__traceback__)[-1]
        if NEGGUIDE not in last.filename:
            return f"{cls.__name__}({name}={value!r}): {type(error).__name__} raised inside {last.filename}"
        if name not in str(error) and name.rstrip("s") not in str(error):
            return f"{cls.__name__}({name}={value!r}): the message does not name {name}: {error}"
        return None
    except Exception as error:
        return f"{cls.__name__}({name}={value!r}): {type(error).__name__}: {error}"
    problem = accepted_value_is_valid(obj, name, field_specs(cls)[name])
    return f"{cls.__name__}({name}={value!r}): {problem}" if problem else None


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_every_settings_field_refuses_hostile_values_by_name(cls):
    failures = []
    for name in field_specs(cls):
        failures += [p for value in HOSTILE if (p := check_field(cls, name, value))]
    assert not failures, f"{len(failures)} hostile values broke the contract:\n" + "\n".join(failures)


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.one_of(st.floats(), st.integers(), st.text(max_size=4), st.none()), max_size=3),
    st.tuples(st.floats(), st.floats()),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@given(data=st.data())
@FUZZ
def test_settings_fields_drawn_values(data):
    cls = data.draw(st.sampled_from(list(CLASSES)), label="class")
    name = data.draw(st.sampled_from(list(field_specs(cls))), label="field")
    problem = check_field(cls, name, data.draw(ANY_VALUE, label="value"))
    assert problem is None, problem


# ------------------------------------------------------------------------------------------ NegativeEmbedding.load
EMBEDDING_FILES = {
    "missing": "does not exist",
    "dir": "is a folder",
    "empty_dir": "is a folder",
    "empty_file": "not a safetensors file",
    "garbage": "not a safetensors file",
    "text": "not a safetensors file",
    "png": "not a safetensors file",
    "truncated": "truncated",
    "no_format": "not a negguide negative embedding",
    "no_family": "no 'family' in its metadata",
    "bad_family": "family = 'sd9'",
    "wrong_tensors": "holds ['prompt_embeds'], got ['other']",
    "int_tensor": "floating-point",
    "nan_tensor": "NaN",
    "no_tensors": "holds ['prompt_embeds'], got []",
}


@pytest.mark.parametrize("name, message", list(EMBEDDING_FILES.items()))
def test_negative_embedding_load_names_the_file_and_what_is_wrong(hostile, name, message):
    path = hostile[name]
    with pytest.raises(ValueError) as info:
        NegativeEmbedding.load(path)
    assert repr(path) in str(info.value) and message in str(info.value)
    assert NEGGUIDE in traceback.extract_tb(info.value.__traceback__)[-1].filename


def test_negative_embedding_load_refuses_hostile_arguments(tmp_path):
    good = str(tmp_path / "ok.safetensors")
    NegativeEmbedding("sd", {"prompt_embeds": torch.zeros(1, 77, 32)}).save(good)
    for path in (None, 5, 1.5, ["a"], object()):
        assert refusal(lambda path=path: NegativeEmbedding.load(path), "path") is None
    for pipe in ("x", 5, object()):
        assert refusal(lambda pipe=pipe: NegativeEmbedding.load(good, pipe), "pipe") is None
    assert refusal(lambda: NegativeEmbedding.load(good, get_tiny("sd3")), "sd model but the pipeline is sd3") is None
    for family, tensors, metadata, name in (
        (None, {"prompt_embeds": torch.zeros(1, 4, 8)}, {}, "family"),
        (["sd"], {"prompt_embeds": torch.zeros(1, 4, 8)}, {}, "family"),
        ("sd", [torch.zeros(1, 4, 8)], {}, "holds"),
        ("sd", {"prompt_embeds": torch.zeros(4, 8)}, {}, "prompt_embeds"),
        ("sd", {"prompt_embeds": torch.zeros(1, 4, 8)}, ["not", "a", "dict"], "metadata"),
    ):
        assert refusal(lambda f=family, t=tensors, m=metadata: NegativeEmbedding(f, t, m), name) is None, name


# ------------------------------------------------------------------------------------------ build_reward
def test_build_reward_refuses_hostile_specs_by_name(hostile):
    specs = {
        "": "unknown reward ''",
        "bogus": "unknown reward 'bogus'",
        "shapeworld@-5": "must be a finite number >= 0",
        "shapeworld@nan": "must be a finite number >= 0",
        "shapeworld@inf": "must be a finite number >= 0",
        "shapeworld@1e400": "must be a finite number >= 0",
        "shapeworld@": "no weight after it",
        "shapeworld@x": "is not a number",
        "shapeworld@0": "is 0",
        "shapeworld=": "no folder after it",
        "shapeworld=/nonexistent": "shapeworld=/nonexistent",
        f"shapeworld={hostile['empty_dir']}": "no ShapeWorld reward weights",
        f"shapeworld={hostile['text']}": "no ShapeWorld reward weights",
        f"shapeworld-log={hostile['reward_dir']}": "is damaged",
        "clip": "needs a model",
        "clip=/nonexistent": "'/nonexistent' does not exist",
        f"clip={hostile['missing']}@0.5": "does not exist",
        "pickscore=": "needs a model",
    }
    failures = []
    for spec, message in specs.items():
        problem = refusal(lambda spec=spec: build_reward([spec]), message)
        if problem:
            failures.append(f"{spec!r}: {problem}")
    assert not failures, "\n".join(failures)
    with pytest.raises(RewardSourceNotFound) as info:  # a ValueError and, as before, a FileNotFoundError
        build_reward(["shapeworld=/nonexistent"])
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)
    assert "reward 'shapeworld=/nonexistent'" in str(info.value)
    for specs_value in (5, [5], [None], {"shapeworld": 1}, [["shapeworld"]]):
        assert refusal(lambda s=specs_value: build_reward(s), "spec") is None, specs_value
    assert refusal(lambda: build_reward(["shapeworld@0.5", "shapeworld@0.5"]), "given twice") is None


@given(specs=st.lists(st.text(max_size=16), min_size=1, max_size=3))
@FUZZ
def test_build_reward_drawn_specs(specs):
    from negguide.rewards.registry import parse_reward_spec

    try:
        parsed = [parse_reward_spec(s) for s in specs]
    except (ValueError, TypeError):
        problem = refusal(lambda: build_reward(specs), "reward", "spec")
        assert problem is None, problem
        return
    if any(p.source for p in parsed) or len({p.label for p in parsed}) != len(parsed):
        problem = refusal(lambda: build_reward(specs), "reward")
        assert problem in (None, "accepted"), problem
