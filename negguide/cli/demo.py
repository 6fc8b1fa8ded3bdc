"""``negguide demo``: start the Gradio app (``demos/app.py`` of a source checkout).

The app is not part of the installed package (``demos/`` sits next to ``negguide/``, like ``benchmarks/``); this
launcher loads it by path, so ``negguide demo`` works from an editable install (``pip install -e ".[demo]"``).
"""

from __future__ import annotations

import importlib.util
import os
import sys

from negguide.cli.errors import UsageError

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "demos", "app.py")
MODULE = "negguide_demo_app"


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
            f"the demo lives in a source checkout's demos/app.py ({path} is missing): "
            "clone the repository and pip install -e '.[demo]'"
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
    load_app().main(argv)


if __name__ == "__main__":
    main()
