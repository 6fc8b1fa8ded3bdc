"""Deprecated: moved to :mod:`negguide.shapeworld.evaluate` in 0.2; this alias goes in the next release."""

from negguide._lazy import deprecated_module

__getattr__ = deprecated_module(__name__, "negguide.shapeworld.evaluate")
