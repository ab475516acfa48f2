"""Recipe files and overrides: YAML recipes with ``extends:``, and ``section.key=value`` sets.

A recipe may name other recipes under ``extends:`` (a path or a list of paths, relative to
the file), which are deep-merged first, in order, then the file itself on top. Overrides
(``--set section.key=value``) come last; values are parsed as YAML (``0.1``, ``null``,
``[1, 2]``, ``{bits: 2}``). Everything here works on plain dicts;
:func:`hbnn.train.config.load_config` validates the result.

Example:
    >>> apply_overrides({"train": {"epochs": 2}}, ["train.epochs=3", "optim.lr=0.1"])
    {'train': {'epochs': 3}, 'optim': {'lr': 0.1}}
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from hbnn.errors import ConfigError

__all__ = ["deep_merge", "load_yaml_recipe", "parse_override", "set_dotted", "apply_overrides"]


def deep_merge(base: dict, top: Mapping) -> dict:
    """Recursively merge ``top`` into a copy of ``base``; non-dict values (and null) replace."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def load_yaml_recipe(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML recipe and everything it ``extends:``, merged into one dict.

    Args:
        path: the recipe file.

    Returns:
        The merged dict (without ``extends``), not yet validated.

    Raises:
        ConfigError: missing file, invalid YAML, or an ``extends`` cycle.
    """
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise ConfigError(f"config extends itself: {chain}")
    data = _read_yaml(path)
    parents = data.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: extends must be a path or a list of paths, got {parents!r}")
    merged: dict = {}
    for parent in parents:
        merged = deep_merge(merged, load_yaml_recipe(path.parent / parent, (*_seen, path)))
    return deep_merge(merged, data)


def parse_override(item: str) -> tuple[str, Any]:
    """``"section.key=value"`` -> ``("section.key", value)`` with the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def set_dotted(data: Mapping[str, Any], items: Iterable[tuple[str, Any]]) -> dict:
    """A copy of ``data`` with each ``(dotted key, value)`` set in order (the value replaces).

    Keys are checked when the result is validated (:func:`hbnn.train.config.config_from_dict`); missing
    intermediate mappings (free-form sections such as ``quant``, ``model.kwargs``) are created.

    Raises:
        ConfigError: an empty key part, or a key part that is not a section.
    """
    out = copy.deepcopy(dict(data))
    for key, value in items:
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set {key}: bad key; expected section.key, e.g. optim.lr")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict:
    """Apply ``section.key=value`` strings to a config dict (values parsed as YAML; see :func:`set_dotted`)."""
    return set_dotted(data, [parse_override(item) for item in overrides])
