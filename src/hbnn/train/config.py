"""Training configuration: a tree of dataclasses that validate themselves.

A run is described by one :class:`Config` with the sections ``model``, ``data``,
``quant``, ``optim``, ``sched``, ``train``, ``run`` and ``dist``. Recipes are YAML files
(``configs/``); a recipe may name other recipes under ``extends:`` (a path or a list of
paths, relative to the file), which are deep-merged first, in order, then the file
itself on top. Command-line ``--set section.key=value`` overrides come last; values are
parsed as YAML (``0.1``, ``null``, ``[1, 2]``, ``{bits: 2}``). No code is ever executed.

Example:
    >>> cfg = load_config(None, ["train.epochs=3", "optim.lr=0.1"])
    >>> cfg.train.epochs, cfg.optim.lr
    (3, 0.1)

Every mistake raises :class:`hbnn.errors.ConfigError` with one line naming the key, the
bad value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from hbnn.errors import ConfigError
from hbnn.io import atomic_write_text
from hbnn.train._schema import build_dataclass

__all__ = [
    "Config",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "SchedConfig",
    "TrainConfig",
    "RunConfig",
    "DistConfig",
    "DATASETS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "load_config",
    "resolve_recipe",
    "load_yaml_recipe",
    "deep_merge",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "save_config",
    "validate_quant",
]

DATASETS = ("fashion_mnist", "mnist", "cifar10", "imagenet")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("step", "cosine", "constant")
ACTIVATIONS = ("relu", "hardtanh")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "nccl", "gloo")


def _choice(section: str, name: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{section}.{name}: {value!r} is not allowed; choose one of {', '.join(allowed)}")


def _check(cond: bool, section: str, name: str, value: Any, what: str) -> None:
    if not cond:
        raise ConfigError(f"{section}.{name}: {value!r} is invalid; expected {what}")


@dataclass
class ModelConfig:
    """Which network to build: ``hbnn.models.build_model(name, activation=..., **kwargs)``.

    Attributes:
        name: a registered model name (``hbnn.models.list_models()``).
        activation: ``"relu"`` or ``"hardtanh"`` (binarized-activation recipes use hardtanh).
        kwargs: extra keyword arguments of the model's constructor (e.g. ``width``).
    """

    name: str = "cifar_fc4"
    activation: str = "relu"
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(bool(self.name), "model", "name", self.name, "a model name")
        _choice("model", "activation", self.activation, ACTIVATIONS)


@dataclass
class DataConfig:
    """Which dataset: ``hbnn.data.build_dataset(name, split, data_dir, image_size, limit=...)``.

    Attributes:
        name: dataset name (``hbnn.data.list_datasets()``).
        data_dir: folder with the dataset files (None = the dataset's default location).
        augment: training augmentation on/off (evaluation never augments).
        image_size: output side for image folders (ImageNet); None = the dataset's native size.
        train_limit: use a fixed random subset of this many training samples (None = all).
        test_limit: likewise for the test split.
        num_workers: decoding worker processes for lazily decoded datasets (image folders).
    """

    name: str = "fashion_mnist"
    data_dir: str | None = None
    augment: bool = True
    image_size: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        _choice("data", "name", self.name, _dataset_names())
        for name in ("image_size", "train_limit", "test_limit"):
            value = getattr(self, name)
            _check(value is None or value >= 1, "data", name, value, "null or an integer >= 1")
        _check(self.num_workers >= 0, "data", "num_workers", self.num_workers, "an integer >= 0")


def _dataset_names() -> tuple[str, ...]:
    try:
        from hbnn.data import list_datasets
    except ImportError:  # pragma: no cover - partial source trees
        return DATASETS
    return tuple(list_datasets())


@dataclass
class OptimConfig:
    """Optimizer; the paper's recipe is SGD lr 0.01, momentum 0.9, weight decay 1e-4.

    Attributes:
        name: ``sgd``, ``adam`` or ``adamw``.
        lr: base learning rate (> 0).
        momentum: SGD momentum in [0, 1).
        weight_decay: L2 penalty (>= 0), applied to every parameter.
        nesterov: Nesterov momentum (SGD only).
        betas: Adam betas.
    """

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def __post_init__(self) -> None:
        _choice("optim", "name", self.name, OPTIMIZERS)
        _check(self.lr > 0 and math.isfinite(self.lr), "optim", "lr", self.lr, "a finite number > 0")
        _check(0 <= self.momentum < 1, "optim", "momentum", self.momentum, "a number in [0, 1)")
        _check(self.weight_decay >= 0, "optim", "weight_decay", self.weight_decay, "a number >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim", "betas",
               self.betas, "two numbers in [0, 1)")
        _check(not (self.nesterov and (self.name != "sgd" or self.momentum == 0)), "optim", "nesterov",
               self.nesterov, "nesterov only with sgd and momentum > 0")


@dataclass
class SchedConfig:
    """Learning-rate schedule, stepped once per epoch.

    Attributes:
        name: ``step`` (lr *= gamma every ``step_size`` epochs; the paper's /10 every 30),
            ``cosine`` (cosine annealing from lr to ``min_lr`` over the run's epochs) or
            ``constant``.
        step_size: epochs between decays (step).
        gamma: decay factor (step), in (0, 1].
        min_lr: final learning rate (cosine).
        interval: ``epoch`` (the lr changes once per epoch) or ``step`` (once per optimizer
            step, on the same curve: ``step_size`` and the cosine period are still counted in
            epochs) -- short runs need ``step`` to anneal smoothly.
    """

    name: str = "step"
    step_size: int = 30
    gamma: float = 0.1
    min_lr: float = 0.0
    interval: str = "epoch"

    def __post_init__(self) -> None:
        _choice("sched", "name", self.name, SCHEDULERS)
        _choice("sched", "interval", self.interval, ("epoch", "step"))
        _check(self.step_size >= 1, "sched", "step_size", self.step_size, "an integer >= 1")
        _check(0 < self.gamma <= 1, "sched", "gamma", self.gamma, "a number in (0, 1]")
        _check(self.min_lr >= 0, "sched", "min_lr", self.min_lr, "a number >= 0")


@dataclass
class TrainConfig:
    """The training loop.

    Attributes:
        epochs: number of epochs (paper: 90).
        batch_size: global batch size (split evenly over DDP ranks; paper: 256).
        eval_batch_size: test batch size (None = ``batch_size``).
        seed: seeds model init, data order and augmentation.
        eval_every: evaluate on the test split every this many epochs (and at the end).
        checkpoint_every_steps: also write ``last`` every N optimizer steps (0 = epoch end only).
        log_every_steps: TensorBoard step-scalar interval.
        limit_train_batches: use at most this many training batches per epoch (None = all).
        limit_test_batches: use at most this many test batches (None = all).
        label_smoothing: cross-entropy label smoothing in [0, 1).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        deterministic: ``torch.use_deterministic_algorithms`` (warn-only for ops without one).
        threads: torch CPU threads per process (None = torch's default, one per core).
    """

    epochs: int = 90
    batch_size: int = 256
    eval_batch_size: int | None = None
    seed: int = 0
    eval_every: int = 1
    checkpoint_every_steps: int = 0
    log_every_steps: int = 50
    limit_train_batches: int | None = None
    limit_test_batches: int | None = None
    label_smoothing: float = 0.0
    device: str = "auto"
    deterministic: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every", "log_every_steps"):
            value = getattr(self, name)
            _check(value >= 1, "train", name, value, "an integer >= 1")
        for name in ("eval_batch_size", "limit_train_batches", "limit_test_batches", "threads"):
            value = getattr(self, name)
            _check(value is None or value >= 1, "train", name, value, "null or an integer >= 1")
        _check(self.seed >= 0, "train", "seed", self.seed, "an integer >= 0")
        _check(self.checkpoint_every_steps >= 0, "train", "checkpoint_every_steps",
               self.checkpoint_every_steps, "an integer >= 0")
        _check(0 <= self.label_smoothing < 1, "train", "label_smoothing", self.label_smoothing,
               "a number in [0, 1)")
        _choice("train", "device", self.device, DEVICES)


@dataclass
class RunConfig:
    """Where and how a run records itself.

    Attributes:
        out: run directory (None = ``runs/<recipe>``).
        tensorboard: write TensorBoard events under ``<out>/tb`` (skipped if not installed).
        progress: tqdm progress bar (only on a TTY, rank 0, and not with ``--quiet``).
    """

    out: str | None = None
    tensorboard: bool = True
    progress: bool = True


@dataclass
class DistConfig:
    """Distributed (torchrun) settings; ignored for single-process runs.

    Attributes:
        backend: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
        timeout_s: collective timeout; a stuck or dead peer fails the job after this long.
    """

    backend: str = "auto"
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        _choice("dist", "backend", self.backend, BACKENDS)
        _check(self.timeout_s > 0, "dist", "timeout_s", self.timeout_s, "a number of seconds > 0")


@dataclass
class Config:
    """A complete, validated training configuration.

    ``quant`` is None for a float model, else the dict form of
    ``hbnn.convert.QuantizeConfig`` (see docs/architecture.md), passed through unchanged.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quant: dict | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# ----------------------------------------------------------------------------- dict <-> Config

def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from its dict form (missing keys take defaults)."""
    cfg = build_dataclass(Config, data, "")
    validate_quant(cfg.quant)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The plain-dict form of ``cfg`` (JSON/YAML-safe; round-trips with :func:`config_from_dict`)."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    """``cfg`` as YAML text, sections in schema order."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Atomically write ``cfg`` as YAML to ``path``."""
    atomic_write_text(path, config_to_yaml(cfg))


def validate_quant(quant: Any) -> None:
    """Validate the ``quant`` section with ``hbnn.convert.QuantizeConfig.from_dict``.

    Raises:
        ConfigError: the section is not a mapping or QuantizeConfig rejects it.
    """
    if quant is None:
        return
    if not isinstance(quant, Mapping):
        raise ConfigError(f"quant: {quant!r} is invalid; expected null (float model) or a mapping")
    try:
        from hbnn.convert import QuantizeConfig
    except ImportError:  # pragma: no cover - convert is part of hbnn; tolerate partial trees
        return
    try:
        QuantizeConfig.from_dict(dict(quant))
    except (ValueError, TypeError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"quant: {msg}") from None


# ----------------------------------------------------------------------------- YAML + overrides

def deep_merge(base: dict, top: Mapping) -> dict:
    """Recursively merge ``top`` into a copy of ``base``; non-dict values (and null) replace."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_deep_merge = deep_merge  # old private name, still imported by hbnn.experiments.spec


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


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: bad key {key!r}; expected section.key, e.g. optim.lr")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return parts, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict:
    """Apply ``section.key=value`` strings to a config dict (values parsed as YAML).

    Keys are checked when the result is validated by :func:`config_from_dict`; free-form
    sections (``quant``, ``model.kwargs``) get missing intermediate mappings created.
    """
    out = copy.deepcopy(dict(data))
    for item in overrides:
        parts, value = _parse_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> Config:
    """Resolve a full configuration: defaults < ``base`` < recipe at ``path`` < ``overrides``.

    Args:
        path: a YAML recipe (None = defaults only).
        overrides: ``section.key=value`` strings.
        base: an already-resolved config dict to start from (e.g. a run's ``config.yaml``).

    Returns:
        The validated :class:`Config`.
    """
    data: dict = dict(base or {})
    if path is not None:
        data = deep_merge(data, load_yaml_recipe(path))
    data = apply_overrides(data, overrides)
    return config_from_dict(data)


def resolve_recipe(name: str | os.PathLike) -> Path:
    """A recipe path from a path or a name under ``configs/`` (``cifar10/w1.4_mo``).

    Raises:
        ConfigError: neither exists.
    """
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (Path("configs") / name, Path("configs") / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {name} (also looked for configs/{name}.yaml)")
