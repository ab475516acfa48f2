"""``hbnn calibrate RUN``: calibrate a run's activation quantizers and save the result beside it.

The run's checkpoint (``best``, falling back to ``last``, or ``last``) is rebuilt
(:func:`hbnn.train.rebuild.model_from_checkpoint`), :func:`hbnn.calibrate` runs ``N``
batches of the training split through it (the run's batch size, shuffled with the run's
seed, no augmentation), and the calibrated model is written as a separate checkpoint
``RUN/calibrated.safetensors`` + ``.json`` (:data:`CALIBRATED`). ``last``/``best`` are
never touched, so resuming the run is unaffected.

The calibrated checkpoint is a checkpoint of the same run: the source's metadata (same
``run_id``, config, position ``step``/``epoch``, ``metrics`` of the source's last
evaluation) with the calibrated model tensors and no optimizer or scheduler state. It is
loaded like any other (sealed, bound to the run): ``hbnn eval|export RUN --which
calibrated``, ``hbnn summary RUN/calibrated.safetensors``. Training the run further does
not update it; calibrate again.
"""

from __future__ import annotations

import os
from pathlib import Path

from hbnn.errors import ConfigError

__all__ = ["CALIBRATED", "calibrate_run"]

#: Name of the calibrated checkpoint in a run directory.
CALIBRATED = "calibrated"


def _check_args(run_dir: Path, batches: object) -> None:
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ConfigError(f"calibrate: --batches {batches!r} is invalid; expected an integer >= 1")
    if not run_dir.is_dir() or not (run_dir / "config.yaml").exists():
        raise ConfigError(f"calibrate: {run_dir} is not an hbnn run directory (no config.yaml); "
                          "give the folder hbnn train wrote")


def calibrate_run(run_dir: str | os.PathLike, *, batches: int = 20, data_dir: str | None = None,
                  which: str = "best", device: str = "auto") -> tuple[dict, str]:
    """Calibrate the run's ``which`` checkpoint on ``batches`` training batches; write ``calibrated``.

    Args:
        run_dir: a run directory written by ``hbnn train``.
        batches: training batches to calibrate on (fewer if the split has fewer full batches).
        data_dir: dataset folder (None: the run's).
        which: ``best`` (falls back to ``last``) or ``last``.
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        ``(result, text)``: ``result`` is ``{"run", "source", "out", "step", "epoch",
        **CalibrationReport.as_dict()}``; ``text`` the report as a table.

    Raises:
        ConfigError: not a run directory, ``batches < 1``, a model without activation
            quantizers, ``which`` not best/last.
        CheckpointError: no usable checkpoint in the run.
        DatasetError: the training data is missing.
    """
    from hbnn.calibration import calibrate, format_calibration
    from hbnn.data import build_dataset, build_loader
    from hbnn.train.checkpoint import save_checkpoint
    from hbnn.train.config import config_from_dict
    from hbnn.train.distributed import resolve_device
    from hbnn.train.rebuild import model_from_checkpoint

    run_dir = Path(run_dir)
    _check_args(run_dir, batches)
    if which not in ("best", "last"):
        raise ConfigError(f"calibrate: --which {which!r} is not allowed; choose best or last")
    model, ckpt = model_from_checkpoint(run_dir, which)
    cfg = config_from_dict(ckpt.metadata["config"])
    d = cfg.data
    train = build_dataset(d.name, "train", data_dir if data_dir is not None else d.data_dir, d.image_size,
                          limit=d.train_limit)
    loader = build_loader(train, batch_size=cfg.train.batch_size, train=True, seed=cfg.train.seed, epoch=0,
                          augment=False, num_workers=d.num_workers)
    dev = resolve_device(device)
    model.to(dev)
    report = calibrate(model, loader, max_batches=batches)
    meta = {k: v for k, v in ckpt.metadata.items() if k not in ("sha256", "file")}
    save_checkpoint(run_dir / CALIBRATED, model_state={k: v.cpu() for k, v in model.state_dict().items()},
                    metadata=meta)
    out = run_dir / f"{CALIBRATED}.safetensors"
    result = {"run": str(run_dir), "source": str(ckpt.path), "out": str(out), "step": ckpt.metadata["step"],
              "epoch": ckpt.metadata["epoch"], **report.as_dict()}
    text = f"{format_calibration(report)}\nwrote {out} (from {ckpt.path.name}, step {result['step']})"
    return result, text
