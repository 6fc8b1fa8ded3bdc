"""argparse helpers shared by the ``negguide`` subcommands: typed, range-checked flags with one-line errors, built
from the settings dataclasses' field metadata (:mod:`negguide.core.settings`), and the checks of ``--model`` and
``--device`` every command (and the demo's loader) makes before anything loads."""

from __future__ import annotations

import argparse
import os

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
    if prompts is not None:
        blank = [i + 1 for i, text in enumerate(prompts) if not text.strip()]
        if blank:
            raise UsageError(f"--prompts: prompt {blank[0]} is empty; give each prompt as text, e.g. 'a red circle'")
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts = [line.strip() for line in f if line.strip()]
        except OSError as error:
            raise UsageError(f"cannot read --prompts-file {args.prompts_file!r}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(
                f"cannot read --prompts-file {args.prompts_file!r}: it is not UTF-8 text (one prompt per line)"
            ) from None
        if not prompts:
            raise UsageError(f"--prompts-file {args.prompts_file!r} holds no prompts")
    if prompts is None:
        if not is_shapeworld_model(args.model):
            raise UsageError("give --prompts or --prompts-file for your own model")
        from negguide.shapeworld.prompts import shapeworld_prompts

        prompts = shapeworld_prompts(args.shapeworld_prompts, "train", kind=args.shapeworld_captions)
    return prompts


# ---------------------------------------------------------------------------------------------- model and device
DEVICE_HINT = "use cpu, cuda, cuda:N or mps"
MODEL_INDEX = "model_index.json"  # what makes a folder a diffusers pipeline


def check_device(device, flag: str = "--device") -> None:
    """ValueError unless ``device`` (None: the default) is a torch device this machine has: cpu, cuda[:N] with a
    CUDA GPU (N below the GPU count), or mps where available. Checked before anything loads."""
    if device is None:
        return
    if not isinstance(device, str) or not device.strip():
        raise ValueError(f"{flag} {device!r} is not a device: {DEVICE_HINT}")
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{flag} {device!r} is not a device: {DEVICE_HINT}") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "" if torch.version.cuda or torch.version.hip else " (this torch is built without CUDA)"
            raise ValueError(f"{flag} {device!r}: no CUDA GPU is available on this machine{build}; use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{flag} {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{flag} {device!r}: MPS (Apple GPU) is not available on this machine; use --device cpu")
        return
    raise ValueError(f"{flag} {device!r} is not supported: {DEVICE_HINT}")


def check_model(model, flag: str = "--model", hub_ok: bool = True) -> None:
    """ValueError unless ``model`` (None: the bundled model) is a diffusers folder (a folder with model_index.json)
    or, when ``hub_ok``, a hub id (owner/name) that is not a local path. Checked before anything loads."""
    if model is None:
        return
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"{flag} must be a folder or a hub id, got {type(model).__name__}")
    model = os.fspath(model)
    what = "a diffusers folder" + (" or a hub id (owner/name)" if hub_ok else "")
    if not model.strip():
        raise ValueError(f"{flag} is empty: give {what}")
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, MODEL_INDEX)):
            try:
                empty = " (the folder is empty)" if not os.listdir(model) else ""
            except OSError:
                empty = ""
            raise ValueError(
                f"{flag} {model!r} has no {MODEL_INDEX}{empty}: it is not a diffusers pipeline folder "
                "(write one with pipe.save_pretrained(FOLDER))"
            )
        return
    if os.path.exists(model):
        raise ValueError(f"{flag} {model!r} is a file: give {what}")
    from negguide.cli.inputs import is_hub_id

    if hub_ok and is_hub_id(model):
        return
    if hub_ok:
        raise ValueError(f"{flag} {model!r} is neither a diffusers folder nor a hub id (owner/name)")
    raise ValueError(f"{flag} {model!r} does not exist: give a diffusers folder (with {MODEL_INDEX})")


def load_model(model, load, flag: str = "--model", hub_ok: bool = True):
    """``load(model)`` after :func:`check_model`; a model that cannot be read (a damaged folder, a hub id that is
    not cached offline) is one ValueError naming it, never the loader's traceback."""
    import warnings

    from negguide.cli.inputs import one_line

    check_model(model, flag, hub_ok)
    try:
        with warnings.catch_warnings():  # diffusers >= 0.42 renames torch_dtype; older releases need it
            warnings.simplefilter("ignore", FutureWarning)
            return load(model)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot load model {model!r} ({flag}): {one_line(error, 250)}") from None


# ---------------------------------------------------------------------------------------------- checks against a model
def check_image_size(pipe, height, width) -> None:
    """ValueError unless ``--height`` and ``--width`` (None: the model's default) fit the model's size step."""
    from negguide.core.call_checks import check_size, size_multiple
    from negguide.core.families import detect_family

    inner = pipe.family_pipeline() if hasattr(pipe, "family_pipeline") else pipe
    family = getattr(pipe, "family", None) or detect_family(pipe.components)
    check_size(family, size_multiple(family, inner), height, width, ("--height", "--width"))
