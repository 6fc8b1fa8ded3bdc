"""The one settings validator (negguide.core.settings) over every settings dataclass: a bad type, a value out of
range or not among the choices is refused with a message naming the field, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import math

import pytest

from negguide.cli.generation import GenerateRequest, SamplingSettings
from negguide.core.settings import Settings, field_specs, setting, validate
from negguide.negtome.settings import NegToMeSettings
from negguide.nft.config import NFTConfig
from negguide.perpneg.settings import PerpNegSettings
from negguide.reneg.config import ReNegConfig
from negguide.shapeworld.bench import BenchSettings

PROMPTS = {"prompts": ["a red circle"]}
CLASSES = {  # class -> the arguments it needs besides the one under test
    PerpNegSettings: {"negatives": ["red"]},
    NegToMeSettings: {},
    ReNegConfig: PROMPTS,
    NFTConfig: PROMPTS,
    BenchSettings: {},
    SamplingSettings: {},
    GenerateRequest: {"prompt": "a circle", "methods": ("none",)},
}
BAD = [  # (class, field, value, error, the message's words)
    (PerpNegSettings, "negatives", [3], TypeError, "negatives[0] = 3 must be a string"),
    (PerpNegSettings, "negative_weights", [6.0], ValueError, "negative_weights[0] = 6.0 is outside [0.0, 5.0]"),
    (PerpNegSettings, "negative_weights", ["1"], TypeError, "negative_weights[0] = '1' must be a number"),
    (PerpNegSettings, "negative_windows", [(0.2, 1.5)], ValueError, "negative_windows[0][1] = 1.5 is outside"),
    (
        PerpNegSettings,
        "mode",
        "sideways",
        ValueError,
        "mode (the pipeline call's guidance_mode) = 'sideways' is not one of ('perp_neg', 'plain')",
    ),
    (PerpNegSettings, "eps", 0.0, ValueError, "eps (the pipeline call's perp_neg_eps) = 0.0 is outside (0.0, inf)"),
    (NegToMeSettings, "alpha", "strong", TypeError, "alpha = 'strong' must be a number in [0.0, 5.0]"),
    (NegToMeSettings, "alpha", 6.0, ValueError, "alpha = 6.0 is outside [0.0, 5.0]"),
    (NegToMeSettings, "threshold", float("nan"), ValueError, "threshold = nan is not finite"),
    (NegToMeSettings, "window", (0.5,), ValueError, "window = (0.5,) has 1 entries; give 2"),
    (NegToMeSettings, "min_feature_size", 4.5, TypeError, "min_feature_size = 4.5 must be an integer"),
    (NegToMeSettings, "batch_reference", "last", ValueError, "batch_reference = 'last' is not one of"),
    (NegToMeSettings, "legacy_matching", 1, TypeError, "legacy_matching = 1 must be True or False"),
    (NegToMeSettings, "chunk_tokens", 8, ValueError, "chunk_tokens = 8 is outside [16, 65536]"),
    (ReNegConfig, "guidance_scale", 150, ValueError, "guidance_scale = 150.0 is outside [1.0, 100.0]"),
    (ReNegConfig, "steps", 2.5, TypeError, "steps = 2.5 must be an integer in [1, 100000]"),
    (ReNegConfig, "steps", True, TypeError, "steps = True must be an integer"),
    (ReNegConfig, "lr", 0.0, ValueError, "lr = 0.0 is outside (0.0, 1.0]"),
    (ReNegConfig, "height", 4, ValueError, "height = 4 is outside [8, 4096]"),
    (ReNegConfig, "init_text", None, TypeError, "init_text = None is not allowed: give a string"),
    (ReNegConfig, "gradient_checkpointing", "yes", TypeError, "gradient_checkpointing = 'yes' must be True or False"),
    (NFTConfig, "group_size", 1, ValueError, "group_size = 1 is outside [2, 1024]; G must be >= 2"),
    (NFTConfig, "beta", 0.0, ValueError, "beta = 0.0 is outside (0.0, 1.0]"),
    (NFTConfig, "lr", float("inf"), ValueError, "lr = inf is not finite"),
    (NFTConfig, "objective", "ppo", ValueError, "objective = 'ppo' is not one of ('nft', 'positive-only'"),
    (NFTConfig, "mixed_precision", "fp8", ValueError, "mixed_precision = 'fp8' is not one of ('no', 'fp16', 'bf16')"),
    (NFTConfig, "keep_min_reward", float("nan"), ValueError, "keep_min_reward = nan is not finite"),
    (NFTConfig, "pipeline_kwargs", [], TypeError, "pipeline_kwargs = [] must be a dict"),
    (BenchSettings, "steps", 0, ValueError, "steps = 0 is outside [1, 1000]"),
    (BenchSettings, "seeds", (1, "2"), TypeError, "seeds[1] = '2' must be an integer"),
    (BenchSettings, "seeds", 7, TypeError, "seeds = 7 must be a list or tuple of integers"),
    (BenchSettings, "perp_neg_weight", -1.0, ValueError, "perp_neg_weight = -1.0 is outside [0.0, 5.0]"),
    (SamplingSettings, "steps", 151, ValueError, "steps = 151 is outside [1, 150]"),
    (SamplingSettings, "batch", None, TypeError, "batch = None is not allowed: give an integer"),
    (SamplingSettings, "guidance_scale", "7", TypeError, "guidance_scale = '7' must be a number in [0.0, 30.0]"),
    (GenerateRequest, "methods", ("magic",), ValueError, "methods[0] = 'magic' is not one of ('none', 'plain'"),
    (GenerateRequest, "lora_scale", 2.5, ValueError, "lora_scale = 2.5 is outside [0.0, 2.0]"),
    (GenerateRequest, "sampling", {"steps": 4}, TypeError, "sampling = {'steps': 4} must be a SamplingSettings"),
    (GenerateRequest, "with_negatives", "no", TypeError, "with_negatives = 'no' must be True or False"),
]


@pytest.mark.parametrize(
    "cls, name, value, error, message", BAD, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v, *_ in BAD]
)
def test_a_bad_value_names_the_field_the_value_and_what_is_allowed(cls, name, value, error, message):
    with pytest.raises(error) as raised:
        cls(**{**CLASSES[cls], name: value})
    assert message in str(raised.value)


def test_every_settings_class_is_covered_and_builds_from_its_defaults():
    assert {cls for cls, *_ in BAD} == set(CLASSES)
    for cls, needed in CLASSES.items():
        assert issubclass(cls, Settings), cls
        cls(**needed)
        for name, spec in field_specs(cls).items():  # every range and choice list is well formed
            if "min" in spec and "max" in spec and spec["max"] is not None:
                assert spec["min"] < spec["max"], (cls, name)
            if spec.get("choices") is not None:
                defaults = spec["default"] if spec["container"] else [spec["default"]]
                assert set(defaults) <= set(spec["choices"]), (cls, name)


def _out_of_range(cls, kwargs: dict, name: str) -> bool:
    """Whether ``cls(**kwargs)`` is refused for ``name``'s range (another field's cross check may refuse it too)."""
    try:
        cls(**kwargs)
    except ValueError as error:
        return str(error).startswith((f"{name} = ", f"{name} (")) and " is outside " in str(error)
    return False


def test_a_range_in_the_metadata_is_enforced_at_both_ends():
    checked = 0
    for cls, needed in CLASSES.items():
        for name, spec in field_specs(cls).items():
            if spec["type"] not in (int, float) or spec["container"] or spec.get("min") is None:
                continue
            low, high, step = spec["min"], spec.get("max"), 1 if spec["type"] is int or spec["min"] == 0 else 1e-3
            assert _out_of_range(cls, {**needed, name: low}, name) == bool(spec.get("low_open")), (cls, name)
            assert _out_of_range(cls, {**needed, name: low - step}, name), (cls, name)
            if high is not None:
                assert not _out_of_range(cls, {**needed, name: high}, name), (cls, name)
                assert _out_of_range(cls, {**needed, name: high + 1}, name), (cls, name)
            checked += 1
    assert checked >= 40


def test_values_are_normalized_to_their_annotated_type():
    settings = SamplingSettings(steps=20.0, guidance_scale=7)  # a slider's float for an int, an int for a float
    assert settings.steps == 20 and type(settings.steps) is int
    assert settings.guidance_scale == 7.0 and type(settings.guidance_scale) is float
    bench = BenchSettings(seeds=[1, 2])
    assert bench.seeds == (1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bench.steps = 3
    assert NegToMeSettings(window=[0.2, 1], blocks="up").window == (0.2, 1.0)
    assert NegToMeSettings(blocks="up").blocks == ("up",)
    assert PerpNegSettings(negatives="red", negative_weights=2).negative_weights == [2.0]
    assert NFTConfig(**PROMPTS, keep_min_reward=-math.inf).keep_min_reward == -math.inf


def test_cross_field_checks_run_after_the_generic_ones():
    with pytest.raises(ValueError, match="late_steps = 9 exceeds num_inference_steps = 4"):
        ReNegConfig(**PROMPTS, late_steps=9, num_inference_steps=4)
    with pytest.raises(ValueError, match="timestep_min = 0.5 must be below timestep_max = 0.5"):
        NFTConfig(**PROMPTS, timestep_min=0.5, timestep_max=0.5)
    with pytest.raises(ValueError, match="is reversed"):
        NegToMeSettings(window=(0.9, 0.2))
    with pytest.raises(ValueError, match="negative_weights has 2 entries but negatives has 1"):
        PerpNegSettings(negatives=["red"], negative_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="seeds is empty"):
        BenchSettings(seeds=())


@dataclasses.dataclass
class _Example(Settings):
    count: int = setting(3, "how many", min=1, max=9, hint="e.g. 3")
    scale: float | None = setting(None, "optional scale", min=0.0)
    pair: tuple[float, float] = setting((0.0, 1.0), "a pair", min=0.0, max=1.0)
    names: list[str] = setting(["a"], "names", choices=("a", "b"))


def test_the_validator_on_a_small_dataclass():
    assert _Example().names is not _Example().names  # a list default is copied per instance
    with pytest.raises(ValueError, match=r"count = 10 is outside \[1, 9\]; e.g. 3"):
        _Example(count=10)
    with pytest.raises(ValueError, match=r"scale = -1.0 is outside \[0.0, inf\)"):
        _Example(scale=-1)
    with pytest.raises(ValueError, match=r"names\[1\] = 'c' is not one of \('a', 'b'\)"):
        _Example(names=["a", "c"])
    example = _Example(pair=[0.5, 1])
    assert example.pair == (0.5, 1.0)
    example.count = 0  # a mutable settings object: validate() again after changing it
    with pytest.raises(ValueError, match="count = 0"):
        validate(example)
    specs = _Example.field_specs()
    assert specs["count"] == {"default": 3, "type": int, "container": None, "length": None, "nullable": False,
                              "help": "how many", "min": 1, "max": 9, "hint": "e.g. 3"}  # fmt: skip
    assert (specs["pair"]["container"], specs["pair"]["length"], specs["pair"]["type"]) == (tuple, 2, float)
    assert specs["scale"]["nullable"] and specs["names"]["default"] == ["a"]


def test_the_demo_and_the_cli_read_the_same_specs():
    weight = PerpNegSettings.field_specs()["negative_weights"]
    assert (weight["min"], weight["max"], weight["step"], weight["default"]) == (0.0, 5.0, 0.05, 1.0)
    assert SamplingSettings.field_specs()["batch"]["default"] == SamplingSettings().batch
    assert GenerateRequest.field_specs()["lora_scale"]["max"] == 2.0


def test_the_nft_config_default_targets_equal_the_policies_default():
    from negguide.nft import policies

    assert NFTConfig(**PROMPTS).lora_targets == ",".join(policies.DEFAULT_TARGETS)
