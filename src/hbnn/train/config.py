"""Training configuration: a tree of dataclasses that validate themselves.

A run is described by one :class:`Config` with the sections ``model``, ``data``,
``quant``, ``optim``, ``sched``, ``train``, ``run`` and ``dist``. Recipes are YAML files
(``hbnn/recipes/``) read by :mod:`hbnn.train.recipes` (``extends:`` and ``--set
section.key=value`` overrides); :func:`load_config` resolves defaults < base < recipe <
overrides into a validated :class:`Config`. No code is ever executed.

Example:
    >>> cfg = load_config(None, ["train.epochs=3", "optim.lr=0.1"])
    >>> cfg.train.epochs, cfg.optim.lr
    (3, 0.1)

Every section is a :class:`hbnn.schema.Schema` dataclass, built by the one schema
mechanism; ``quant`` is a typed :class:`hbnn.convert.QuantizeConfig` (None = float model).
Every mistake raises :class:`hbnn.errors.ConfigError` with one line naming the key, the
bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from hbnn.configs import find_config
from hbnn.convert import QuantizeConfig
from hbnn.data import list_datasets
from hbnn.io import atomic_write_text
from hbnn.models import ACTIVATIONS, is_model_path
from hbnn.schema import Schema, check, check_choice
from hbnn.train.recipes import apply_overrides, deep_merge, load_yaml_recipe

__all__ = [
    "Config",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "SchedConfig",
    "TrainConfig",
    "RunConfig",
    "DistConfig",
    "OPTIMIZERS",
    "SCHEDULERS",
    "AMP_DTYPES",
    "load_config",
    "resolve_recipe",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "save_config",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("step", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
#: ``train.amp`` choices besides null (autocast dtypes).
AMP_DTYPES = ("bf16", "fp16")


def _without_opt_in_defaults(section: Schema, out: dict, keys: tuple[str, ...]) -> dict:
    """Drop the opt-in ``keys`` still at their defaults from ``section``'s dict form.

    Keys added after runs were recorded (warmup, autocast, clipping, EMA, distillation)
    appear in a config file, checkpoint or sweep hash only when set, so a run that does
    not use them records exactly the config it recorded before they existed.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(section)}
    for key in keys:
        if out.get(key) == defaults[key]:
            del out[key]
    return out
BACKENDS = ("auto", "nccl", "gloo")


@dataclass
class ModelConfig(Schema):
    """Which network to build: ``hbnn.models.build_model(name, activation=..., **kwargs)``.

    Attributes:
        name: a registered model name (``hbnn.models.list_models()``) or a user model
            ``package.module:callable`` (:func:`hbnn.models.is_model_path`), called like a
            registered builder with ``num_classes``, ``in_channels``, ``image_size`` and ``kwargs``.
        activation: ``"relu"`` or ``"hardtanh"`` (binarized-activation recipes use hardtanh);
            a user model without an ``activation`` option gets it only when not ``"relu"``.
        kwargs: extra keyword arguments of the model's constructor (e.g. ``width``).
    """

    name: str = "cifar_fc4"
    activation: str = "relu"
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and bool(self.name) and (":" not in self.name or is_model_path(self.name)),
              "name", self.name, "a model name or package.module:callable")
        check_choice("activation", self.activation, ACTIVATIONS)


@dataclass
class DataConfig(Schema):
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
        check_choice("name", self.name, list_datasets())
        for name in ("image_size", "train_limit", "test_limit"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, value, "null or an integer >= 1")
        check(self.num_workers >= 0, "num_workers", self.num_workers, "an integer >= 0")


@dataclass
class OptimConfig(Schema):
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
        check_choice("name", self.name, OPTIMIZERS)
        check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite number > 0")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
               self.betas, "two numbers in [0, 1)")
        check(not (self.nesterov and (self.name != "sgd" or self.momentum == 0)), "nesterov",
               self.nesterov, "nesterov only with sgd and momentum > 0")


@dataclass
class SchedConfig(Schema):
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
        warmup_epochs: linear warmup length in epochs (a float >= 0; 0 = none). The
            ``k``-th optimizer step (``k = 0, 1, ...``) runs at the schedule's lr times
            ``min(1, s + (1 - s) * (k + 1) / W)`` with ``W = warmup_epochs * steps per epoch``
            and ``s = warmup_start_factor``; a pure function of the step, so resumable.
        warmup_start_factor: the warmup's starting fraction ``s`` of the lr, in [0, 1).

    ``warmup_epochs`` and ``warmup_start_factor`` are recorded only when set (see
    :func:`_without_opt_in_defaults`).
    """

    name: str = "step"
    step_size: int = 30
    gamma: float = 0.1
    min_lr: float = 0.0
    interval: str = "epoch"
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0

    def __post_init__(self) -> None:
        check_choice("name", self.name, SCHEDULERS)
        check_choice("interval", self.interval, ("epoch", "step"))
        check(self.step_size >= 1, "step_size", self.step_size, "an integer >= 1")
        check(0 < self.gamma <= 1, "gamma", self.gamma, "a number in (0, 1]")
        check(self.min_lr >= 0, "min_lr", self.min_lr, "a number >= 0")
        check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "a number of epochs >= 0")
        check(0 <= self.warmup_start_factor < 1, "warmup_start_factor", self.warmup_start_factor,
              "a number in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """The dict form; the warmup keys only when set."""
        return _without_opt_in_defaults(self, super().to_dict(), ("warmup_epochs", "warmup_start_factor"))


@dataclass
class TrainConfig(Schema):
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
        amp: autocast dtype of the forward pass and loss: null (float32), ``bf16`` or
            ``fp16``. fp16 scales the loss with a ``torch.amp.GradScaler`` (its state is
            checkpointed); fp16 needs a device whose autocast supports it (CUDA; CPU only
            where torch supports it). Quantizer statistics stay float32 buffers.
        grad_clip: clip the global gradient L2 norm to this value (> 0) before each
            optimizer step (``clip_grad_norm_``; gradients unscaled first under fp16); null = off.
        ema: decay ``d`` in (0, 1) of an exponential moving average of the weights (every
            floating ``state_dict`` entry, BatchNorm and quantizer statistics included;
            integer counters copied): ``shadow <- d * shadow + (1 - d) * w`` after every
            optimizer step, starting from the initial weights. Evaluation during training,
            ``best`` selection, and ``hbnn eval``/``summary``/``export`` of the checkpoint use
            the EMA weights; training continues on the raw weights. null = off.
        teacher: knowledge distillation from a float model: a run directory (its ``best``)
            or checkpoint of a non-binarized model trained for the same classes; null = off.
        kd_alpha: distillation weight ``a`` in [0, 1]: loss = ``(1 - a) * CE(s, y) +
            a * T**2 * KL(softmax(t / T) || softmax(s / T))`` (batch mean), with ``s``
            and ``t`` the student's and teacher's logits.
        kd_temperature: the distillation temperature ``T`` (> 0).

    The keys from ``amp`` on are recorded only when set (:func:`_without_opt_in_defaults`),
    so configs and checkpoints of runs without them are unchanged.
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
    amp: str | None = None
    grad_clip: float | None = None
    ema: float | None = None
    teacher: str | None = None
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every", "log_every_steps"):
            value = getattr(self, name)
            check(value >= 1, name, value, "an integer >= 1")
        for name in ("eval_batch_size", "limit_train_batches", "limit_test_batches", "threads"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, value, "null or an integer >= 1")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        check(self.checkpoint_every_steps >= 0, "checkpoint_every_steps",
               self.checkpoint_every_steps, "an integer >= 0")
        check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing,
               "a number in [0, 1)")
        check_choice("device", self.device, DEVICES)
        check(self.amp is None or self.amp in AMP_DTYPES, "amp", self.amp, "null, bf16 or fp16")
        check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "null or a number > 0")
        check(self.ema is None or 0 < self.ema < 1, "ema", self.ema, "null or a decay in (0, 1)")
        check(self.teacher is None or bool(self.teacher), "teacher", self.teacher,
              "null or the path of a float run directory or checkpoint")
        check(0 <= self.kd_alpha <= 1, "kd_alpha", self.kd_alpha, "a number in [0, 1]")
        check(self.kd_temperature > 0, "kd_temperature", self.kd_temperature, "a number > 0")
        if self.teacher is None:
            for key in ("kd_alpha", "kd_temperature"):
                check(getattr(self, key) == _TRAIN_DEFAULTS[key], key, getattr(self, key),
                      f"{_TRAIN_DEFAULTS[key]} (the default) unless train.teacher is set")

    def to_dict(self) -> dict[str, Any]:
        """The dict form; the opt-in keys (``amp`` .. ``kd_temperature``) only when set."""
        return _without_opt_in_defaults(self, super().to_dict(), _TRAIN_OPT_IN)


_TRAIN_OPT_IN = ("amp", "grad_clip", "ema", "teacher", "kd_alpha", "kd_temperature")
_TRAIN_DEFAULTS = {"kd_alpha": 0.5, "kd_temperature": 4.0}


@dataclass
class RunConfig(Schema):
    """Where and how a run records itself.

    Attributes:
        out: run directory (None = ``runs/<recipe>``).
        tensorboard: write TensorBoard events under ``<out>/tb`` (skipped if not installed).
        progress: progress within epochs (:mod:`hbnn.progress`: a tqdm bar on a terminal, else
            a log line every ``HBNN_PROGRESS_EVERY_S`` s); rank 0 only, never with ``--quiet``.
    """

    out: str | None = None
    tensorboard: bool = True
    progress: bool = True


@dataclass
class DistConfig(Schema):
    """Distributed (torchrun) settings; ignored for single-process runs.

    Attributes:
        backend: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
        timeout_s: collective timeout; a stuck or dead peer fails the job after this long.
    """

    backend: str = "auto"
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, BACKENDS)
        check(self.timeout_s > 0, "timeout_s", self.timeout_s, "a number of seconds > 0")


@dataclass
class Config(Schema):
    """A complete, validated training configuration.

    ``quant`` is None for a float model, else a :class:`hbnn.convert.QuantizeConfig`.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quant: QuantizeConfig | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict form; ``quant`` as it was written (:meth:`~hbnn.schema.Schema.as_written`)."""
        out = super().to_dict()
        written = None if self.quant is None else self.quant.as_written()
        if written is not None:
            out["quant"] = written
        return out


# ----------------------------------------------------------------------------- dict <-> Config

def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from its dict form (missing keys take defaults)."""
    return Config.from_dict(data)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The plain-dict form of ``cfg`` (JSON/YAML-safe; round-trips with :func:`config_from_dict`).

    The ``quant`` section is recorded as it was given, so a run's config file and hash
    replay exactly; :meth:`hbnn.convert.QuantizeConfig.to_dict` is its explicit form.
    """
    return cfg.to_dict()


def config_to_yaml(cfg: Config) -> str:
    """``cfg`` as YAML text, sections in schema order."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Atomically write ``cfg`` as YAML to ``path``."""
    atomic_write_text(path, config_to_yaml(cfg))


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
    """A recipe path from a path or a name under a config root (``cifar10/w1.4_mo``; see :mod:`hbnn.configs`).

    Raises:
        ConfigError: neither exists.
    """
    return find_config(name)
