"""Stored size: bits per parameter counted exactly for known layers, and the file against fp32."""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from hbnn.export import export_model, format_report, read_packed, storage_report
from hbnn.nn import HBLinear


def _linear(weight) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(HBLinear(100, 10, weight_quant=weight)).eval()


def _words(bits: int) -> int:
    return 64 * math.ceil(bits / 64)


def test_per_parameter_1p4_layer_exact_bits(tmp_path):
    report = export_model(_linear(1.4), tmp_path / "m.hbnn", input_shape=[100])
    row = report["layers"][0]
    # 1000 weights, 70/20/10 % at 1/2/3 bits: planes hold 1000 + 300 + 100 sign bits; the nested
    # map holds [level >= 1] for all 1000 entries and [level >= 2] for the 300 above level 0.
    assert row["weights"] == 1000
    assert (row["sign_bits"], row["map_bits"], row["scale_bits"]) == (_words(1400), _words(1300), 3 * 32)
    assert row["other_bits"] == 10 * 32  # bias
    assert row["bits_per_weight"] == (1408 + 1344 + 96) / 1000
    assert row["avg_weight_bits"] == 1.4 and row["map_bits_fixed_width"] == 2000
    header, _, _ = read_packed(tmp_path / "m.hbnn")
    w = header["layers"][0]["weight"]
    assert (w["sign_bits"], w["map_bits"], w["plane_counts"]) == (1400, 1300, [1000, 300, 100])


def test_homogeneous_and_block_layers_exact_bits(tmp_path):
    row = export_model(_linear(2), tmp_path / "h.hbnn", input_shape=[100])["layers"][0]
    assert (row["sign_bits"], row["map_bits"], row["scale_bits"]) == (2048, 0, 64)
    # block=10: 10 rows x 10 blocks = 100 map units (70/20/10 blocks): 100 + 30 map bits.
    row = export_model(_linear({"bits": 1.4, "block": 10}), tmp_path / "b.hbnn", input_shape=[100])["layers"][0]
    assert (row["sign_bits"], row["map_bits"]) == (_words(1400), _words(130))
    per_channel = export_model(_linear({"bits": 1, "per_channel": True}), tmp_path / "c.hbnn", input_shape=[100])
    assert per_channel["layers"][0]["scale_bits"] == 10 * 32


def test_model_totals_against_fp32(tmp_path, make_fc4, meta):
    model = make_fc4({"weight": 1.4, "act": 1.4})
    path = tmp_path / "m.hbnn"
    written = export_model(model, path, meta=meta)
    report = storage_report(path)
    assert report == written
    m = report["model"]
    params = sum(p.numel() for p in model.parameters())
    assert m["file_bytes"] == os.path.getsize(path) and m["source_params"] == params
    assert m["fp32_bytes"] == 4 * params and m["compression"] == 4 * params / m["file_bytes"]
    assert m["tensor_bytes"] + m["header_bytes"] == m["file_bytes"]
    assert m["bits_per_param"] == 8 * m["tensor_bytes"] / params
    assert 2.5 < m["bits_per_binarized_weight"] < 3.0
    assert "bits/parameter stored" in format_report(report)
