"""Platforms as data: the packaged file, user YAML files, round trips and one-line errors."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from hbnn.cli import main
from hbnn.errors import ConfigError
from hbnn.hw import load_catalog
from hbnn.hw.platforms import parse_catalog

USER = """
version: 1
platforms:
  my_fpga:
    kind: fpga
    description: a bigger FPGA
    baseline: {macs: 1000000, bits: 2, occupancy: 0.5, kfps: 100, watts: 10}
    device_luts: 500000
    clock_mhz: 250
    dataflow: {lut_per_lane: 2.5, lut_per_pe: 8, lut_per_layer: 0}
  my_asic:
    kind: asic
    baseline: {layers: finn_cnv, bits: 1, area_mm2: 1.0, kfps: 10, watts: 0.1}
workloads:
  tiny:
    layers: finn_cnv
    op_ratio: 0.5
"""


def write(tmp_path, text, name="platforms.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_packaged_catalog():
    catalog = load_catalog()
    assert sorted(catalog.platforms) == ["alemdar2017", "zc706"]
    assert sorted(catalog.workloads) == ["mobilenet", "vgg8"]
    zc706 = catalog.platform("zc706")
    assert (zc706.baseline.occupancy, zc706.baseline.kfps, zc706.baseline.watts) == (0.212, 21.9, 3.6)
    assert zc706.baseline.macs == 59_461_376 and zc706.device_luts == 218_600
    assert catalog.workload("mobilenet").op_ratio == 49.0


def test_user_file_adds_platforms(tmp_path):
    catalog = load_catalog(write(tmp_path, USER))
    assert {"zc706", "alemdar2017", "my_fpga", "my_asic"} <= set(catalog.platforms)
    mine = catalog.platform("my_fpga")
    assert (mine.kind, mine.baseline.macs, mine.clock_mhz, mine.dataflow.lut_per_layer) == ("fpga", 1_000_000, 250, 0)
    assert catalog.platform("my_asic").baseline.macs == 59_461_376
    assert catalog.workload("tiny").op_ratio == 0.5


def test_user_file_replaces_a_packaged_platform(tmp_path):
    text = USER.replace("my_asic:", "alemdar2017:")
    assert load_catalog(write(tmp_path, text)).platform("alemdar2017").baseline.area_mm2 == 1.0


def test_round_trip_through_yaml(tmp_path):
    catalog = load_catalog(write(tmp_path, USER))
    dumped = yaml.safe_dump(catalog.to_dict())
    again = parse_catalog(yaml.safe_load(dumped))
    assert again == catalog
    assert load_catalog(write(tmp_path, dumped, "again.yaml")) == catalog


def test_unknown_platform_lists_the_known():
    with pytest.raises(ConfigError, match=r"unknown platform 'vu9p'; known: alemdar2017, zc706"):
        load_catalog().platform("vu9p")


BAD = [
    ("kind: fpga", "kind: gpu", r"platforms.my_fpga.kind: expected one of fpga, asic, got 'gpu'"),
    ("clock_mhz: 250", "clock_mhz: 250\n    colour: red", r"my_fpga.colour: unknown key; allowed:"),
    ("kfps: 100, watts: 10", "kfps: -100, watts: 10", r"baseline.kfps: expected a number > 0, got -100"),
    ("occupancy: 0.5", "occupancy: 1.5", r"baseline.occupancy: expected a fraction in \(0, 1\]"),
    ("bits: 2, occupancy", "bits: 9, occupancy", r"baseline.bits: expected bits in \[1, 8\]"),
    ("watts: 10}", "watts: 0}", r"baseline.watts: expected a number > 0"),
    ("{macs: 1000000, ", "{", r"my_fpga.baseline: give exactly one of 'layers'"),
    ("{layers: finn_cnv, bits: 1,", "{layers: vgg99, bits: 1,", r"unknown layer table 'vgg99'"),
    ("{macs: 1000000, ", "{macs: 1.5, layers: finn_cnv, ", r"give exactly one"),
    ("{macs: 1000000, ", "{macs: 10.5, ", r"expected a whole number > 0"),
    ("area_mm2: 1.0, ", "", r"my_asic.baseline.area_mm2: missing required key"),
    ("    device_luts: 500000\n", "", r"'dataflow' needs 'device_luts'"),
    ("lut_per_lane: 2.5", "lut_per_lane: 0", r"dataflow.lut_per_lane: expected a number > 0"),
    ("op_ratio: 0.5", "op_ratio: zero", r"workloads.tiny.op_ratio: expected a number"),
    ("version: 1", "version: 2", r"version: expected 1, got 2"),
    ("description: a bigger FPGA", "description: [1, 2]", r"description: expected a string"),
]


@pytest.mark.parametrize("old,new,message", BAD, ids=[b[2][:30] for b in BAD])
def test_invalid_user_files(tmp_path, old, new, message):
    assert old in USER
    path = write(tmp_path, USER.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as info:
        load_catalog(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_catalog(write(tmp_path, "platforms: [unclosed"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_catalog(write(tmp_path, "- just a list"))


def test_cli_platforms(tmp_path, capsys):
    assert main(["hw", "platforms", "--platforms", str(write(tmp_path, USER))]) == 0
    out = capsys.readouterr().out
    assert "my_fpga (fpga)" in out and "zc706 (fpga)" in out and "source:" in out
    bad = write(tmp_path, USER.replace("kfps: 100", "kfps: 0"), "bad.yaml")
    assert main(["hw", "platforms", "--platforms", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hbnn: error: platforms.my_fpga.baseline.kfps") and err.count("\n") == 1
