"""The ``negguide`` command line.

    negguide generate PROMPT [--method M | --compare M1 M2 ...] [-n NEG ...] [--out DIR]   images and a grid
    negguide bench [--quick] [--out DIR] [--model DIR]   ShapeWorld efficacy benchmark (table, JSON, PNG grids)
    negguide train-reneg --out DIR [--prompts-file F] [--reward R] [--per-sample-from G] ...   learn a negative embedding
    negguide train-nft --out DIR [--prompts-file F] [--reward R] ...   fine-tune a LoRA with DiffusionNFT
    negguide demo [--model M] [--port P] [--share]   the Gradio app (needs negguide[demo])
    negguide --version

Run `negguide COMMAND --help` for a command's flags and examples. Bad input ends with one line on stderr and exit
status 2.
"""

from __future__ import annotations

import importlib
import sys

from negguide.cli.errors import UsageError

#: subcommand -> the module whose ``main(argv)`` runs it (imported only when the command runs)
COMMANDS = {
    "generate": "negguide.cli.generate",
    "bench": "negguide.cli.bench",
    "train-reneg": "negguide.cli.train_reneg",
    "train-nft": "negguide.cli.train_nft",
    "demo": "negguide.cli.demo",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from negguide import __version__

        print(f"negguide {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"negguide: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        importlib.import_module(COMMANDS[command]).main(rest)
    except UsageError as error:  # bad input: one line, exit 2; anything else is a bug and keeps its traceback
        print(f"negguide {command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
