"""``negguide demo``: start the Gradio app (``demos/app.py``).

The app's one copy is ``demos/app.py`` of the repository; a wheel carries it as package data (``negguide._demo``).
This launcher loads it by path from wherever it is, so ``negguide demo`` works from a wheel and from a checkout.
The flags are parsed here, before the app (gradio, torch) loads: ``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from negguide._resources import data_folder
from negguide.cli.errors import ArgumentParser, UsageError
from negguide.cli.flags import ranged

APP = os.path.join(data_folder("negguide._demo"), "app.py")
MODULE = "negguide_demo_app"
QUEUE_SIZE = 8
MAX_UPLOAD_MB = 256  # every upload (an image, an embedding, a LoRA) at most this many MiB
DESCRIPTION = """The negguide Gradio demo: a prompt, weighted negatives with windows, and the methods side by side,
same seed.

    negguide demo                                 # the bundled ShapeWorld model on http://127.0.0.1:7860
    negguide demo --model ./sd15 --port 7861      # a local diffusers folder (or a hub id)
    negguide demo --share                         # a public gradio.live link (off by default)
    negguide demo --allow-dir runs                # also offer the embeddings and LoRAs found in runs/
    python demos/app.py --no-example              # the same, without the example comparison filled in

The model is loaded once; one generation runs at a time (the queue holds at most --queue-size requests; the API
goes through the same queue). Clients never name a server path: they upload embeddings, LoRAs and images (at most
--max-upload-mb each) or choose the bundled ones and those found in the --allow-dir folders.
Needs gradio: pip install 'negguide[demo]'.
"""


def folder(text: str) -> str:
    """An argparse type: an existing folder (checked before gradio and the model load)."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="negguide demo", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="diffusers folder or hub id (default: the bundled ShapeWorld model)"
    )
    parser.add_argument(
        "--port",
        type=ranged(int, 1, 65535, "--port"),
        default=None,
        help="port on 127.0.0.1 (default: 7860 or the next free one)",
    )
    parser.add_argument("--share", action="store_true", help="also serve a public gradio.live link (off by default)")
    parser.add_argument(
        "--queue-size",
        type=ranged(int, 1, 256, "--queue-size"),
        default=QUEUE_SIZE,
        help=f"requests that may wait for the one running (default {QUEUE_SIZE})",
    )
    parser.add_argument(
        "--allow-dir",
        type=folder,
        action="append",
        default=[],
        metavar="DIR",
        help="offer the ReNeg embeddings and LoRAs (.safetensors, LoRA folders) found in DIR (read at start; "
        "repeatable); clients choose them by name, never by path",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=ranged(int, 1, 4096, "--max-upload-mb"),
        default=MAX_UPLOAD_MB,
        help=f"largest upload in MiB (default {MAX_UPLOAD_MB}); uploads are deleted after an hour and at exit",
    )
    parser.add_argument(
        "--example",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="generate the filled-in comparison at start, so pages open with results "
        "(default: on for the bundled model)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    return parser


def load_app():
    """Import ``demos/app.py`` once (gradio is imported lazily, here)."""
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("the demo needs gradio: pip install 'negguide[demo]'") from None
    path = os.path.normpath(APP)
    if not os.path.isfile(path):
        raise UsageError(
            "the demo app is missing from this installation (demos/app.py): reinstall negguide "
            "(pip install --force-reinstall 'negguide[demo]') or run it from a source checkout"
        )
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE]
        raise
    return module


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)  # before gradio and the model load
    load_app().launch(args)


if __name__ == "__main__":
    main()
