"""Packaging beyond what pyproject.toml can say: the bundled ShapeWorld assets and the demo app ship inside the wheel.

Their one copy stays at the repository's top level (``assets/shapeworld/``, ``demos/``); the build maps those folders
into the package as ``negguide._assets`` and ``negguide._demo`` (found at run time by ``negguide._resources``).
Everything else (metadata, dependencies, entry points) is in pyproject.toml.
"""

from setuptools import find_packages, setup

DATA = {"negguide._assets": "assets/shapeworld", "negguide._demo": "demos"}

setup(
    packages=find_packages(include=["negguide", "negguide.*"]) + list(DATA),
    package_dir=DATA,
    package_data={name: ["**/*"] for name in DATA},
    include_package_data=False,
)
