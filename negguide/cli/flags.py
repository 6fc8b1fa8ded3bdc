"""argparse helpers shared by the ``negguide`` subcommands: typed, range-checked flags with one-line errors, built
from the settings dataclasses' field metadata (:mod:`negguide.core.settings`)."""

from __future__ import annotations

import argparse

from negguide.cli.errors import UsageError
from negguide.core.settings import field_default, field_specs, interval


def ranged(kind: type, low, high, flag: str, low_open: bool = False):
    """An argparse type: ``kind`` within [low, high] (``(low`` when ``low_open``; None: unbounded); a bad value names
    the flag and the range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(
                f"{flag} = {value} is outside {interval({'min': low, 'max': high, 'low_open': low_open})}"
            )
        return value

    parse.kind, parse.low, parse.high, parse.low_open = kind, low, high, low_open  # for tests and tools
    return parse


def add_setting_flags(parser, cls, names, prefix: str = "", overrides: dict | None = None) -> dict:
    """Add one flag per field in ``names`` of the settings dataclass ``cls``, all from its field metadata:
    ``--PREFIX-NAME`` (underscores as dashes); a number's type is :func:`ranged` with the field's min/max (the range
    is shown in the help), a field with ``choices`` gets them, a bool gets ``--NAME/--no-NAME``, a fixed-size tuple
    takes that many values (``nargs``) and another list or tuple one or more. The default is the field's own (not
    the metadata's ``default``, which a slider shows); the help is the metadata's with the range and the default.
    ``overrides[name]`` may replace ``flag``, ``aliases``, ``default``, ``shown`` (the default as the help words it)
    and ``help``, and add argparse keywords (action, dest, metavar, ...). Returns {field name: the argparse dest}."""
    specs, dests = field_specs(cls), {}
    for name in names:
        spec, extra = specs[name], dict((overrides or {}).get(name, {}))
        flag = extra.pop("flag", "--" + prefix + name.replace("_", "-"))
        aliases = extra.pop("aliases", ())
        default = extra.pop("default", field_default(cls, name))
        shown = extra.pop("shown", default)
        text = extra.pop("help", spec.get("help", "")).replace("%", "%%")
        kind, kwargs = spec["type"], {"default": default}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction  # argparse adds "(default: ...)" itself
        else:
            if kind in (int, float):
                low, high, low_open = spec.get("min"), spec.get("max"), spec.get("low_open", False)
                kwargs["type"] = ranged(kind, low, high, flag, low_open)
                if low is not None or high is not None:
                    text += f" {interval(spec)}"
            if spec.get("choices") is not None:
                kwargs["choices"] = tuple(spec["choices"])
            if shown is not None and shown != "":
                text += f" (default {shown})"
            if spec["length"]:
                kwargs["nargs"] = spec["length"]
            elif spec["container"] and "action" not in extra:
                kwargs["nargs"] = "+"
        action = parser.add_argument(flag, *aliases, help=text, **{**kwargs, **extra})
        action.setting = (cls, name)  # which field the flag sets (tests compare the two)
        dests[name] = action.dest
    return dests


def add_training_inputs(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The model, output and prompt flags the training subcommands share."""
    parser.add_argument(
        "--model", default=None, help="diffusers folder or hub id (default: the bundled ShapeWorld model)"
    )
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--prompts", nargs="+", default=None, help="training prompts")
    parser.add_argument("--prompts-file", default=None, help="a text file with one prompt per line")
    parser.add_argument(
        "--shapeworld-prompts",
        type=ranged(int, 1, 5000, "--shapeworld-prompts"),
        default=200,
        help="without prompts, on a ShapeWorld model: this many ShapeWorld training captions (default 200)",
    )
    from negguide.shapeworld.prompts import CAPTION_KINDS

    parser.add_argument(
        "--shapeworld-captions",
        choices=CAPTION_KINDS,
        default="all",
        help="which ShapeWorld training captions: all (default), two-object, or relation (A to the "
        "left of B, ...) only",
    )


def is_shapeworld_model(model: str | None) -> bool:
    """The bundled model (None) or a ShapeWorld model folder (it has shapeworld_training.json)."""
    import os

    return model is None or os.path.isfile(os.path.join(model, "shapeworld_training.json"))


def read_training_prompts(args) -> list:
    """--prompts, or the lines of --prompts-file, or (on a ShapeWorld model) --shapeworld-prompts training captions."""
    prompts = args.prompts
    if args.prompts_file:
        try:
            with open(args.prompts_file) as f:
                prompts = [line.strip() for line in f if line.strip()]
        except OSError as error:
            raise UsageError(f"cannot read --prompts-file {args.prompts_file!r}: {error.strerror}") from None
        if not prompts:
            raise UsageError(f"--prompts-file {args.prompts_file!r} holds no prompts")
    if prompts is None:
        if not is_shapeworld_model(args.model):
            raise UsageError("give --prompts or --prompts-file for your own model")
        from negguide.shapeworld.prompts import shapeworld_prompts

        prompts = shapeworld_prompts(args.shapeworld_prompts, "train", kind=args.shapeworld_captions)
    return prompts
