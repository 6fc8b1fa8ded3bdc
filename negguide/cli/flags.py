"""argparse helpers shared by the ``negguide`` subcommands: typed, range-checked flags with one-line errors."""

from __future__ import annotations

import argparse

from negguide.cli.errors import UsageError


def ranged(kind: type, low, high, flag: str):
    """An argparse type: ``kind`` within [low, high]; a bad value names the flag and the range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{flag} = {value} is outside [{low}, {high}]")
        return value

    return parse


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
