"""The one lazy-import helper: a package lists the names it exports and where they live, and each is imported on
first use, so that ``import negguide`` (or a subpackage) does not import torch, diffusers or transformers."""

from __future__ import annotations

import importlib
import warnings


def lazy_exports(package: str, exports: dict[str, str], deprecated: dict[str, str] | None = None):
    """``__getattr__`` and ``__dir__`` for ``package``'s ``__init__``.

    ``exports`` maps a public name to the module that defines it (``"negguide.perpneg.pipeline"``);
    ``deprecated`` maps an old name to ``"new.module:new_name"``: it still works, with a ``DeprecationWarning``."""
    deprecated = deprecated or {}

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name in deprecated:
            module, _, attr = deprecated[name].partition(":")
            attr = attr or name
            warnings.warn(
                f"{package}.{name} is deprecated and will be removed in the next release; use {module}.{attr}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(importlib.import_module(module), attr)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__


def deprecated_module(old: str, new: str):
    """``__getattr__`` for a module kept one release under its old name: every name is looked up in ``new``."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        warnings.warn(
            f"{old} is deprecated and will be removed in the next release; use {new}", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module(new), name)

    return __getattr__
