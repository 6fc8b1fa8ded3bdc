"""The ``negguide`` command line.

    negguide bench [--quick] [--out DIR] [--model DIR]   ShapeWorld efficacy benchmark (table, JSON, PNG grids)
    negguide train-reneg --out DIR [--prompts-file F] [--reward R] [--per-sample-from G] ...   learn a negative embedding (ReNeg)
    negguide train-nft --out DIR [--prompts-file F] [--reward R] ...   fine-tune a LoRA with DiffusionNFT
    negguide generate PROMPT [--method M | --compare M1 M2 ...] [-n NEG ...] [--out DIR]   images and a grid
    negguide demo [--model M] [--port P] [--share]   the Gradio app (needs negguide[demo])

Run `negguide COMMAND --help` for a command's flags and examples.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"bench": "negguide.shapes.bench", "train-reneg": "negguide.reneg.cli", "generate": "negguide.generate_cli",
                "train-nft": "negguide.nft.cli",
                "demo": "negguide.demo_cli"}
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in commands:
        print(f"negguide: unknown command {command!r}; choose one of {sorted(commands)}", file=sys.stderr)
        return 2
    import importlib

    try:
        importlib.import_module(commands[command]).main(rest)
    except ValueError as error:  # bad input: one line, non-zero exit
        print(f"negguide {command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
