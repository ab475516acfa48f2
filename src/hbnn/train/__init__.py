"""Training system: configs, loops, checkpoints, logs, DDP and the train/eval/summary commands.

Small importable functions, no module-level state:

- :mod:`hbnn.train.config` -- :class:`Config` (dataclass tree) and :func:`load_config`
  (YAML recipes with ``extends:``, ``--set`` overrides);
- :mod:`hbnn.train.loop` -- :func:`build_optimizer`, :func:`build_scheduler`,
  :func:`train_one_epoch`, :func:`evaluate`;
- :mod:`hbnn.train.checkpoint` -- :func:`save_checkpoint`, :func:`load_checkpoint`,
  :func:`restore_checkpoint` (safetensors + JSON, both sealed, bound to their run, verified);
- :mod:`hbnn.train.rebuild` -- :func:`~hbnn.train.rebuild.build_model_for` (config +
  dataset shape -> model) and :func:`~hbnn.train.rebuild.model_from_checkpoint`;
- :mod:`hbnn.train.rundir` -- :func:`~hbnn.train.rundir.plan_run` (config and directory of
  a new or resumed run), :func:`~hbnn.train.rundir.load_run_checkpoint` (a run's own
  checkpoint) and :func:`~hbnn.train.rundir.prepare_run_dir` (run identity, resume from any kill);
- :mod:`hbnn.train.run` -- :func:`fit`, one run in a run directory (resume, DDP);
- :mod:`hbnn.train.evaluation` -- :func:`evaluate_checkpoint`, :func:`summary_for`.

Example:
    >>> from hbnn.configs import find_config
    >>> from hbnn.train import load_config, fit
    >>> cfg = load_config(find_config("fashion_mnist/w1.4_mo"), ["train.epochs=1"])  # doctest: +SKIP
    >>> fit(cfg, "runs/demo")                                                        # doctest: +SKIP
"""

from hbnn.train.checkpoint import Checkpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from hbnn.train.config import Config, config_from_dict, config_to_dict, load_config
from hbnn.train.evaluation import evaluate_checkpoint, summary_for
from hbnn.train.loop import build_optimizer, build_scheduler, evaluate, train_one_epoch
from hbnn.train.run import fit

__all__ = [
    "Checkpoint",
    "Config",
    "build_optimizer",
    "build_scheduler",
    "config_from_dict",
    "config_to_dict",
    "evaluate",
    "evaluate_checkpoint",
    "fit",
    "load_checkpoint",
    "load_config",
    "restore_checkpoint",
    "save_checkpoint",
    "summary_for",
    "train_one_epoch",
]
