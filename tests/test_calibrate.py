"""``hbnn.calibrate``: activation estimates from data, nothing else touched; the summary's target/realized bits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import hbnn
from hbnn.calibration import CalibrationReport, format_calibration
from hbnn.errors import ConfigError, FormatError
from hbnn.quant import ActQuantizer
from hbnn.summary import format_summary, summarize

ACT_BUFFERS = ("running_mean_abs", "running_thresholds", "running_scales", "running_bits", "num_batches_tracked")


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardtanh(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardtanh(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardtanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    hbnn.quantize_(net, {"default": {"weight": 1.4, "act": 1.4}})
    return net


def _trained_net() -> nn.Sequential:
    """A net whose BN statistics and act estimates have moved (two training-mode batches)."""
    net = _net()
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 1, 8, 8))
    return net


def _batches(n: int = 3, size: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 1, 8, 8, generator=gen) * (1 + k), torch.zeros(size, dtype=torch.long))
            for k in range(n)]


def _quantizers(net: nn.Module) -> dict[str, ActQuantizer]:
    return {n: m for n, m in net.named_modules() if isinstance(m, ActQuantizer)}


def _other_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and every buffer outside the activation quantizers."""
    own = {id(t) for q in _quantizers(net).values() for t in q.buffers()}
    state = {f"param:{n}": p.detach().clone() for n, p in net.named_parameters()}
    state.update({f"buffer:{n}": b.clone() for n, b in net.named_buffers() if id(b) not in own})
    return state


def test_touches_only_activation_estimates():
    net = _trained_net()
    before = _other_state(net)
    assert any("running_var" in k for k in before) and any("weight_quantizer.realized" in k for k in before)
    acts_before = {n: {b: getattr(q, b).clone() for b in ACT_BUFFERS} for n, q in _quantizers(net).items()}
    report = hbnn.calibrate(net, _batches())
    after = _other_state(net)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key  # bit-identical
    for name, q in _quantizers(net).items():
        assert not torch.equal(acts_before[name]["running_scales"], q.running_scales), name
        assert int(q.num_batches_tracked) == int(acts_before[name]["num_batches_tracked"]) + 3
    assert isinstance(report, CalibrationReport)
    assert (report.batches, report.samples, report.calibrated, report.missed) == (3, 18, 2, [])


def test_estimates_are_the_average_of_per_batch_values():
    net = _trained_net()
    batches = _batches()
    hbnn.calibrate(net, batches)
    # Independent formula for the first binarized layer ("3"): its input is the float
    # stem in eval mode; a fresh quantizer's first training batch sets its estimates to
    # that batch's values; calibration averages them over the batches.
    stem = copy.deepcopy(net[:3]).eval()
    spec = net[3].act_quantizer.spec
    per_batch = []
    for x, _ in batches:
        fresh = ActQuantizer(spec).train()
        with torch.no_grad():
            fresh(stem(x))
        per_batch.append({b: getattr(fresh, b).double() for b in ACT_BUFFERS[:4]})
    q = net[3].act_quantizer
    for b in ACT_BUFFERS[:4]:
        expected = sum(v[b] for v in per_batch) / len(per_batch)
        torch.testing.assert_close(getattr(q, b).double(), expected, rtol=1e-6, atol=1e-7)


def test_each_layer_average_equals_single_batch_calibrations():
    net = _trained_net()
    batches = _batches()
    singles = []
    for batch in batches:
        one = copy.deepcopy(net)
        hbnn.calibrate(one, [batch])
        singles.append(_quantizers(one))
    hbnn.calibrate(net, batches)
    for name, q in _quantizers(net).items():
        for b in ACT_BUFFERS[:4]:
            expected = sum(getattr(s[name], b).double() for s in singles) / len(singles)
            torch.testing.assert_close(getattr(q, b).double(), expected, rtol=1e-6, atol=1e-7)


def test_modes_restored_and_no_autograd():
    net = _trained_net()
    net.train()
    net[4].eval()
    modes = {n: m.training for n, m in net.named_modules()}
    x, _ = _batches(1)[0]
    x.requires_grad_(True)
    hbnn.calibrate(net, [x])
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert x.grad is None and all(p.grad is None for p in net.parameters())
    assert all(q.calibration_batches is None for q in _quantizers(net).values())


def test_max_batches_and_plain_tensor_batches():
    net = _trained_net()
    report = hbnn.calibrate(net, (x for x, _ in _batches(5)), max_batches=2)
    assert (report.batches, report.samples) == (2, 12)
    assert [r["batches"] for r in report.layers] == [2, 2]


def test_summary_marks_target_bits_until_calibrated(tmp_path):
    net = _net().eval()
    s = summarize(net)
    binarized = [r for r in s["layers"] if r["act_mix"] is not None]
    assert binarized and all(r["act_bits_kind"] == "target" for r in binarized)
    assert {r["act_bits_kind"] for r in s["layers"] if r["act_mix"] is None} == {"float"}
    assert s["model"]["act_bits_kind"] == "target"
    table = format_summary(s)
    assert "1.400*" in table and "(target)" in table and "never saw data" in table
    report = hbnn.calibrate(net, _batches())
    assert [r["kind_before"] for r in report.layers] == ["target", "target"]
    assert [r["kind_after"] for r in report.layers] == ["realized", "realized"]
    s = summarize(net)
    assert all(r["act_bits_kind"] == "realized" for r in s["layers"] if r["act_mix"] is not None)
    assert s["model"]["act_bits_kind"] == "realized"
    assert "*" not in format_summary(s) and "(target)" not in format_summary(s)
    assert "calibrated 2 of 2 activation quantizers on 3 batches (18 samples)" in format_calibration(report)


def test_export_refuses_uncalibrated_then_accepts_calibrated(tmp_path):
    from hbnn.export import export_model

    net = _net().eval()
    with pytest.raises(FormatError, match=r"never calibrated.*hbnn.calibrate\(model, batches\)"):
        export_model(net, tmp_path / "a.hbnn", input_shape=[1, 8, 8])
    hbnn.calibrate(net, _batches())
    export_model(net, tmp_path / "a.hbnn", input_shape=[1, 8, 8])
    assert (tmp_path / "a.hbnn").stat().st_size > 0


def test_failed_calibration_leaves_the_model_as_it_was():
    net = _trained_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}

    def batches():
        yield _batches(1)[0]
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError, match="loader died"):
        hbnn.calibrate(net, batches())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(q.calibration_batches is None for q in _quantizers(net).values())


@pytest.mark.parametrize("kwargs, batches, match", [
    ({}, [], "no batches"),
    ({"max_batches": 0}, None, "max_batches=0"),
    ({"max_batches": True}, None, "max_batches=True"),
    ({}, ["not a tensor"], "batch 0 is str"),
])
def test_bad_input(kwargs, batches, match):
    with pytest.raises(ConfigError, match=match):
        hbnn.calibrate(_net(), _batches() if batches is None else batches, **kwargs)


def test_model_without_activation_quantizer():
    net = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="no activation quantizer"):
        hbnn.calibrate(net, [torch.randn(2, 4)])


def test_unreached_quantizer_is_reported():
    net = _trained_net()

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.unused = net, copy.deepcopy(net[3])

        def forward(self, x):
            return self.body(x)

    model = Head()
    before = model.unused.act_quantizer.running_scales.clone()
    with pytest.warns(UserWarning, match="no batch reached the activation quantizer of unused"):
        report = hbnn.calibrate(model, _batches(2))
    assert report.missed == ["unused"] and report.calibrated == 2
    assert torch.equal(model.unused.act_quantizer.running_scales, before)
