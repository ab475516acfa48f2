"""Checkpoints: exact round trip, RNG states, verification of every field and of both halves, atomic writes."""

from __future__ import annotations

import json
import random
import struct

import numpy as np
import pytest
import torch

import hbnn.io
from hbnn.errors import CheckpointError
from hbnn.io import seal_header, tensors_sha256
from hbnn.train.checkpoint import (
    SCHEMA_VERSION,
    capture_rng_state,
    checkpoint_paths,
    load_checkpoint,
    restore_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from hbnn.train.config import Config, OptimConfig, SchedConfig, config_to_dict
from hbnn.train.loop import build_optimizer, build_scheduler


def _setup(optim="sgd"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    opt = build_optimizer(model.parameters(), OptimConfig(name=optim))
    sched = build_scheduler(opt, SchedConfig(step_size=1), epochs=3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    sched.step()
    return model, opt, sched


RUN = "ab" * 16
OTHER_RUN = "cd" * 16
RNG = capture_rng_state()
CONFIG = config_to_dict(Config())
MODEL = {"name": "cifar_fc4", "config": CONFIG["model"], "quant": None, "num_classes": 10, "in_channels": 1,
         "image_size": 28}
METRICS = {"epoch": 1, "loss": 2.3, "top1": 0.25, "top5": 0.5, "count": 64}


def _save(path, net, opt=None, sched=None, step=3, run_id=RUN, **extra):
    meta = {"run_id": run_id, "step": step, "epoch": 1, "batch_in_epoch": 0, "rng": capture_rng_state(), **extra}
    return save_checkpoint(path, model_state=net.state_dict(), optimizer=opt, scheduler=sched, metadata=meta)


def _reseal(path, edit=None, **changes):
    """Rewrite the header of a checkpoint with ``changes`` (or ``edit(meta)``) and a valid seal (a deliberate edit)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    raw = json.loads(data[8:8 + n])
    meta = json.loads(raw["__metadata__"]["hbnn"])
    meta.update(changes)
    if edit is not None:
        edit(meta)
    raw["__metadata__"]["hbnn"] = json.dumps(seal_header(meta))
    text = json.dumps(raw).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_round_trip_is_exact(tmp_path, optim):
    model, opt, sched = _setup(optim)
    meta = _save(tmp_path / "last", model, opt, sched)
    assert meta["schema_version"] == SCHEMA_VERSION and len(meta["sha256"]) == 64
    side = json.loads((tmp_path / "last.json").read_text())
    assert side["sha256"] == meta["sha256"] and side["step"] == 3

    model2, opt2, sched2 = _setup(optim)
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)
    ckpt = load_checkpoint(tmp_path)  # run dir -> last
    restore_checkpoint(ckpt, model2, opt2, sched2)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert json.dumps(s1["param_groups"], sort_keys=True) == json.dumps(s2["param_groups"], sort_keys=True)
    for pid, st in s1["state"].items():
        for key, value in st.items():
            other = s2["state"][pid][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert sched.state_dict() == sched2.state_dict()


def test_rng_states_round_trip():
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    json.dumps(state)  # JSON-safe
    restore_rng_state(json.loads(json.dumps(state)))
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    with pytest.raises(CheckpointError, match="RNG"):
        restore_rng_state({"python": 3})


def test_paths_accept_run_dir_stem_and_either_file(tmp_path):
    pair = (tmp_path / "best.safetensors", tmp_path / "best.json")
    assert checkpoint_paths(tmp_path, "best") == pair
    assert checkpoint_paths(tmp_path / "best") == pair
    assert checkpoint_paths(tmp_path / "best.json") == pair
    assert checkpoint_paths(tmp_path / "best.safetensors") == pair


def _corrupt_payload(path):
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n + 5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, pattern", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:5]), "truncated"),
    (_corrupt_payload, "checksum"),
    (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      "), "corrupt"),
    (lambda p: p.unlink(), "not found"),
])
def test_damaged_checkpoint_is_refused(tmp_path, damage, pattern):
    model, opt, sched = _setup()
    _save(tmp_path / "last", model, opt, sched)
    damage(tmp_path / "last.safetensors")
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(tmp_path / "last")
    assert "\n" not in str(info.value)


def test_foreign_and_newer_schema_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not an hbnn checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")
    meta = {"format": "hbnn-checkpoint", "schema_version": SCHEMA_VERSION + 1, "run_id": RUN, "step": 0,
            "epoch": 0, "batch_in_epoch": 0}
    meta["payload_sha256"] = tensors_sha256({"w": torch.zeros(2)})
    save_file({"w": torch.zeros(2)}, str(tmp_path / "new.safetensors"), metadata={"hbnn": json.dumps(seal_header(meta))})
    with pytest.raises(CheckpointError, match=f"schema version {SCHEMA_VERSION + 1}"):
        load_checkpoint(tmp_path / "new")


def test_sidecar_checksum_mismatch_is_refused(tmp_path):
    model, _, _ = _setup()
    _save(tmp_path / "last", model)
    side = json.loads((tmp_path / "last.json").read_text())
    side["sha256"] = "0" * 64
    (tmp_path / "last.json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="header digest mismatch"):
        load_checkpoint(tmp_path / "last")
    (tmp_path / "last.json").write_text(json.dumps(seal_header(side)))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "last")


def test_stale_sidecar_from_an_interrupted_save_is_ignored(tmp_path):
    model, opt, sched = _setup()
    _save(tmp_path / "last", model, opt, sched, step=3)
    old_json = (tmp_path / "last.json").read_text()
    _save(tmp_path / "last", model, opt, sched, step=6)
    (tmp_path / "last.json").write_text(old_json)  # died between the two renames
    assert load_checkpoint(tmp_path / "last").metadata["step"] == 6
    (tmp_path / "last.json").unlink()  # died between the two renames of the first save
    assert load_checkpoint(tmp_path / "last", run_id=RUN).metadata["step"] == 6


def test_halves_that_do_not_belong_together_are_refused(tmp_path):
    model, opt, sched = _setup()
    _save(tmp_path / "other" / "last", model, opt, sched, step=3, run_id=OTHER_RUN)
    _save(tmp_path / "later" / "last", model, opt, sched, step=9)
    _save(tmp_path / "last", model, opt, sched, step=6)
    for source, words in (("other", "from run " + OTHER_RUN), ("later", "describes step 9")):
        (tmp_path / "last.json").write_bytes((tmp_path / source / "last.json").read_bytes())
        with pytest.raises(CheckpointError, match=words) as info:
            load_checkpoint(tmp_path / "last")
        assert "do not belong together" in str(info.value) and "last" in str(info.value)


def _edit_json(path, resealed=True, **changes):
    side = json.loads(path.read_text())
    side.update(changes)
    path.write_text(json.dumps(seal_header(side) if resealed else side))


@pytest.mark.parametrize("edit, words", [
    (lambda p: _edit_json(p, resealed=False, epoch=0), "header digest mismatch"),
    (lambda p: _edit_json(p, run_id=OTHER_RUN), "from run " + OTHER_RUN),
    (lambda p: _edit_json(p, step=30), "describes step 30"),
    (lambda p: _edit_json(p, best_metric=0.5, best_epoch=1), "does not match"),
    (lambda p: _edit_json(p, sha256="0" * 64), "sha256"),
    (lambda p: _edit_json(p, file="best.safetensors"), "describes best.safetensors"),
    (lambda p: _edit_json(p, schema_version=True), "schema version True"),
    (lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                        if k != "header_sha256"})), "not sealed"),
    (lambda p: p.write_text("[1, 2]"), "not sealed"),
    (lambda p: p.write_text("{"), "unreadable or corrupt"),
])
def test_edited_json_half_is_refused(tmp_path, edit, words):
    model, opt, sched = _setup()
    _save(tmp_path / "last", model, opt, sched, step=6)
    edit(tmp_path / "last.json")
    with pytest.raises(CheckpointError, match=words) as info:
        load_checkpoint(tmp_path)
    assert "last.json" in str(info.value) or "last.safetensors" in str(info.value)
    assert "\n" not in str(info.value)


def test_json_half_without_its_tensor_file_is_refused(tmp_path):
    model, _, _ = _setup()
    _save(tmp_path / "last", model)
    (tmp_path / "last.safetensors").unlink()
    with pytest.raises(CheckpointError, match="last.json exists without it"):
        load_checkpoint(tmp_path)


def test_another_runs_checkpoint_is_refused(tmp_path):
    model, _, _ = _setup()
    _save(tmp_path / "last", model, run_id=OTHER_RUN)
    assert load_checkpoint(tmp_path, run_id=OTHER_RUN).metadata["run_id"] == OTHER_RUN
    with pytest.raises(CheckpointError, match="belongs to another run") as info:
        load_checkpoint(tmp_path, run_id=RUN)
    assert str(tmp_path / "last.safetensors") in str(info.value)


@pytest.mark.parametrize("changes, words", [
    ({"schema_version": True}, "schema version True"),
    ({"schema_version": 1}, "schema version 1"),
    ({"run_id": "x"}, "run_id"),
    ({"step": True}, "step is True"),
    ({"step": -1}, "step is -1"),
    ({"step": 2.0}, "step is 2.0"),
    ({"epoch": "1"}, "epoch is '1'"),
    ({"epoch": 5}, "inconsistent"),
    ({"batch_in_epoch": 7}, "inconsistent"),
    ({"steps_per_epoch": 0}, "steps_per_epoch is 0"),
    ({"batch_in_epoch": 2, "steps_per_epoch": 2}, "batch_in_epoch is 2"),
    ({"wall_time_s": float("nan")}, "wall_time_s is nan"),
    ({"wall_time_s": float("inf")}, "wall_time_s is inf"),
    ({"best_metric": float("nan"), "best_epoch": 1}, "best_metric is nan"),
    ({"best_metric": 0.5, "best_epoch": 2}, "best_epoch is 2"),
    ({"best_metric": 0.5}, "both null or both set"),
    ({"world_size": 2}, "one entry per process"),
    ({"ranks": [{"rng": RNG, "epoch_sums": {"loss_sum": 1.0, "correct": -1, "count": 3}}]}, "correct is -1"),
    ({"ranks": [{"rng": RNG, "epoch_sums": {"loss_sum": 1.0, "correct": 4, "count": 3}}]}, "correct is 4"),
    ({"metrics": {"top1": "high"}}, "metrics.top1"),
    ({"optimizer": {"state": [], "param_groups": []}}, "optimizer.state"),
    ({"model": {**MODEL, "num_classes": 0}, "config": CONFIG}, "model.num_classes is 0"),
    ({"model": MODEL}, "config and model must be both present"),
    ({"optimizer": {"state": {}, "param_groups": [], "zz": 1}}, "metadata field optimizer is"),
    ({"wall_time_s": 2 ** 63}, r"wall_time_s is 9223372036854775808; expected an integer within \+-2\*\*53"),
    ({"model": {"name": "a", "config": {"name": "a"}}, "config": {"model": {"name": "b"}}}, "config.model.activation is missing"),
])
def test_every_metadata_field_is_checked_and_names_the_file(tmp_path, changes, words):
    model, opt, sched = _setup()
    _save(tmp_path / "last", model, opt, sched, step=3, ranks=[{"rng": RNG, "epoch_sums": None}], world_size=1)
    (tmp_path / "last.json").unlink()
    _reseal(tmp_path / "last.safetensors", **changes)
    with pytest.raises(CheckpointError, match=words) as info:
        load_checkpoint(tmp_path)
    assert str(tmp_path / "last.safetensors") in str(info.value) and "\n" not in str(info.value)


def test_edited_position_without_a_new_seal_is_refused(tmp_path):
    model, _, _ = _setup()
    _save(tmp_path / "last", model, step=3)
    data = (tmp_path / "last.safetensors").read_bytes()
    (tmp_path / "last.safetensors").write_bytes(data.replace(b'\\"step\\": 3', b'\\"step\\": 4'))
    assert (tmp_path / "last.safetensors").read_bytes() != data
    with pytest.raises(CheckpointError, match="header digest mismatch"):
        load_checkpoint(tmp_path)


def test_diverged_losses_stay_loadable(tmp_path):
    model, _, _ = _setup()
    _save(tmp_path / "last", model, metrics={"epoch": 1, "loss": float("nan"), "top1": 0.1, "top5": 0.5, "count": 10},
          ranks=[{"rng": RNG, "epoch_sums": {"loss_sum": float("inf"), "correct": 1, "count": 2}}])
    assert load_checkpoint(tmp_path).metadata["ranks"][0]["epoch_sums"]["loss_sum"] == float("inf")


def test_invalid_metadata_is_never_written(tmp_path):
    model, _, _ = _setup()
    with pytest.raises(CheckpointError, match="step is -2"):
        _save(tmp_path / "last", model, step=-2)
    assert list(tmp_path.iterdir()) == []


def test_a_packed_file_is_not_taken_for_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "x.hbnn")
    assert "x.hbnn.safetensors" not in str(info.value) and "expected a run directory" in str(info.value)
    (tmp_path / "x.hbnn").write_bytes(b"packed")
    with pytest.raises(CheckpointError, match="is not a checkpoint.*hbnn infer"):
        load_checkpoint(tmp_path / "x.hbnn")


def test_incompatible_model_is_refused(tmp_path):
    model, opt, sched = _setup()
    _save(tmp_path / "last", model, opt, sched)
    ckpt = load_checkpoint(tmp_path / "last")
    other = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.BatchNorm1d(9), torch.nn.Linear(9, 3))
    with pytest.raises(CheckpointError, match="shape"):
        restore_checkpoint(ckpt, other)
    fewer = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(CheckpointError, match="incompatible"):
        restore_checkpoint(ckpt, fewer)
    bare = load_checkpoint(tmp_path / "last")
    bare.optimizer_state = None
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore_checkpoint(bare, model, opt)


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, opt, sched = _setup()
    _save(tmp_path / "last", model, opt, sched, step=3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hbnn.io.os, "fsync", full_disk)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="No space"):
        _save(tmp_path / "last", model, opt, sched, step=6)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left either
    assert load_checkpoint(tmp_path / "last").metadata["step"] == 3


# ----------------------------------------------------------------------------- resealed edits of every field class

def _full(tmp_path, optim="sgd"):
    """A checkpoint with every field a training run writes; its JSON half removed (the edits reseal one half)."""
    model, opt, sched = _setup(optim)
    _save(tmp_path / "last", model, opt, sched, step=3, config=CONFIG, model=MODEL, metrics=METRICS,
          ranks=[{"rng": capture_rng_state(), "epoch_sums": None}], world_size=1, steps_per_epoch=3)
    (tmp_path / "last.json").unlink()
    return model, opt, sched


def _at(path, value=None, delete=False):
    """An edit of ``meta`` at a key path (``value``, or deleting the key)."""
    def edit(meta):
        node = meta
        for part in path[:-1]:
            node = node[part]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


@pytest.mark.parametrize("path, value, words", [
    (("config", "train", "eval_every"), -1, "config.train.eval_every: invalid value -1"),
    (("config", "train", "label_smoothing"), 1e30, "config.train.label_smoothing"),
    (("config", "train", "device"), None, "config.train.device is missing"),
    (("config", "train", "device"), {"a": 1}, "config.train.device"),
    (("config", "optim", "betas", 1), "x", r"config.optim.betas\[1\]"),
    (("config", "train", "zz"), 1, "unknown key config.train.zz"),
    (("config", "model"), [1], "config.model"),
    (("config", "train", "epochs"), 90.0, "config.train.epochs is 90.0; expected 90"),
    (("config", "data", "name"), "nope", "config.data.name"),
    (("config", "run", "tensorboard"), 1, "config.run.tensorboard"),
    (("config", "dist", "timeout_s"), float("inf"), "config.dist.timeout_s"),
    (("config", "sched", "gamma"), -0.5, "config.sched.gamma"),
    (("config", "train", "batch_size"), 2 ** 63, "config.train.batch_size is 9223372036854775808"),
    (("config", "data", "num_workers"), -(2 ** 63), "config.data.num_workers is -9223372036854775808"),
    (("model", "image_size"), 14, "model.image_size disagrees"),
    (("model", "num_classes"), 0, "model.num_classes is 0"),
    (("model", "in_channels"), 3, "model.in_channels disagrees"),
    (("model", "config"), "x", "model.config disagrees"),
    (("model", "zz"), 1, "metadata field model is .*'zz'"),
    (("model", "quant"), None, "model.quant is missing"),
    (("metrics", "top1"), 1.5, "metrics.top1 is 1.5"),
    (("metrics", "top1"), 0.75, "metrics.top1 is 0.75; expected at most top5"),
    (("metrics", "count"), None, "metrics.count is None"),
    (("metrics", "count"), 0, "NaN exactly when count is 0"),
    (("metrics", "epoch"), None, "metrics.epoch is None"),
    (("metrics", "epoch"), 5, r"metrics.epoch is 5; expected an integer in \[1, 1\]"),
    (("metrics", "zz"), 1, "metrics is"),
    (("best_metric",), 1e308, "best_metric is 1e\\+308"),
    (("ranks", 0, "rng", "python", 2), float("nan"), r"ranks\[0\].rng.python\[2\] is nan"),
    (("ranks", 0, "rng", "python", 0), 4, r"python\[0\] is 4"),
    (("ranks", 0, "rng", "python", 1, 3), -1, r"python\[1\]\[3\] is -1"),
    (("ranks", 0, "rng", "python", 1, 624), 625, r"python\[1\]\[624\] is 625"),
    (("ranks", 0, "rng", "numpy", 1, 5), 2 ** 32, r"numpy\[1\]\[5\] is 4294967296"),
    (("ranks", 0, "rng", "numpy", 3), True, r"numpy\[3\] is True"),
    (("ranks", 0, "rng", "numpy", 4), None, r"numpy\[4\] is None"),
    (("ranks", 0, "rng", "torch"), {}, "rng.torch is {}"),
    (("ranks", 0, "rng", "torch"), "AAAA", "rng.torch is 'AAAA'"),
    (("ranks", 0, "rng", "torch"), None, r"ranks\[0\].rng is"),
    (("ranks", 0, "rng", "cuda"), ["!"], r"rng.cuda\[0\]"),
    (("ranks", 0, "zz"), 1, r"ranks\[0\] is"),
])
def test_resealed_field_edits_are_refused_naming_file_and_field(tmp_path, path, value, words):
    _full(tmp_path)
    assert load_checkpoint(tmp_path).metadata["metrics"] == METRICS  # the unedited file loads
    delete = value is None and words.endswith(("missing", "rng is"))
    _reseal(tmp_path / "last.safetensors", _at(path, value, delete=delete))
    with pytest.raises(CheckpointError, match=words) as info:
        load_checkpoint(tmp_path)
    assert str(tmp_path / "last.safetensors") in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("optim", ["sgd", "adam"])
@pytest.mark.parametrize("path, value, words", [
    (("optimizer", "param_groups", 0, "initial_lr"), {}, r"param_groups\[0\].initial_lr is {}"),
    (("optimizer", "param_groups", 0, "lr"), float("nan"), r"param_groups\[0\].lr is nan"),
    (("optimizer", "param_groups", 0, "lr"), 1, r"param_groups\[0\].lr is 1; expected a float"),
    (("optimizer", "param_groups", 0, "weight_decay"), -1.0, "weight_decay is -1.0"),
    (("optimizer", "param_groups", 0, "weight_decay"), 1e308, "weight_decay is 1e\\+308; expected this optimizer's"),
    (("optimizer", "param_groups", 0, "initial_lr"), 0.5, "initial_lr is 0.5; expected this optimizer's 0.01"),
    (("optimizer", "param_groups", 0, "params", 3), [1], r"param_groups\[0\].params is"),
    (("optimizer", "param_groups", 0, "params", 0), 9, r"param_groups\[0\].params is"),
    (("optimizer", "param_groups", 0, "foreach"), [], "foreach is"),
    (("optimizer", "param_groups", 0, "maximize"), 0, "maximize is 0"),
    (("optimizer", "param_groups", 0, "zz"), 1, r"param_groups\[0\] is"),
    (("optimizer", "param_groups"), [], "optimizer.param_groups is"),
    (("optimizer", "state", "0", "zz"), 1, "optimizer.state.0.zz"),
    (("scheduler", "last_epoch"), float("inf"), "scheduler.last_epoch is inf"),
    (("scheduler", "last_epoch"), 2, "scheduler._step_count is 2"),
    (("scheduler", "_step_count"), 9, "scheduler._step_count is 9"),
    (("scheduler", "gamma"), -0.1, "scheduler.gamma is -0.1"),
    (("scheduler", "step_size"), 0, "scheduler.step_size is 0"),
    (("scheduler", "_last_lr"), "x", "scheduler._last_lr is 'x'"),
    (("scheduler", "_last_lr"), [1e308], r"scheduler._last_lr is \[1e\+308\]; expected the optimizer's"),
    (("scheduler", "base_lrs"), [0.02], r"scheduler.base_lrs is \[0.02\]"),
    (("scheduler", "zz"), 1, "scheduler is"),
])
def test_resealed_optimizer_and_scheduler_edits_are_refused_at_restore(tmp_path, optim, path, value, words):
    if optim == "adam" and "momentum" in str(path):
        pytest.skip("sgd only")
    _full(tmp_path, optim)
    _reseal(tmp_path / "last.safetensors", _at(path, value))
    model, opt, sched = _setup(optim)
    with pytest.raises(CheckpointError, match=words) as info:
        restore_checkpoint(load_checkpoint(tmp_path), model, opt, sched)
    assert str(tmp_path / "last.safetensors") in str(info.value) and "\n" not in str(info.value)


def test_restore_checks_state_entries_against_the_live_optimizer(tmp_path):
    _full(tmp_path, "adam")
    model, opt, sched = _setup("adam")
    ckpt = load_checkpoint(tmp_path)
    restore_checkpoint(ckpt, model, opt, sched)  # the unedited state restores
    for entry, words in ((lambda s: s.__setitem__(7, {}), "optimizer.state is 7"),
                         (lambda s: s[0].__setitem__("exp_avg", torch.zeros(2)), "optimizer.state.0.exp_avg"),
                         (lambda s: s[0].__setitem__("momentum_buffer", s[0]["exp_avg"]), "only the keys"),
                         (lambda s: s[1].__setitem__("step", float("nan")), "optimizer.state.1.step is nan")):
        bad = load_checkpoint(tmp_path)
        entry(bad.optimizer_state["state"])
        with pytest.raises(CheckpointError, match=words):
            restore_checkpoint(bad, *_setup("adam"))


def test_schedule_position_must_match_the_checkpoint(tmp_path):
    _full(tmp_path)
    ckpt = load_checkpoint(tmp_path)
    ckpt.metadata["epoch"] = 2  # interval epoch: last_epoch must be the epoch
    with pytest.raises(CheckpointError, match="last_epoch is 1; expected the checkpoint's epoch"):
        restore_checkpoint(ckpt, *_setup())


def test_optimizer_state_without_its_json_entry_is_refused(tmp_path):
    _full(tmp_path)
    _reseal(tmp_path / "last.safetensors", _at(("optimizer", "state", "3"), delete=True))
    with pytest.raises(CheckpointError, match="tensor is 'optim/3/momentum_buffer'"):
        load_checkpoint(tmp_path)
    _reseal(tmp_path / "last.safetensors", _at(("optimizer", "state", "x"), {}))
    with pytest.raises(CheckpointError, match="metadata field optimizer.state is 'x'"):
        load_checkpoint(tmp_path)
