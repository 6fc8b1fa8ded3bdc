"""The settings flags of every subcommand come from the settings dataclasses: each flag's type, range, default,
choices and nargs equal its field's metadata, and a value outside the range is a one-line usage error."""

from __future__ import annotations

import pytest

from negguide.cli import bench, generate, train_nft, train_reneg
from negguide.cli.errors import UsageError
from negguide.cli.generation import GenerateRequest, SamplingSettings
from negguide.core.settings import field_default, field_specs, interval
from negguide.nag.settings import NAGSettings
from negguide.negtome.settings import NegToMeSettings
from negguide.nft.config import NFTConfig
from negguide.perpneg.settings import PerpNegSettings
from negguide.reneg.config import ReNegConfig
from negguide.shapeworld.bench import BenchSettings

PARSERS = {  # command -> (parser, the arguments it requires)
    "generate": (generate.build_parser, ["a circle"]),
    "bench": (bench.build_parser, []),
    "train-reneg": (train_reneg.build_parser, ["--out", "runs/x"]),
    "train-nft": (train_nft.build_parser, ["--out", "runs/x"]),
}
EXPECTED = {  # command -> {settings class: the fields it has flags for}
    "generate": {
        SamplingSettings: set(field_specs(SamplingSettings)),
        PerpNegSettings: {"negative_weights", "negative_windows"},
        NegToMeSettings: {"alpha", "threshold", "window", "batch_reference"},
        NAGSettings: {"negative_weights", "tau", "alpha"},
        GenerateRequest: {"lora_scale"},
    },
    "bench": {BenchSettings: {"perp_neg_weight"}},
    "train-reneg": {ReNegConfig: set(train_reneg.FLAGS)},
    "train-nft": {NFTConfig: set(field_specs(NFTConfig)) - set(train_nft.NOT_FLAGS)},
}
UNSET = {  # flags that default to None on purpose: the command fills them in after parsing
    ("train-reneg", "steps"),  # --per-sample-from changes its default
    ("generate", "negative_weights"),  # one weight for all negatives, or one per negative
    ("generate", "negative_windows"),
    ("generate", "negtome_alpha"),  # unset NegToMe flags keep the model's preset
    ("generate", "negtome_batch_reference"),
}


def _setting_actions(command: str) -> list:
    parser = PARSERS[command][0]()
    return [a for a in parser._actions if hasattr(a, "setting")]


@pytest.mark.parametrize("command", list(PARSERS))
def test_flags_equal_the_field_metadata(command):
    found: dict = {}
    for action in _setting_actions(command):
        cls, name = action.setting
        spec = field_specs(cls)[name]
        found.setdefault(cls, set()).add(name)
        where = f"negguide {command} {action.option_strings[0]} ({cls.__name__}.{name})"
        if spec["type"] in (int, float):
            parse = action.type
            assert (parse.kind, parse.low, parse.high, parse.low_open) == (
                spec["type"],
                spec.get("min"),
                spec.get("max"),
                spec.get("low_open", False),
            ), where
            if spec.get("min") is not None or spec.get("max") is not None:
                assert interval(spec) in action.help, where
        assert action.choices == (tuple(spec["choices"]) if spec.get("choices") else None), where
        if spec["length"]:
            assert action.nargs == spec["length"], where
        expected = None if (command, action.dest) in UNSET else field_default(cls, name)
        assert action.default == expected, where
        assert spec["help"].replace("%", "%%") in action.help or action.dest in (
            "size",
            "negative_weights",
            "nag_scale",
        ), where
    assert found == EXPECTED[command]


@pytest.mark.parametrize("command", list(PARSERS))
def test_a_value_outside_a_flags_range_is_a_usage_error(command):
    build, required = PARSERS[command]
    for action in _setting_actions(command):
        spec = field_specs(action.setting[0])[action.setting[1]]
        if spec["type"] not in (int, float) or spec.get("max") is None or action.nargs not in (None, 1):
            continue
        flag = action.option_strings[0]
        args = build().parse_args([*required, flag, str(spec["max"])])
        assert getattr(args, action.dest) in (spec["max"], [spec["max"]])
        with pytest.raises(
            UsageError, match=f"{flag} = .* is outside {interval(spec).replace('[', '.').replace('(', '.')}"
        ):
            build().parse_args([*required, flag, str(spec["max"] * 2 + 1)])


def test_train_reneg_steps_default_waits_for_per_sample_from():
    args = train_reneg.build_parser().parse_args(["--out", "x"])
    assert args.steps is None  # main() sets 200, or 10 with --per-sample-from
    action = next(a for a in train_reneg.build_parser()._actions if a.dest == "steps")
    assert f"(default {field_specs(ReNegConfig)['steps']['default']}; 10 with --per-sample-from)" in action.help


def test_boolean_fields_take_both_forms():
    parser = train_nft.build_parser()
    assert parser.parse_args(["--out", "x"]).eval_ema is True
    assert parser.parse_args(["--out", "x", "--no-eval-ema"]).eval_ema is False
    parser = train_reneg.build_parser()
    assert parser.parse_args(["--out", "x", "--gradient-checkpointing"]).gradient_checkpointing is True
