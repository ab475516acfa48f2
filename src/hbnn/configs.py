"""The one place that finds YAML configs (training recipes, experiments, showcase recipes).

A config is named by a path (used as given when it is a file) or by a name relative to a
*config root*, with or without ``.yaml``: ``fashion_mnist/w1.4a1.4``,
``experiments/fig2b``. The roots are searched in this order:

1. the folders listed in the environment variable ``HBNN_CONFIGS`` (``os.pathsep``-separated);
2. ``configs/`` in the current directory;
3. ``configs/`` of the source checkout hbnn is imported from, if any (the research
   harness's ``experiments/``);
4. the training recipes shipped inside the package, ``hbnn/recipes/`` (package data, so
   ``hbnn train fashion_mnist/w1.4a1.4`` works from any directory after ``pip install``).

An earlier root shadows a later one name by name, so a ``configs/fashion_mnist/w1.yaml``
of your own wins over the shipped recipe of that name.

Example:
    >>> find_config("fashion_mnist/w1.4a1.4").name
    'w1.4a1.4.yaml'
    >>> "fashion_mnist/w1.4a1.4" in list_recipes()
    True
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from hbnn.errors import ConfigError

__all__ = ["CONFIGS_ENV", "EXPERIMENTS", "config_roots", "find_config", "list_configs", "list_recipes",
           "recipes_root"]

CONFIGS_ENV = "HBNN_CONFIGS"
#: The folder of a config root holding sweep specifications (``hbnn sweep``), not recipes.
EXPERIMENTS = "experiments"
_CHECKOUT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def recipes_root() -> Path:
    """The folder of the training recipes shipped as package data (``hbnn/recipes``)."""
    return Path(str(resources.files("hbnn") / "recipes"))


def config_roots() -> list[Path]:
    """The existing config roots, in search order, without duplicates."""
    candidates = [Path(p) for p in os.environ.get(CONFIGS_ENV, "").split(os.pathsep) if p]
    candidates += [Path("configs"), _CHECKOUT_CONFIGS, recipes_root()]
    roots: list[Path] = []
    for path in candidates:
        if path.is_dir() and all(path.resolve() != r.resolve() for r in roots):
            roots.append(path)
    return roots


def find_config(name: str | os.PathLike, folder: str = "") -> Path:
    """The file of config ``name``: a path to a file, else ``<root>/<folder>/<name>[.yaml]``.

    Args:
        name: a path, or a name relative to ``folder`` of a config root.
        folder: a sub-folder of the roots, e.g. ``"experiments"`` (``""`` = the root).

    Raises:
        ConfigError: nothing matched (the message says where it looked).
    """
    path = Path(name)
    if path.is_file():
        return path
    for root in config_roots():
        base = root / folder if folder else root
        for candidate in (base / path, base / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    where = ", ".join(str(r / folder if folder else r) for r in config_roots()) or "no config root exists"
    raise ConfigError(f"config file not found: {name} (looked in {where}; set {CONFIGS_ENV}=DIR to add a root; "
                      "hbnn recipes lists the names)")


def list_configs(folder: str = "") -> list[str]:
    """Names (without ``.yaml``) of the configs in ``folder`` of every root; ``_`` fragments skipped."""
    names: set[str] = set()
    for root in config_roots():
        base = root / folder if folder else root
        for path in base.rglob("*.yaml"):
            rel = path.relative_to(base).with_suffix("")
            if not any(part.startswith("_") for part in rel.parts):
                names.add(rel.as_posix())
    return sorted(names)


def list_recipes() -> list[str]:
    """Names of the training recipes of every root (:func:`list_configs` without ``experiments/``)."""
    return [name for name in list_configs() if name.split("/", 1)[0] != EXPERIMENTS]
