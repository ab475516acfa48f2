"""Experiment definitions: one YAML file -> a list of fully resolved, named runs.

An experiment lives in ``configs/experiments/<name>.yaml`` (files starting with ``_`` are
shared fragments). Keys (all optional except ``points`` for training experiments)::

    extends: [_common.yaml]      # experiment files to inherit from (merged first, in order;
                                 #   mappings merge key by key, lists and scalars replace)
    description: "..."           # one line, shown by --dry-run and in result lines
    kind: train                  # train (default) or fig2a (no training, see hbnn.experiments.fig2a);
                                 #   what each kind does is the table in hbnn.experiments.kinds
    figure: fig2b                # plot style: fig2a, fig2b, fig3a, fig3b, mix, table1, block, pilot,
                                 #   structure (default: the experiment name)
    recipe: [../_base/fashion_mnist.yaml, _scale.yaml, {model: {activation: hardtanh}}]
                                 # training recipes merged in order: paths (relative to this
                                 #   file or its folder, else found by hbnn.configs) or mappings
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
        block: 1                 # bit-map block granularity of the weights (legacy, OIHW runs)
        structure: entry         # weight bit-map units: entry | block<K> | channel (QuantSpec.structure)
        allocate: key            # weight allocation: key (Algorithm 1 on units) | error (greedy Eq. 5)
        act_structure: entry     # activation bit-map units: entry | pixel | group<G>
        layer_bits: 1.4          # layer-level mixing: whole layers at layer_choices bits whose
        layer_choices: [1, 2, 3] #   parameter-weighted average is as close as possible to this
                                 #   (the plan and its average are recorded in the spec)
        seeds: [0, 1, 2]         # replaces the default seeds for this point
        paper: 55.2              # the paper's number for this row (shown beside ours)
        set: {optim.lr: 0.1}     # raw overrides, applied after the quant section is built

The file is read by the schema mechanism (:class:`hbnn.schema.Schema`): :class:`Experiment`,
:class:`Point` and :class:`Layout` list the allowed keys. Fig. 2a's own keys (``tensor``,
``heuristics``, ``mixes``, ``homogeneous``) are documented in :mod:`hbnn.experiments.fig2a`.

Resolution of one training run (:func:`expand_train`): recipe -> ``set`` -> ``quant`` (a
:class:`hbnn.convert.QuantizeConfig` from the point and layout, :func:`point_quant`) -> the
point's ``set`` -> command-line ``--set`` -> ``train.seed``; then the config is validated
once and its quant section recorded in explicit form (``QuantizeConfig.to_dict``), so the
recorded config replays unchanged. The ``random`` heuristic's permutation seed is the run
seed. :func:`hbnn.experiments.kinds.expand` dispatches on ``kind``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from hbnn.configs import find_config, list_configs
from hbnn.convert import QuantizeConfig
from hbnn.errors import ConfigError
from hbnn.quant.config import LayerQuant, QuantSpec
from hbnn.schema import Schema, check, check_choice
from hbnn.train.config import config_from_dict, config_to_dict
from hbnn.train.recipes import deep_merge, load_yaml_recipe, parse_override, set_dotted

__all__ = [
    "KINDS",
    "FIGURES",
    "HASH_EXCLUDE",
    "Layout",
    "Point",
    "Experiment",
    "RunSpec",
    "find_experiment",
    "load_experiment",
    "expand_train",
    "config_sha",
    "point_quant",
]

#: The kinds an experiment may name (their behaviour: :data:`hbnn.experiments.kinds.KIND_TABLE`).
KINDS = ("train", "fig2a")
FIGURES = ("fig2a", "fig2b", "fig3a", "fig3b", "mix", "table1", "block", "pilot", "structure")
#: Config keys that do not change a run's numbers (where files go, logging, the device
#: choice, data location); they are left out of the config hash.
HASH_EXCLUDE = ("run", "dist", "data.data_dir", "data.num_workers", "train.device",
                "train.log_every_steps", "train.checkpoint_every_steps")

_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def _check_name(key: str, name: Any) -> None:
    check(isinstance(name, str) and bool(_NAME.match(name)), key, name, "letters, digits and _ . + -")


def _check_seeds(value: Any, key: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    check(isinstance(value, (list, tuple)) and bool(value)
          and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value),
          key, value, "a non-empty list of integers >= 0")
    check(len(set(value)) == len(value), key, value, "seeds that do not repeat")
    return tuple(value)


@dataclass
class Layout(Schema):
    """How a point's bits become the ``quant`` section.

    Attributes:
        keep_first: ``QuantizeConfig.keep_first``.
        keep_last: ``QuantizeConfig.keep_last``.
        rules: fixed per-layer rules (regex -> layer config or null), applied before anything else.
        float_input: regexes of layers whose *input* stays float.
        with_act: layout keys that replace these for points with ``act``.
    """

    keep_first: bool = True
    keep_last: bool = True
    rules: dict | None = None
    float_input: list[str] | None = None
    with_act: dict | None = None

    def __post_init__(self) -> None:
        self.rules = dict(self.rules or {})
        self.float_input = list(self.float_input or [])
        self.with_act = dict(self.with_act or {})
        if self.with_act:  # its keys must be layout keys, other than with_act
            check("with_act" not in self.with_act, "with_act", self.with_act, "layout keys other than with_act")
            Layout.from_dict(self.with_act, "with_act")

    def for_point(self, with_act: bool) -> "Layout":
        """The layout of a point: ``with_act``'s keys replace these when the point has ``act``."""
        plain = replace(self, with_act={})
        return Layout.from_dict({**plain.to_dict(), **self.with_act}) if with_act else plain


@dataclass
class Point(Schema):
    """One grid point (see the module docstring for the keys).

    ``seeds`` is None when the experiment's seeds apply; :meth:`spec` is the point as
    written, recorded with every run. ``structure``/``allocate`` (weights) and
    ``act_structure`` become :class:`~hbnn.quant.config.QuantSpec` ``structure``/``allocate``;
    at their defaults (``entry``, ``key``, ``entry``) the quant section, and so the config
    hash, is the one of a point written without them.
    """

    name: str
    label: str | None = None
    weight: Any = None
    act: Any = None
    heuristic: str = "middle_out"
    act_heuristic: str = "middle_out"
    block: int = 1
    structure: str = "entry"
    allocate: str = "key"
    act_structure: str = "entry"
    layer_bits: float | None = None
    layer_choices: list[int] = field(default_factory=lambda: [1, 2, 3])
    seeds: Any = None
    paper: Any = None
    set: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        check(self.layer_bits is None or self.weight is None, "layer_bits", self.layer_bits,
              "either weight (per-parameter) or layer_bits (layer-level), not both")
        if self.seeds is not None:
            self.seeds = _check_seeds(self.seeds, "seeds")
        plain = self.weight is None  # float weights, or a layer-level plan of homogeneous layers
        check(not plain or self.structure == "entry", "structure", self.structure,
              "entry for a point without per-parameter binarized weights")
        check(not plain or self.allocate == "key", "allocate", self.allocate,
              "key for a point without per-parameter binarized weights")
        check(self.act is not None or self.act_structure == "entry", "act_structure", self.act_structure,
              "entry for a point without binarized activations")

    def spec(self) -> dict:
        """The point's mapping as written, without ``set`` and ``seeds``."""
        written = self.as_written() or self.to_dict()
        return {k: v for k, v in written.items() if k not in ("set", "seeds")}


@dataclass
class Experiment(Schema):
    """A loaded experiment (see the module docstring for the YAML keys).

    Attributes:
        name: the experiment's name (file stem unless ``name:`` is given).
        description: one line.
        kind: one of :data:`KINDS`.
        figure: the plot style (default: the name).
        recipe: the merged training recipe (not yet validated).
        set: the fixed dotted overrides.
        layout: the quant layout.
        seeds: the default seeds of every point.
        points: the grid points, each with its seeds filled in.
        tensor, heuristics, mixes, homogeneous: Fig. 2a's keys (:mod:`hbnn.experiments.fig2a`).
        path: the YAML file (None when built from a mapping).
    """

    name: str
    description: str = ""
    kind: str = "train"
    figure: str | None = None
    recipe: dict = field(default_factory=dict)
    set: dict = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout)
    seeds: Any = field(default_factory=lambda: [0])
    points: list[Point] = field(default_factory=list)
    tensor: dict = field(default_factory=dict)
    heuristics: list[str] | None = None
    mixes: list[float] | None = None
    homogeneous: list[int] | None = None
    path: Path | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        self.description = self.description.strip()
        check_choice("kind", self.kind, KINDS)
        self.figure = self.figure or self.name
        check_choice("figure", self.figure, FIGURES)
        self.seeds = _check_seeds(self.seeds, "seeds")
        seen: set[str] = set()
        for index, point in enumerate(self.points):
            if point.name in seen:
                raise ConfigError(f"points[{index}].name: {point.name!r} appears twice")
            seen.add(point.name)
            if point.seeds is None:
                point.seeds = self.seeds


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
    """The YAML file of an experiment: a path, or ``experiments/<name>.yaml`` of a config root.

    Raises:
        ConfigError: neither exists (the message lists the available experiments).
    """
    try:
        return find_config(name, "experiments")
    except ConfigError as exc:
        known = ", ".join(list_configs("experiments")) or "none (set HBNN_CONFIGS or run from the repository root)"
        raise ConfigError(f"experiment {str(name)!r} not found ({exc}); available: {known}") from None


def _resolve_recipe_path(entry: str, folder: Path | None) -> Path:
    for base in ((folder, folder.parent) if folder is not None else ()):
        if (base / entry).is_file():
            return base / entry
    for where in (("experiments", "") if folder is None else ("",)):
        try:
            return find_config(entry, where)
        except ConfigError:
            pass
    raise ConfigError(f"recipe {entry!r} not found next to the experiment ({folder or 'a mapping'}) "
                      "or under a config root")


def _merge_recipe(entries: Any, folder: Path | None) -> dict:
    if entries is None:
        return {}
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    check(isinstance(entries, list), "recipe", entries, "a path, a mapping or a list of them")
    merged: dict = {}
    for entry in entries:
        check(isinstance(entry, (str, Mapping)), "recipe", entry, "paths or mappings")
        part = load_yaml_recipe(_resolve_recipe_path(entry, folder)) if isinstance(entry, str) else dict(entry)
        merged = deep_merge(merged, part)
    return merged


def load_experiment(source: str | Path | Mapping[str, Any], name: str | None = None) -> Experiment:
    """Load and check an experiment from a name, a YAML path or a mapping.

    Args:
        source: experiment name (``experiments/<name>.yaml`` of a config root), path, or mapping.
        name: the experiment's name (default: ``name:`` in the file, else the file stem).

    Raises:
        ConfigError: unknown keys, bad points or seeds, missing recipes.
    """
    if isinstance(source, Mapping):
        path, data, folder = None, copy.deepcopy(dict(source)), None
    else:
        path = find_experiment(source)
        data, folder = load_yaml_recipe(path), path.parent
    data["name"] = name or data.get("name") or (path.stem if path else None)
    if "recipe" in data:
        data["recipe"] = _merge_recipe(data["recipe"], folder)
    exp = Experiment.from_dict(data)
    exp.path = path
    return exp


# ----------------------------------------------------------------------------- resolution

def _quant_spec(bits: Any, heuristic: str, block: int, seed: int, structure: str = "entry",
                allocate: str = "key") -> QuantSpec:
    # the random heuristic's permutation varies with the run seed; structure/allocate at their
    # defaults leave QuantSpec.to_dict (and so the config hash) as it was before they existed
    return QuantSpec(bits=bits, heuristic=heuristic, block=block, seed=seed if heuristic == "random" else 0,
                     structure=structure, allocate=allocate)


def point_quant(point: Point, layout: Layout, seed: int,
                layer_plan: Mapping[str, int] | None = None) -> QuantizeConfig | None:
    """The ``quant`` section of one point.

    Args:
        point: the grid point (weight, act, heuristic, act_heuristic, block, structure,
            allocate, act_structure; a layer-level plan's homogeneous weights take none of
            the weight map keys).
        layout: the experiment's layout.
        seed: the run seed (seeds the random heuristic).
        layer_plan: ``{layer name: bits}`` for a layer-level point (from
            :func:`hbnn.experiments.layerwise.solve_layer_bits`).

    Returns:
        None for a float point, else its :class:`~hbnn.convert.QuantizeConfig`.
    """
    if point.weight is None and point.act is None and layer_plan is None:
        return None
    lay = layout.for_point(point.act is not None)
    a = None if point.act is None else _quant_spec(point.act, point.act_heuristic, 1, seed, point.act_structure)
    rules: dict[str, Any] = dict(lay.rules)
    if layer_plan is not None:
        for name, bits in layer_plan.items():
            plain = any(re.search(p, name) for p in lay.float_input)
            rules[f"^{re.escape(name)}$"] = LayerQuant(weight=QuantSpec(bits=int(bits)), act=None if plain else a)
        default = None
    else:
        w = None if point.weight is None else _quant_spec(point.weight, point.heuristic, point.block, seed,
                                                          point.structure, point.allocate)
        for pattern in lay.float_input:
            rules.setdefault(pattern, LayerQuant(weight=w, act=None))
        default = LayerQuant(weight=w, act=a)
    return QuantizeConfig(default=default, rules=rules, keep_first=lay.keep_first, keep_last=lay.keep_last)


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


def _resolve(exp: Experiment, point: Point, seed: int, cli: list[tuple[str, Any]], plans: dict) -> RunSpec:
    data = set_dotted(exp.recipe, exp.set.items())
    point_set = list(point.set.items())
    plan = None
    if point.layer_bits is not None:
        plan = _layer_plan(exp, point, set_dotted(data, [*point_set, *cli]), plans)
    try:
        quant = point_quant(point, exp.layout, seed, None if plan is None else plan.bits)
        data["quant"] = None if quant is None else quant.to_dict()
        cfg = config_from_dict(set_dotted(data, [*point_set, *cli, ("train.seed", seed)]))
    except ConfigError as exc:
        raise ConfigError(f"{exp.name}/{point.name}: {exc}") from None
    config = config_to_dict(cfg)
    if cfg.quant is not None:
        config["quant"] = cfg.quant.to_dict()  # explicit, so the recorded config replays unchanged
    spec = point.spec()
    if plan is not None:
        spec["layer_plan"], spec["layer_average"] = dict(plan.bits), plan.average
    return RunSpec(experiment=exp.name, point=point.name, seed=seed, config=config,
                   sha=config_sha(config), spec=spec, figure=exp.figure)


def _layer_plan(exp: Experiment, point: Point, data: dict, cache: dict) -> Any:
    from hbnn.experiments.layerwise import layer_param_counts, solve_layer_bits

    lay = exp.layout.for_point(point.act is not None)
    layout_quant = {"rules": dict(lay.rules), "keep_first": lay.keep_first, "keep_last": lay.keep_last}
    key = json.dumps([data.get("model"), data.get("data"), layout_quant], sort_keys=True, default=str)
    if key not in cache:
        cache[key] = layer_param_counts(data, layout_quant)
    return solve_layer_bits(cache[key], float(point.layer_bits), tuple(point.layer_choices))


def expand_train(exp: Experiment, *, seeds: Iterable[int] | None = None,
                 overrides: Iterable[str] = ()) -> list[RunSpec]:
    """All runs of a training experiment, in point order then seed order.

    Args:
        exp: a loaded experiment of kind ``train``.
        seeds: replaces every point's seeds (the ``--seeds`` flag).
        overrides: ``key=value`` strings applied to every run (the ``--set`` flag).

    Raises:
        ConfigError: no points, or a point resolves to an invalid config.
    """
    if not exp.points:
        raise ConfigError(f"experiment {exp.name}: points must be a non-empty list")
    cli, plans = [parse_override(item) for item in overrides], {}
    chosen = None if seeds is None else _check_seeds(list(seeds), "--seeds")
    return [_resolve(exp, point, seed, cli, plans) for point in exp.points for seed in (chosen or point.seeds)]
