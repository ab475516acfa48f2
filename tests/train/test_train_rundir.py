"""``hbnn.train.rundir``: the run-directory policy ``hbnn train`` applies, without training."""

from __future__ import annotations

from pathlib import Path

import pytest

import json

import torch

from hbnn.errors import CheckpointError, ConfigError
from hbnn.train.checkpoint import save_checkpoint
from hbnn.train.config import config_to_dict, save_config
from hbnn.train.rundir import (
    RUN_FILE,
    RUN_FILES,
    has_checkpoint,
    load_run_checkpoint,
    plan_run,
    prepare_run_dir,
    read_run_id,
    run_state,
    stale_temp_files,
)


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
    ({"recipe": "fashion_mnist/w2"}, "cannot change quant.default.weight.bits when resuming"),
    ({"overwrite": True}, "--resume and --overwrite exclude each other"),
    ({"out": "other"}, "--out other differs from --resume"),
    ({"overrides": ["train.batch_size=7"]}, "cannot change train.batch_size when resuming"),
])
def test_resume_refusals(saved_run, kwargs, message):
    kwargs = {"recipe": None, **kwargs}
    with pytest.raises(ConfigError, match=message):
        plan_run(kwargs.pop("recipe"), kwargs.pop("overrides", ()), resume=saved_run, **kwargs)


def test_resume_needs_a_run_directory_or_a_recipe(tmp_path):
    with pytest.raises(ConfigError, match=r"is not an hbnn run directory \(no config.yaml\).*--resume"):
        plan_run(None, resume=tmp_path)
    with pytest.raises(ConfigError, match="needs --out"):
        plan_run(None, resume=True)
    # Killed before config.yaml was written: the recipe's own command with --resume starts it.
    cfg, run_dir = plan_run("fashion_mnist/w2", ["train.epochs=3"], out=str(tmp_path / "r"), resume=True)
    assert run_dir == tmp_path / "r" and cfg.train.epochs == 3
    assert plan_run("fashion_mnist/w2", out=str(tmp_path / "r"), resume=str(tmp_path / "r"))[1] == run_dir


def test_resume_with_a_recipe_checks_it_against_the_saved_config(saved_run):
    cfg, run_dir = plan_run(None, ["model.name=cifar_fc4", "train.epochs=4"], out=str(saved_run), resume=True)
    assert run_dir == saved_run and cfg.train.epochs == 4
    with pytest.raises(ConfigError, match="cannot change optim.lr when resuming"):
        plan_run(None, ["model.name=cifar_fc4", "optim.lr=0.5"], out=str(saved_run), resume=True)


def _leave_temp(folder, name="config.yaml"):
    path = folder / f".{name}.0123abcd.tmp"
    path.write_bytes(b"partial")
    return path


def test_run_states(tmp_path, saved_run):
    assert run_state(tmp_path / "none") == "new"
    killed = tmp_path / "killed"
    killed.mkdir()
    _leave_temp(killed)
    (killed / RUN_FILE).write_text("{}")
    assert run_state(killed) == "new"  # killed while writing config.yaml: not started
    assert run_state(saved_run) == "started" and not has_checkpoint(saved_run)
    (saved_run / "last.safetensors").write_bytes(b"")
    assert run_state(saved_run) == "checkpointed" and has_checkpoint(saved_run)
    (killed / "thesis.tex").write_text("x")
    assert run_state(killed) == "foreign"


def test_a_run_killed_before_its_config_starts_over_and_loses_its_temp_files(tmp_path):
    killed = tmp_path / "killed"
    killed.mkdir()
    temp = _leave_temp(killed)
    for resume in (False, True):
        prepared = prepare_run_dir(killed, resume=resume)
        assert prepared.removed == ((temp.name,) if not resume else ())
        assert read_run_id(killed) == prepared.run_id and len(prepared.run_id) == 32
    assert sorted(p.name for p in killed.iterdir()) == [RUN_FILE]
    (killed / ".notes.txt.0123abcd.tmp").write_text("not ours")
    assert not stale_temp_files(killed) and run_state(killed) == "foreign"


def test_resume_of_a_started_run_keeps_its_identity_and_removes_temp_files(saved_run):
    first = prepare_run_dir(saved_run, resume=True).run_id  # an old run without run.json gets one
    temps = [_leave_temp(saved_run, name) for name in ("last.safetensors", "metrics.csv")]
    assert stale_temp_files(saved_run) == sorted(temps)
    prepared = prepare_run_dir(saved_run, resume=True)
    assert prepared.run_id == first and sorted(prepared.removed) == sorted(p.name for p in temps)
    assert not stale_temp_files(saved_run)


def test_checkpoint_files_without_last_are_refused(saved_run):
    (saved_run / "best.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="holds best.safetensors but no last.safetensors"):
        has_checkpoint(saved_run)


def test_read_run_id_refuses_edited_identity(saved_run):
    run_id = prepare_run_dir(saved_run, resume=True).run_id
    data = json.loads((saved_run / RUN_FILE).read_text())
    data["run_id"] = "0" * 32
    (saved_run / RUN_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="run.json is corrupt or was edited"):
        read_run_id(saved_run)
    assert run_id != "0" * 32


def _checkpoint(folder, cfg, run_id, name="last"):
    model = torch.nn.Linear(2, 2)
    config = config_to_dict(cfg)
    shape = {"num_classes": 10, "in_channels": 1, "image_size": 28}  # fashion_mnist
    save_checkpoint(folder / name, model_state=model.state_dict(),
                    metadata={"run_id": run_id, "step": 1, "epoch": 1, "batch_in_epoch": 0, "config": config,
                              "model": {"name": cfg.model.name, "config": config["model"],
                                        "quant": config["quant"], **shape}})


def test_a_checkpoint_in_a_run_directory_must_be_that_runs(saved_run, tmp_path):
    cfg, _ = plan_run(None, ["model.name=cifar_fc4", "train.epochs=2"])
    run_id = prepare_run_dir(saved_run, resume=True).run_id
    _checkpoint(saved_run, cfg, run_id)
    assert load_run_checkpoint(saved_run).metadata["run_id"] == run_id
    _checkpoint(saved_run, plan_run(None, ["model.name=cifar_fc4", "train.epochs=5"])[0], run_id)
    assert load_run_checkpoint(saved_run).metadata["step"] == 1  # epochs may change on resume
    _checkpoint(saved_run, cfg, "e" * 32)  # another run's checkpoint, copied in
    with pytest.raises(CheckpointError, match="belongs to another run"):
        load_run_checkpoint(saved_run)
    binarized, _ = plan_run(None, ["model.name=cifar_fc4", "train.epochs=2",
                                   "quant={default: {weight: {bits: 1}}}"])
    _checkpoint(saved_run, binarized, run_id)  # same run id, another model: config mismatch
    with pytest.raises(CheckpointError, match="incompatible with the run.*quant"):
        load_run_checkpoint(saved_run)
    (saved_run / RUN_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no run.json"):
        load_run_checkpoint(saved_run)
    loose = tmp_path / "loose"
    loose.mkdir()
    _checkpoint(loose, binarized, "e" * 32)
    assert load_run_checkpoint(loose / "last.safetensors").metadata["run_id"] == "e" * 32


def test_overwrite_clears_only_run_files(saved_run):
    (saved_run / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="already exists; pass --resume"):
        prepare_run_dir(saved_run)
    prepare_run_dir(saved_run, overwrite=True)
    assert sorted(p.name for p in saved_run.iterdir()) == ["notes.txt", RUN_FILE] and "config.yaml" in RUN_FILES
    (saved_run / "config.yaml").unlink(missing_ok=True)
    with pytest.raises(FileExistsError, match="--overwrite refused"):
        prepare_run_dir(saved_run, overwrite=True)
