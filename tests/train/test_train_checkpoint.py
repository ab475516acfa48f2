"""Checkpoints: exact round trip, RNG states, verification, atomic writes."""

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
from hbnn.train.config import OptimConfig, SchedConfig
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


def _save(path, model, opt=None, sched=None, step=3):
    return save_checkpoint(path, model_state=model.state_dict(), optimizer=opt, scheduler=sched,
                           metadata={"step": step, "epoch": 1, "rng": capture_rng_state()})


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
    meta = {"format": "hbnn-checkpoint", "schema_version": SCHEMA_VERSION + 1}
    meta["payload_sha256"] = tensors_sha256({"w": torch.zeros(2)})
    save_file({"w": torch.zeros(2)}, str(tmp_path / "new.safetensors"), metadata={"hbnn": json.dumps(seal_header(meta))})
    with pytest.raises(CheckpointError, match="schema version 2"):
        load_checkpoint(tmp_path / "new")


def test_sidecar_checksum_mismatch_is_refused(tmp_path):
    model, _, _ = _setup()
    _save(tmp_path / "last", model)
    side = json.loads((tmp_path / "last.json").read_text())
    side["sha256"] = "0" * 64
    (tmp_path / "last.json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "last")


def test_stale_sidecar_from_an_interrupted_save_is_ignored(tmp_path):
    model, opt, sched = _setup()
    _save(tmp_path / "last", model, opt, sched, step=3)
    old_json = (tmp_path / "last.json").read_text()
    _save(tmp_path / "last", model, opt, sched, step=6)
    (tmp_path / "last.json").write_text(old_json)  # died between the two renames
    assert load_checkpoint(tmp_path / "last").metadata["step"] == 6


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
