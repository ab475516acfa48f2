"""``hbnn.train.rundir``: the run-directory policy ``hbnn train`` applies, without training."""

from __future__ import annotations

from pathlib import Path

import pytest

from hbnn.errors import CheckpointError, ConfigError
from hbnn.train.config import save_config
from hbnn.train.rundir import RUN_FILES, plan_run, prepare_run_dir


@pytest.fixture
def saved_run(tmp_path):
    """A run directory holding only its config (model cifar_fc4, 2 epochs)."""
    cfg, _ = plan_run(None, ["model.name=cifar_fc4", "train.epochs=2"])
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    return run


def test_new_run_goes_to_out_or_the_default():
    cfg, run_dir = plan_run(None, ["model.name=cifar_fc4", "data.name=mnist"])
    assert run_dir == Path("runs/cifar_fc4-mnist") and cfg.run.out is None
    cfg, run_dir = plan_run(None, ["model.name=cifar_fc4"], out="elsewhere")
    assert run_dir == Path("elsewhere") and cfg.run.out == "elsewhere"


def test_resume_takes_the_saved_config(saved_run):
    cfg, run_dir = plan_run(None, ["train.epochs=3"], resume=saved_run, out=str(saved_run))
    assert run_dir == saved_run and cfg.train.epochs == 3 and cfg.model.name == "cifar_fc4"


@pytest.mark.parametrize("kwargs,message", [
    ({"recipe": "fashion_mnist/w2"}, "--resume takes the config from RUN_DIR/config.yaml; drop the recipe argument"),
    ({"overwrite": True}, "--resume and --overwrite exclude each other"),
    ({"out": "other"}, "--out other differs from --resume"),
    ({"overrides": ["train.batch_size=7"]}, "cannot change train.batch_size when resuming"),
])
def test_resume_refusals(saved_run, kwargs, message):
    kwargs = {"recipe": None, **kwargs}
    with pytest.raises(ConfigError, match=message):
        plan_run(kwargs.pop("recipe"), kwargs.pop("overrides", ()), resume=saved_run, **kwargs)


def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"is not an hbnn run directory \(no config.yaml\)"):
        plan_run(None, resume=tmp_path)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        prepare_run_dir(tmp_path, resume=True)


def test_overwrite_clears_only_run_files(saved_run):
    (saved_run / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="already exists; pass --resume"):
        prepare_run_dir(saved_run)
    prepare_run_dir(saved_run, overwrite=True)
    assert sorted(p.name for p in saved_run.iterdir()) == ["notes.txt"] and "config.yaml" in RUN_FILES
    (saved_run / "config.yaml").unlink(missing_ok=True)
    with pytest.raises(FileExistsError, match="--overwrite refused"):
        prepare_run_dir(saved_run, overwrite=True)
