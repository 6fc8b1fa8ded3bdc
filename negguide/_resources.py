"""Where the data that ships with negguide is: the bundled ShapeWorld assets and the demo app.

The repository keeps them at the top level (``assets/shapeworld/``, ``demos/``), their one source of truth; a built
wheel maps them into the package as ``negguide._assets`` and ``negguide._demo`` (see ``setup.py``). This module
finds them either way: through :mod:`importlib.resources` in an installed package, else in the source checkout.
"""

from __future__ import annotations

import functools
import os

_SOURCE = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
#: package name in a wheel -> (folder in the source checkout, a file that must be there)
_DATA = {
    "negguide._assets": (os.path.join("assets", "shapeworld"), "README.md"),
    "negguide._demo": ("demos", "app.py"),
}


@functools.cache
def data_folder(package: str) -> str:
    """The folder of ``package`` (a key of ``_DATA``): the installed package data, else the checkout's folder."""
    from importlib.resources import files

    source, marker = _DATA[package]
    installed = files("negguide").joinpath(package.rpartition(".")[2])  # a real folder: models load from files
    if installed.joinpath(marker).is_file():
        return os.fspath(installed)
    return os.path.join(_SOURCE, source)
