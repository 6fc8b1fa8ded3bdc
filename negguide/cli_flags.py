"""argparse helpers shared by the ``negguide`` subcommands: typed, range-checked flags with one-line errors."""

from __future__ import annotations

import argparse


def ranged(kind: type, low, high, flag: str):
    """An argparse type: ``kind`` within [low, high]; a bad value names the flag and the range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{flag} = {value} is outside [{low}, {high}]")
        return value

    return parse
