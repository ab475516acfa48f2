"""Trainer extensions (issue 13): autocast, warmup, clipping, EMA, distillation, user data.

Each key: changes training as its formula says, resumes bit-exactly, and is rejected in
one line when wrong; all of them at their defaults leave a run exactly as it was.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hbnn.errors import CheckpointError, ConfigError
from hbnn.train.checkpoint import load_checkpoint
from hbnn.train.config import config_to_dict, load_config
from hbnn.train.distill import kd_loss
from hbnn.train.ema import EmaWeights
from hbnn.train.loop import train_one_epoch
from hbnn.train.rebuild import model_from_checkpoint
from hbnn.train.run import fit
from hbnn.train.step import TrainStep, warmup_factor

QUANT = "quant={default: {weight: {bits: 1.4}, act: {bits: 1.4}}}"
#: payload_sha256 of the float run below, recorded before the extensions existed (torch 2.13 CPU, 1 thread).
DEFAULT_FLOAT_SHA = "fdf0cbc1bd532ef86ff61f5dbe72343f7b21d267130b92b9a85a2a1404eb866c"


def _cfg(data_dir, *sets, epochs=2, batches=3):
    return load_config(None, [f"data.data_dir={data_dir}", f"train.epochs={epochs}", "train.batch_size=32",
                              f"train.limit_train_batches={batches}", "model.kwargs={widths: [8, 16, 16]}",
                              "run.tensorboard=false", "sched.interval=step", "sched.name=cosine", *sets])


class _Killed(BaseException):
    """Stands for a kill: nothing after it runs."""


def _fit_killed_at(monkeypatch, cfg, out, k, **kw):
    """Run ``cfg`` and die right after its k-th checkpoint save."""
    import hbnn.train.run as run_module

    real, calls = run_module.save_checkpoint, []

    def save(path, **kwargs):
        real(path, **kwargs)
        calls.append(path)
        if len(calls) == k:
            raise _Killed

    monkeypatch.setattr(run_module, "save_checkpoint", save)
    with pytest.raises(_Killed):
        fit(cfg, out, quiet=True, **kw)
    monkeypatch.setattr(run_module, "save_checkpoint", real)


def _same_files(a_dir, b_dir):
    a, b = load_file(str(a_dir / "last.safetensors")), load_file(str(b_dir / "last.safetensors"))
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ma, mb = (load_checkpoint(d).metadata for d in (a_dir, b_dir))
    assert (ma["step"], ma["payload_sha256"], ma.get("grad_scaler")) == (mb["step"], mb["payload_sha256"],
                                                                         mb.get("grad_scaler"))


# ----------------------------------------------------------------------------- defaults change nothing

def test_defaults_record_nothing_new_and_train_as_before(tmp_path, fmnist_dir):
    cfg = _cfg(fmnist_dir)
    assert "amp" not in config_to_dict(cfg)["train"] and "warmup_epochs" not in config_to_dict(cfg)["sched"]
    fit(cfg, tmp_path / "run", quiet=True)
    meta = json.loads((tmp_path / "run" / "last.json").read_text())
    assert not {"grad_scaler", "teacher_sha256", "user_data"} & set(meta)
    assert not any(k.startswith("ema/") for k in load_file(str(tmp_path / "run" / "last.safetensors")))
    if torch.__version__.startswith("2.13"):
        assert meta["payload_sha256"] == DEFAULT_FLOAT_SHA


# ----------------------------------------------------------------------------- each key's formula

def _linear_batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=g) * 50, torch.randint(0, 2, (8,), generator=g)) for _ in range(n)]


def test_warmup_lr_at_each_step():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    step = TrainStep(warmup_steps=4, warmup_start=0.2)
    train_one_epoch(model, _linear_batches(6), opt, device="cpu", train_step=step)
    want = [0.1 * min(1.0, 0.2 + 0.8 * (k + 1) / 4) for k in range(6)]
    assert seen == pytest.approx(want, abs=0, rel=1e-15) and opt.param_groups[0]["lr"] == 0.1
    assert [warmup_factor(k, 2.5) for k in range(3)] == [0.4, 0.8, 1.0]


def test_grad_clip_bounds_the_gradient_norm():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    norms = []
    opt.register_step_pre_hook(lambda o, a, k: norms.append(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()))
    train_one_epoch(model, _linear_batches(3), opt, device="cpu", train_step=TrainStep(grad_clip=0.5))
    assert all(n <= 0.5 + 1e-6 for n in norms)
    free = []
    opt2 = torch.optim.SGD(model.parameters(), lr=0.0)
    opt2.register_step_pre_hook(lambda o, a, k: free.append(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()))
    train_one_epoch(model, _linear_batches(3), opt2, device="cpu")
    assert max(free) > 0.5  # without clipping these batches' gradients are larger


def test_ema_equals_the_formula_after_two_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    ema = EmaWeights(model, 0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = [{k: v.clone() for k, v in model.state_dict().items()}]
    step = TrainStep(ema=ema)
    for images, labels in _linear_batches(2):
        train_one_epoch(model, [(images, labels)], opt, device="cpu", train_step=step)
        w.append({k: v.clone() for k, v in model.state_dict().items()})
    for key, shadow in ema.state_dict().items():
        if shadow.is_floating_point():
            want = (w[0][key] * 0.9 + w[1][key] * 0.1) * 0.9 + w[2][key] * 0.1
            torch.testing.assert_close(shadow, want)
            if not torch.equal(w[0][key], w[2][key]):  # (a bias before BatchNorm gets no gradient)
                assert not torch.equal(shadow, w[2][key]), key
        else:
            assert torch.equal(shadow, w[2][key])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied():
        assert torch.equal(model[0].weight, ema.shadow["0.weight"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_kd_loss_equals_the_formula():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0])
    a, temp = 0.3, 2.0
    p = torch.softmax(t / temp, 1)
    kl = (p * (p.log() - torch.log_softmax(s / temp, 1))).sum(1).mean()
    want = (1 - a) * F.cross_entropy(s, y) + a * temp ** 2 * kl
    torch.testing.assert_close(kd_loss(s, t, y, alpha=a, temperature=temp), want)
    assert kd_loss(s, s, y, alpha=1.0, temperature=3.0).abs().item() < 1e-6  # KL(p || p) = 0


def test_bf16_autocast_runs_binarized_with_finite_loss(tmp_path, fmnist_dir):
    out = fit(_cfg(fmnist_dir, QUANT, "train.amp=bf16", epochs=1, batches=2), tmp_path / "run", quiet=True)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert math.isfinite(out["loss"]) and "train_loss" in rows[0]
    assert math.isfinite(float(rows[1].split(",")[rows[0].split(",").index("train_loss")]))


# ----------------------------------------------------------------------------- teacher + resume

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, fmnist_dir):
    out = tmp_path_factory.mktemp("teacher") / "run"
    torch.set_num_threads(1)
    fit(_cfg(fmnist_dir, epochs=1, batches=2), out, quiet=True)
    return out


def test_teacher_loss_in_training_is_the_kd_loss(teacher_run):
    teacher, _ = model_from_checkpoint(teacher_run)
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    images, labels = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    step = TrainStep(teacher=teacher, kd_alpha=0.7, kd_temperature=3.0)
    with torch.no_grad():
        want = kd_loss(student(images), teacher(images), labels, alpha=0.7, temperature=3.0)
    loss, _ = step(student, torch.optim.SGD(student.parameters(), lr=0.0), images, labels, 0)
    torch.testing.assert_close(loss.detach(), want)


ALL_KEYS = ("sched.warmup_epochs=1.5", "sched.warmup_start_factor=0.1", "train.grad_clip=1.0", "train.ema=0.8",
            "train.amp=bf16", "train.checkpoint_every_steps=2")


@pytest.mark.parametrize("sets", [ALL_KEYS, ("train.amp=fp16", "train.checkpoint_every_steps=2")],
                         ids=["warmup-clip-ema-bf16-kd", "fp16-gradscaler"])
def test_extensions_resume_bit_exactly(tmp_path, fmnist_dir, teacher_run, monkeypatch, sets):
    sets = (*sets, f"train.teacher={teacher_run}", "train.kd_alpha=0.6") if "train.ema=0.8" in sets else sets
    cfg = _cfg(fmnist_dir, QUANT, *sets)
    fit(cfg, tmp_path / "full", quiet=True)
    _fit_killed_at(monkeypatch, cfg, tmp_path / "killed", 2)  # steps 2 (mid-epoch 1)
    assert load_checkpoint(tmp_path / "killed").metadata["batch_in_epoch"] == 2
    fit(cfg, tmp_path / "killed", resume=True, quiet=True)
    _same_files(tmp_path / "full", tmp_path / "killed")
    meta = load_checkpoint(tmp_path / "full").metadata
    assert ("grad_scaler" in meta) == ("train.amp=fp16" in sets)
    if "train.ema=0.8" in sets:
        ckpt = load_checkpoint(tmp_path / "full")
        assert ckpt.ema_state is not None and len(meta["teacher_sha256"]) == 64
        model, _ = model_from_checkpoint(tmp_path / "full", "last")  # inference gets the EMA weights
        assert all(torch.equal(v, ckpt.ema_state[k]) for k, v in model.state_dict().items())


def test_resume_refuses_a_changed_teacher(tmp_path, fmnist_dir, teacher_run, monkeypatch):
    cfg = _cfg(fmnist_dir, f"train.teacher={teacher_run}", "train.checkpoint_every_steps=2")
    _fit_killed_at(monkeypatch, cfg, tmp_path / "run", 1)
    meta = load_checkpoint(tmp_path / "run").metadata
    import hbnn.train.distill as distill

    real = distill.load_teacher
    monkeypatch.setattr(distill, "load_teacher", lambda p, s: (real(p, s)[0], "0" * 64))
    with pytest.raises(CheckpointError, match="another train.teacher"):
        fit(cfg, tmp_path / "run", resume=True, quiet=True)
    assert meta["teacher_sha256"] != "0" * 64


# ----------------------------------------------------------------------------- user data

class _Images(torch.utils.data.Dataset):
    num_classes = 3

    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _user_cfg(*sets):
    return load_config(None, ["train.epochs=2", "train.batch_size=8", "model.name=cifar_fc4",
                              "model.kwargs={widths: [8, 16, 16]}", "run.tensorboard=false",
                              "train.checkpoint_every_steps=3", *sets])


def test_fit_on_a_user_dataset_resumes_exactly(tmp_path, monkeypatch):
    cfg, data = _user_cfg(), _Images()
    out = fit(cfg, tmp_path / "full", quiet=True, train_data=data, test_data=data)
    assert out["epoch"] == 2 and out["step"] == 10
    meta = load_checkpoint(tmp_path / "full").metadata
    assert meta["user_data"] is True and meta["model"]["num_classes"] == 3 and meta["model"]["image_size"] == 8
    _fit_killed_at(monkeypatch, cfg, tmp_path / "killed", 1, train_data=data, test_data=data)
    fit(cfg, tmp_path / "killed", resume=True, quiet=True, train_data=data, test_data=data)
    _same_files(tmp_path / "full", tmp_path / "killed")
    model, _ = model_from_checkpoint(tmp_path / "full")  # later commands rebuild it from the recorded shape
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 3)


def test_user_dataloader_trains_and_refuses_mid_epoch_resume(tmp_path, monkeypatch):
    cfg, data = _user_cfg(), _Images()
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    _fit_killed_at(monkeypatch, cfg, tmp_path / "run", 1, train_data=loader, test_data=loader)
    with pytest.raises(CheckpointError, match="user DataLoader cannot continue"):
        fit(cfg, tmp_path / "run", resume=True, quiet=True, train_data=loader, test_data=loader)
    with pytest.raises(ConfigError, match="together"):
        fit(cfg, tmp_path / "other", quiet=True, train_data=data)


# ----------------------------------------------------------------------------- bad input: one line

@pytest.mark.parametrize("item, match", [
    ("train.amp=fp32", "train.amp"), ("train.ema=1.0", "train.ema"), ("train.grad_clip=-1", "train.grad_clip"),
    ("sched.warmup_epochs=-1", "sched.warmup_epochs"), ("train.kd_alpha=0.9", "unless train.teacher"),
    ("sched.warmup_start_factor=1", "warmup_start_factor"),
])
def test_bad_keys_are_one_line(item, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(None, [item])
    assert "\n" not in str(err.value)


def test_bad_teachers_and_fp16_on_cpu(tmp_path, fmnist_dir, teacher_run, monkeypatch):
    cases = [(str(tmp_path / "nope"), "not found")]
    binarized = tmp_path / "bin"
    fit(_cfg(fmnist_dir, QUANT, epochs=1, batches=1), binarized, quiet=True)
    cases.append((str(binarized), "binarized"))
    for teacher, match in cases:
        with pytest.raises(ConfigError, match=match) as err:
            fit(_cfg(fmnist_dir, f"train.teacher={teacher}"), tmp_path / "s", quiet=True)
        assert "\n" not in str(err.value) and not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match="num_classes 10; this run has 3"):
        fit(_user_cfg(f"train.teacher={teacher_run}"), tmp_path / "u", quiet=True, train_data=_Images(),
            test_data=_Images())
    import hbnn.train.step as step_module

    monkeypatch.setattr(step_module, "_cpu_fp16_supported", lambda: False)
    with pytest.raises(ConfigError, match="^train.amp=fp16 needs a CUDA device; use bf16 on CPU$"):
        fit(_cfg(fmnist_dir, "train.amp=fp16", "train.device=cpu"), tmp_path / "f", quiet=True)
