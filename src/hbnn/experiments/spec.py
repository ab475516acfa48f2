"""Experiment definitions: one YAML file -> a list of fully resolved, named runs.

An experiment lives in ``configs/experiments/<name>.yaml`` (files starting with ``_`` are
shared fragments). Keys (all optional except ``points`` for training experiments)::

    extends: [_common.yaml]      # experiment files to inherit from (merged first, in order;
                                 #   mappings merge key by key, lists and scalars replace)
    description: "..."           # one line, shown by --dry-run and in result lines
    kind: train                  # train (default) or fig2a (no training, see hbnn.experiments.fig2a)
    figure: fig2b                # plot style: fig2a, fig2b, fig3a, fig3b, mix, table1, block, pilot
                                 #   (default: the experiment name)
    recipe: [../_base/fashion_mnist.yaml, _scale.yaml, {model: {activation: hardtanh}}]
                                 # training recipes merged in order: paths (relative to this
                                 #   file, else to configs/) or inline mappings
    set: {train.epochs: 5}       # fixed overrides, dotted key -> value (the value replaces)
    layout:                      # how a point's bits become the ``quant`` section
      keep_first: false          #   QuantizeConfig.keep_first / keep_last
      keep_last: false
      rules: {"(^|\\.)dw$": null}  #   fixed per-layer rules, applied before anything else
      float_input: []            #   regexes of layers whose *input* stays float
      with_act: {float_input: ["^features\\.0$"]}   # layout changes for points with ``act``
    seeds: [0]                   # default seeds of every point
    points:
      - name: w1.4_mo            # [A-Za-z0-9_.+-]+, unique; the run is <experiment>/<name>/seed<k>
        label: "MO"              # plot label (default: name)
        weight: 1.4              # weight bits: 2, 1.4 (paper mix), "80/0/20", {1: 0.7, ...}; absent/null = float
        act: null                # activation bits, same forms; absent/null = float
        heuristic: middle_out    # weight bit-map heuristic (activations: act_heuristic)
        block: 1                 # bit-map block granularity of the weights
        layer_bits: 1.4          # layer-level mixing: whole layers at layer_choices bits whose
        layer_choices: [1, 2, 3] #   parameter-weighted average is as close as possible to this
                                 #   (the plan and its average are recorded in the spec)
        seeds: [0, 1, 2]         # replaces the default seeds for this point
        paper: 55.2              # the paper's number for this row (shown beside ours)
        set: {optim.lr: 0.1}     # raw overrides, applied after the quant section is built

Resolution of one run: recipe -> ``set`` -> ``quant`` from the point and layout -> the
point's ``set`` -> command-line ``--set`` -> ``train.seed``; then the config is validated
and its quant section normalised (``QuantizeConfig.to_dict``), so the recorded config is
explicit and replays unchanged. The ``random`` heuristic's permutation seed is the run seed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from hbnn.errors import ConfigError

__all__ = [
    "EXPERIMENTS_DIR",
    "KINDS",
    "FIGURES",
    "HASH_EXCLUDE",
    "Point",
    "Experiment",
    "RunSpec",
    "find_experiment",
    "load_experiment",
    "expand",
    "config_sha",
    "dotted_overrides",
    "point_quant",
]

EXPERIMENTS_DIR = Path("configs") / "experiments"
KINDS = ("train", "fig2a")
FIGURES = ("fig2a", "fig2b", "fig3a", "fig3b", "mix", "table1", "block", "pilot")
#: Config keys that do not change a run's numbers (where files go, logging, the device
#: choice, data location); they are left out of the config hash.
HASH_EXCLUDE = ("run", "dist", "data.data_dir", "data.num_workers", "train.device",
                "train.log_every_steps", "train.checkpoint_every_steps")

_EXPERIMENT_KEYS = ("description", "kind", "figure", "recipe", "set", "layout", "seeds", "points",
                    "name", "tensor", "heuristics", "mixes", "homogeneous")
_POINT_KEYS = ("name", "label", "weight", "act", "heuristic", "act_heuristic", "block", "layer_bits",
               "layer_choices", "seeds", "paper", "set")
_LAYOUT_KEYS = ("keep_first", "keep_last", "rules", "float_input", "with_act")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class Point:
    """One grid point of an experiment: its YAML mapping and its seeds."""

    name: str
    spec: dict
    seeds: tuple[int, ...]


@dataclass
class Experiment:
    """A loaded experiment (see the module docstring for the YAML keys).

    Attributes:
        name: the experiment's name (file stem unless ``name:`` is given).
        path: the YAML file (None when built from a dict).
        kind: ``train`` or ``fig2a``.
        figure: the plot style.
        description: one line.
        recipe: the merged training recipe (not yet validated).
        overrides: the fixed dotted overrides.
        layout: the quant layout.
        points: the grid points.
        raw: the merged YAML mapping (fig2a reads its own keys from it).
    """

    name: str
    path: Path | None
    kind: str
    figure: str
    description: str
    recipe: dict
    overrides: dict
    layout: dict
    points: list[Point]
    raw: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """One run: ``<experiment>/<point>/seed<k>`` with its resolved config and hash."""

    experiment: str
    point: str
    seed: int
    config: dict
    sha: str
    spec: dict
    figure: str
    kind: str = "train"

    @property
    def name(self) -> str:
        """``<experiment>/<point>/seed<k>``."""
        return f"{self.experiment}/{self.point}/seed{self.seed}"

    def run_dir(self, runs_dir: str | Path) -> Path:
        """``<runs_dir>/<experiment>/<point>/seed<k>-<sha[:8]>`` (a changed config gets a new folder)."""
        return Path(runs_dir) / self.experiment / self.point / f"seed{self.seed}-{self.sha[:8]}"


# ----------------------------------------------------------------------------- loading

def find_experiment(name: str | Path) -> Path:
    """The YAML file of an experiment: a path, or ``configs/experiments/<name>.yaml``.

    Raises:
        ConfigError: neither exists (the message lists the available experiments).
    """
    path = Path(name)
    if path.is_file():
        return path
    candidate = EXPERIMENTS_DIR / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml") if not p.stem.startswith("_"))
    raise ConfigError(f"experiment {str(name)!r} not found (looked for {candidate}); "
                      f"available: {', '.join(known) or 'none (run from the repository root)'}")


def _resolve_recipe_path(entry: str, folder: Path) -> Path:
    for base in (folder, folder.parent, Path("configs"), Path(".")):
        if (base / entry).is_file():
            return base / entry
    raise ConfigError(f"recipe {entry!r} not found next to the experiment ({folder}) or under configs/")


def _merge_recipe(entries: Any, folder: Path) -> dict:
    from hbnn.train.config import _deep_merge, load_yaml_recipe

    if entries is None:
        return {}
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    if not isinstance(entries, list):
        raise ConfigError(f"recipe: expected a path, a mapping or a list of them, got {entries!r}")
    merged: dict = {}
    for entry in entries:
        if isinstance(entry, str):
            merged = _deep_merge(merged, load_yaml_recipe(_resolve_recipe_path(entry, folder)))
        elif isinstance(entry, Mapping):
            merged = _deep_merge(merged, dict(entry))
        else:
            raise ConfigError(f"recipe: entries must be paths or mappings, got {entry!r}")
    return merged


def _check_seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)):
        raise ConfigError(f"{where}: expected a non-empty list of integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: seeds repeat in {value!r}")
    return tuple(value)


def _check_mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return dict(value)


def _check_layout(layout: Any) -> dict:
    layout = _check_mapping(layout, "layout")
    for key in layout:
        if key not in _LAYOUT_KEYS:
            raise ConfigError(f"layout: unknown key {key!r}; allowed: {', '.join(_LAYOUT_KEYS)}")
    with_act = _check_mapping(layout.get("with_act"), "layout.with_act")
    for key in with_act:
        if key not in _LAYOUT_KEYS or key == "with_act":
            raise ConfigError(f"layout.with_act: unknown key {key!r}")
    return layout


def _check_point(item: Any, index: int, seeds: tuple[int, ...], seen: set[str]) -> Point:
    if not isinstance(item, Mapping) or "name" not in item:
        raise ConfigError(f"points[{index}]: expected a mapping with a name, got {item!r}")
    name = item["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"points[{index}].name: {name!r} is invalid; use letters, digits and _ . + -")
    if name in seen:
        raise ConfigError(f"points[{index}].name: {name!r} appears twice")
    seen.add(name)
    unknown = [k for k in item if k not in _POINT_KEYS]
    if unknown:
        raise ConfigError(f"point {name}: unknown key {unknown[0]!r}; allowed: {', '.join(_POINT_KEYS)}")
    if "layer_bits" in item and item.get("weight") is not None:
        raise ConfigError(f"point {name}: give either weight (per-parameter) or layer_bits (layer-level), not both")
    _check_mapping(item.get("set"), f"point {name}.set")
    point_seeds = _check_seeds(item["seeds"], f"point {name}.seeds") if "seeds" in item else seeds
    return Point(name=name, spec=copy.deepcopy(dict(item)), seeds=point_seeds)


def load_experiment(source: str | Path | Mapping[str, Any], name: str | None = None) -> Experiment:
    """Load and check an experiment from a name, a YAML path or a mapping.

    Args:
        source: experiment name (``configs/experiments/<name>.yaml``), path, or mapping.
        name: the experiment's name (default: ``name:`` in the file, else the file stem).

    Raises:
        ConfigError: unknown keys, bad points or seeds, missing recipes.
    """
    from hbnn.train.config import load_yaml_recipe

    if isinstance(source, Mapping):
        path, data, folder = None, copy.deepcopy(dict(source)), EXPERIMENTS_DIR
    else:
        path = find_experiment(source)
        data, folder = load_yaml_recipe(path), path.parent
    unknown = [k for k in data if k not in _EXPERIMENT_KEYS]
    if unknown:
        raise ConfigError(f"experiment: unknown key {unknown[0]!r}; allowed: {', '.join(_EXPERIMENT_KEYS)}")
    name = name or data.get("name") or (path.stem if path else None)
    if not name or not _NAME.match(str(name)):
        raise ConfigError(f"experiment name {name!r} is invalid; use letters, digits and _ . + -")
    kind = data.get("kind", "train")
    if kind not in KINDS:
        raise ConfigError(f"kind: {kind!r} is not allowed; choose one of {', '.join(KINDS)}")
    figure = data.get("figure", name)
    if figure not in FIGURES:
        raise ConfigError(f"figure: {figure!r} is not allowed; choose one of {', '.join(FIGURES)}")
    seeds = _check_seeds(data.get("seeds", [0]), "seeds")
    points: list[Point] = []
    if kind == "train":
        items = data.get("points")
        if not isinstance(items, list) or not items:
            raise ConfigError(f"experiment {name}: points must be a non-empty list")
        seen: set[str] = set()
        points = [_check_point(item, i, seeds, seen) for i, item in enumerate(items)]
    return Experiment(
        name=str(name), path=path, kind=kind, figure=figure,
        description=str(data.get("description", "")).strip(),
        recipe=_merge_recipe(data.get("recipe"), folder) if kind == "train" else {},
        overrides=_check_mapping(data.get("set"), "set"), layout=_check_layout(data.get("layout")),
        points=points, raw=data,
    )


# ----------------------------------------------------------------------------- resolution

def dotted_overrides(mapping: Mapping[str, Any]) -> list[str]:
    """``{"a.b": v}`` -> ``["a.b=<v as JSON>"]`` for :func:`hbnn.train.config.apply_overrides`.

    JSON is a subset of YAML, so every value (null, lists, mappings, regex strings with
    backslashes) reaches the config unchanged.
    """
    return [f"{key}={json.dumps(value)}" for key, value in mapping.items()]


def _quant_spec(bits: Any, heuristic: str, block: int, seed: int) -> dict:
    spec: dict[str, Any] = {"bits": bits, "heuristic": heuristic}
    if block != 1:
        spec["block"] = block
    if heuristic == "random":
        spec["seed"] = seed  # the permutation varies with the run seed
    return spec


def _effective_layout(layout: Mapping[str, Any], with_act: bool) -> dict:
    out = {k: v for k, v in layout.items() if k != "with_act"}
    if with_act:
        out.update(layout.get("with_act") or {})
    return out


def point_quant(spec: Mapping[str, Any], layout: Mapping[str, Any], seed: int,
                layer_plan: Mapping[str, int] | None = None) -> dict | None:
    """The ``quant`` section of one point (dict form of ``hbnn.convert.QuantizeConfig``).

    Args:
        spec: the point's mapping (weight, act, heuristic, act_heuristic, block).
        layout: the experiment's layout.
        seed: the run seed (seeds the random heuristic).
        layer_plan: ``{layer name: bits}`` for a layer-level point (from
            :func:`hbnn.experiments.layerwise.solve_layer_bits`).

    Returns:
        None for a float point, else the quant mapping.
    """
    weight, act = spec.get("weight"), spec.get("act")
    if weight is None and act is None and layer_plan is None:
        return None
    lay = _effective_layout(layout, act is not None)
    heuristic = spec.get("heuristic", "middle_out")
    a = None if act is None else _quant_spec(act, spec.get("act_heuristic", "middle_out"), 1, seed)
    float_input = list(lay.get("float_input") or [])
    rules: dict[str, Any] = dict(lay.get("rules") or {})
    if layer_plan is not None:
        for name, bits in layer_plan.items():
            plain = any(re.search(p, name) for p in float_input)
            rules[f"^{re.escape(name)}$"] = {"weight": {"bits": int(bits)}, "act": None if plain else a}
        default = None
    else:
        w = None if weight is None else _quant_spec(weight, heuristic, int(spec.get("block", 1)), seed)
        for pattern in float_input:
            rules.setdefault(pattern, {"weight": w, "act": None})
        default = {"weight": w, "act": a}
    return {"default": default, "rules": rules, "keep_first": bool(lay.get("keep_first", True)),
            "keep_last": bool(lay.get("keep_last", True))}


def _strip(config: dict) -> dict:
    out = copy.deepcopy(config)
    for key in HASH_EXCLUDE:
        node, parts = out, key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def config_sha(config: Mapping[str, Any], exclude: bool = True) -> str:
    """SHA-256 of the canonical JSON of ``config`` (without :data:`HASH_EXCLUDE` keys)."""
    data = _strip(dict(config)) if exclude else dict(config)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalise(data: dict) -> dict:
    from hbnn.convert import QuantizeConfig
    from hbnn.train.config import config_from_dict, config_to_dict

    resolved = config_to_dict(config_from_dict(data))
    if resolved["quant"] is not None:
        resolved["quant"] = QuantizeConfig.from_dict(resolved["quant"]).to_dict()
        config_from_dict(resolved)  # the normalised form must validate too
    return resolved


def _resolve(exp: Experiment, point: Point, seed: int, cli: list[str], plans: dict) -> RunSpec:
    from hbnn.train.config import apply_overrides

    point_set = dotted_overrides(point.spec.get("set") or {})
    data = apply_overrides(exp.recipe, dotted_overrides(exp.overrides))
    plan = None
    if "layer_bits" in point.spec:
        plan = _layer_plan(exp, point, apply_overrides(data, [*point_set, *cli]), plans)
    data["quant"] = point_quant(point.spec, exp.layout, seed, None if plan is None else plan.bits)
    data = apply_overrides(data, [*point_set, *cli, f"train.seed={seed}"])
    try:
        config = _normalise(data)
    except ConfigError as exc:
        raise ConfigError(f"{exp.name}/{point.name}: {exc}") from None
    spec = {k: v for k, v in point.spec.items() if k not in ("set", "seeds")}
    if plan is not None:
        spec["layer_plan"], spec["layer_average"] = dict(plan.bits), plan.average
    return RunSpec(experiment=exp.name, point=point.name, seed=seed, config=config,
                   sha=config_sha(config), spec=spec, figure=exp.figure)


def _layer_plan(exp: Experiment, point: Point, data: dict, cache: dict) -> Any:
    from hbnn.experiments.layerwise import layer_param_counts, solve_layer_bits

    lay = _effective_layout(exp.layout, point.spec.get("act") is not None)
    layout_quant = {"rules": dict(lay.get("rules") or {}), "keep_first": bool(lay.get("keep_first", True)),
                    "keep_last": bool(lay.get("keep_last", True))}
    key = json.dumps([data.get("model"), data.get("data"), layout_quant], sort_keys=True, default=str)
    if key not in cache:
        cache[key] = layer_param_counts(data, layout_quant)
    choices = tuple(point.spec.get("layer_choices", (1, 2, 3)))
    return solve_layer_bits(cache[key], float(point.spec["layer_bits"]), choices)


def expand(exp: Experiment, *, seeds: Iterable[int] | None = None, overrides: Iterable[str] = ()) -> list[RunSpec]:
    """All runs of a training experiment, in point order then seed order.

    Args:
        exp: a loaded experiment.
        seeds: replaces every point's seeds (the ``--seeds`` flag).
        overrides: ``key=value`` strings applied to every run (the ``--set`` flag).

    Raises:
        ConfigError: a point resolves to an invalid config.
    """
    if exp.kind != "train":
        from hbnn.experiments.fig2a import expand_fig2a

        return expand_fig2a(exp, seeds=seeds, overrides=overrides)
    cli, plans = list(overrides), {}
    chosen = None if seeds is None else _check_seeds(list(seeds), "--seeds")
    return [_resolve(exp, point, seed, cli, plans) for point in exp.points for seed in (chosen or point.seeds)]
