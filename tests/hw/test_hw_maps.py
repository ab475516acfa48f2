"""Map-aware weight memory (hbnn.hw.maps): planes + bit map + scales, beside the paper's figure."""

from __future__ import annotations

import json
import math
import types

import pytest
from torch import nn

from hbnn.cli import main
from hbnn.errors import ConfigError
from hbnn.hw import estimate_layers, profile_model, reproduce_table2, workload_layers
from hbnn.hw.maps import code_bits, map_units, mix_levels, network_storage, storage_table, weight_storage
from hbnn.hw.workloads import finn_cnv

MIX = ((1, 0.7), (2, 0.2), (3, 0.1))  # the paper's 1.4-bit mix
H_70_20_10 = -(0.7 * math.log2(0.7) + 0.2 * math.log2(0.2) + 0.1 * math.log2(0.1))
O, C, KH, KW = 256, 256, 3, 3  # the docs' conv layer
N, K = O * C * KH * KW, C * KH * KW  # 589824 weights, rows of 2304 inputs
# FINN CNV: rows * ceil(cols / 64) per layer (conv1 64x27 ... fc3 10x512)
VGG8_BLOCKS64 = 64 * 1 + 64 * 9 + 128 * 9 + 128 * 18 + 256 * 18 + 256 * 36 + 512 * 4 + 512 * 8 + 10 * 8


def test_map_codes_by_hand():
    assert H_70_20_10 == pytest.approx(1.1567796494470395, abs=1e-12)
    assert code_bits(MIX, "entropy") == pytest.approx(H_70_20_10, abs=1e-12)
    assert code_bits(MIX, "fixed") == 2.0  # ceil(log2 3)
    assert code_bits(MIX, "packed") == pytest.approx(1 + 0.2 + 0.1, abs=1e-12)  # nested masks: all, then levels >= 1
    two = ((1, 0.8), (3, 0.2))
    assert (code_bits(two, "fixed"), code_bits(two, "packed")) == (1.0, 1.0)
    five = tuple((b, 0.2) for b in range(1, 6))
    assert code_bits(five, "fixed") == 3.0 and code_bits(five, "entropy") == pytest.approx(math.log2(5), abs=1e-12)
    assert code_bits(five, "packed") == pytest.approx(1 + 0.8 + 0.6 + 0.4, abs=1e-12)
    for code in ("entropy", "fixed", "packed"):
        assert code_bits(((2, 1.0),), code) == 0.0


def test_map_units_per_structure():
    assert map_units("entry", O, K) == N
    assert map_units("block1", O, K) == N
    assert map_units("channel", O, K) == O
    assert map_units("block64", 64, 576) == 64 * 9  # ceil(576 / 64) = 9 codes per row
    assert map_units("block64", 64, 577) == 64 * 10  # a short last block is a unit too
    assert map_units("none", O, K) == 0


@pytest.mark.parametrize(
    "structure,units", [("entry", N), ("channel", O), ("block64", O * 36)]  # 2304 / 64 = 36 blocks per row
)
def test_conv_layer_storage_exact(structure, units):
    for code, per_unit in (("fixed", 2), ("entropy", H_70_20_10), ("packed", 1.3)):
        st = weight_storage(O, K, MIX, structure, code)
        assert st.weights == N and st.map_units == units
        assert st.paper_bits == pytest.approx(1.4 * N, rel=1e-15)  # the paper's figure
        assert st.map_bits == pytest.approx(units * per_unit, rel=1e-12)
        assert st.scale_bits == 32 * 3  # one float32 scale per plane, per tensor
        assert st.masked_plane_bits == 5 * N  # 3 sign planes + 2 masks
        assert st.total_bits == pytest.approx(1.4 * N + units * per_unit + 96, rel=1e-12)
    fixed = weight_storage(O, K, MIX, structure, "fixed")
    assert fixed.map_bits == units * 2  # integers: exact
    assert weight_storage(O, K, MIX, structure, "fixed", per_channel=True).scale_bits == 32 * 3 * O


def test_entry_bits_per_weight_of_the_docs_table():
    bpw = {c: weight_storage(O, K, MIX, "entry", c).bits_per_weight() for c in ("entropy", "fixed", "packed")}
    assert bpw["fixed"]["paper"] == pytest.approx(1.4, abs=1e-12)
    assert bpw["fixed"]["map"] == 2.0 and bpw["fixed"]["scales"] == 96 / N
    assert bpw["entropy"]["map_aware"] == pytest.approx(1.4 + H_70_20_10 + 96 / N, abs=1e-12)
    assert bpw["packed"]["map_aware"] == pytest.approx(2.7 + 96 / N, abs=1e-12)  # the packed file's ~2.70
    assert bpw["fixed"]["masked_planes"] == 5 + 96 / N


@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_homogeneous_mixes_add_no_map(bits):
    for structure in ("none", "entry", "channel", "block64"):
        for code in ("entropy", "fixed", "packed"):
            st = weight_storage(O, K, ((bits, 1.0),), structure, code)
            assert (st.map_units, st.map_bits) == (0, 0.0)
            assert st.total_bits == bits * N + 32 * bits and st.masked_plane_bits == bits * N


def test_masked_planes_count_masks_of_non_full_planes():
    assert weight_storage(4, 4, ((1, 0.8), (3, 0.2))).masked_plane_bits == 5 * 16  # planes 1, 2 masked
    assert weight_storage(4, 4, ((2, 0.5), (3, 0.5))).masked_plane_bits == 4 * 16  # planes 0, 1 full


def test_mix_levels():
    assert mix_levels(1.4) == MIX and mix_levels("70/20/10") == MIX and mix_levels("1.4") == MIX
    assert mix_levels("80/0/20") == ((1, 0.8), (3, 0.2)) and mix_levels(2) == ((2, 1.0),)
    assert mix_levels(2.5) == ((2, 0.5), (3, 0.5))  # no paper mix: two levels with that average
    for bad in ("9", "x", 0.5, True, float("nan")):
        with pytest.raises(ConfigError, match="^wbits: "):
            mix_levels(bad)


@pytest.mark.parametrize("bad", ["block0", "block", "blockx", "Entry", "channels", "", 64, None])
def test_bad_structure(bad):
    with pytest.raises(ConfigError, match=r"^structure: invalid value .*; allowed: none, entry, channel, block<k>"):
        weight_storage(4, 4, MIX, bad)


def test_bad_code_and_none_with_a_mix():
    with pytest.raises(ConfigError, match=r"^map_code: invalid value 'huffman'; allowed: entropy, fixed, packed$"):
        weight_storage(4, 4, MIX, "entry", "huffman")
    with pytest.raises(ConfigError, match="'none' needs a homogeneous mix"):
        weight_storage(4, 4, MIX, "none")


def test_vgg8_network_storage_by_hand():
    layers = workload_layers("finn_cnv", 1.4, wmix=MIX)
    weights = sum(p.weights for p in finn_cnv())
    st, rows = network_storage(layers, None, "fixed")
    assert st["structure"] == "entry" and st["map_bits"] == 2 * weights and st["scale_bits"] == 9 * 96
    blocks = VGG8_BLOCKS64
    st, _ = network_storage(layers, "block64", "fixed")
    assert st["map_units"] == blocks and st["map_bits"] == 2 * blocks
    st, _ = network_storage(layers, "channel", "fixed")
    assert st["map_units"] == 64 + 64 + 128 + 128 + 256 + 256 + 512 + 512 + 10


def test_paper_figure_is_unchanged():
    layers = workload_layers("finn_cnv", 1.4, wmix=MIX)
    paper = sum(p.weights for p in finn_cnv()) * 1.4
    nets = [estimate_layers(layers, platforms=["zc706"], structure=s, map_code=c)
            for s, c in ((None, "fixed"), ("channel", "entropy"), ("block64", "packed"))]
    for report in nets:
        net = report["network"]
        assert net["weight_memory_bits"] == pytest.approx(paper, rel=1e-15)
        assert net["weight_memory_map_aware_bits"] == pytest.approx(
            paper + net["weight_storage"]["map_bits"] + net["weight_storage"]["scale_bits"], rel=1e-15)
        strip = {k: v for k, v in net.items() if k not in ("weight_storage", "weight_memory_map_aware_bits")}
        first = {k: v for k, v in nets[0]["network"].items() if k not in ("weight_storage", "weight_memory_map_aware_bits")}
        assert strip == first and report["platforms"] == nets[0]["platforms"]  # costs do not see the map
    plain, other = reproduce_table2(), reproduce_table2(structure="block64", map_code="entropy")
    for a, b in zip(plain, other):
        assert {k: v for k, v in a.items() if k != "weight_storage"} == {k: v for k, v in b.items() if k != "weight_storage"}
    row5 = plain[4]["weight_storage"]["bits_per_weight"]  # VGG-8 at 1.4 bits, per entry, fixed code
    assert (plain[4]["row"], row5["paper"]) == (5, pytest.approx(1.4, abs=1e-12))
    assert row5["map"] == 2.0 and plain[0]["weight_storage"]["map_bits"] == 0  # row 1 is 1-bit: no map
    assert plain[3]["weight_storage"]["bits_per_weight"]["map"] == 1.0  # 1.2 bits = 90/0/10: two levels


# ----------------------------------------------------------------------------- model-driven structures


def _hb_net(weight_spec):
    from hbnn.nn import HBConv2d, HBLinear

    conv = HBConv2d.from_float(nn.Conv2d(4, 8, 3), {"weight": weight_spec, "act": 2})
    fc = HBLinear.from_float(nn.Linear(8 * 4 * 4, 10), {"weight": 2, "act": 2})
    return nn.Sequential(conv, nn.Flatten(), fc)


def test_structure_comes_from_the_quant_config():
    layers = profile_model(_hb_net({"bits": 1.4, "block": 16}), (4, 6, 6))
    assert [p.structure for p in layers] == ["block16", "entry"] and layers[0].wmix == MIX
    _, rows = network_storage(layers)
    assert rows[0]["structure"] == "block16" and rows[0]["map_units"] == 8 * 3  # 36 inputs -> 3 blocks of 16
    assert rows[1]["structure"] == "none" and rows[1]["map_bits"] == 0  # a 2-bit layer needs no map
    _, rows = network_storage(layers, "channel")  # an explicit structure overrides
    assert rows[0]["map_units"] == 8


def test_structure_field_is_read_when_present(attach_quantizers, fake_quantizer):
    layer = attach_quantizers(nn.Linear(6, 4), 1.4, 1)
    layer.weight_quantizer.spec = types.SimpleNamespace(structure="channel", block=1, per_channel=True)
    (p,) = profile_model(layer, (6,))
    assert (p.structure, p.per_channel) == ("channel", True)
    (row,) = network_storage([p], None, "fixed")[1]
    assert (row["map_units"], row["map_bits"], row["scale_bits"]) == (4, 8.0, 32 * 3 * 4)
    layer.weight_quantizer.spec = types.SimpleNamespace(structure="pixel", block=1)
    with pytest.raises(ConfigError, match=r"^Linear\.weight\.structure: invalid value 'pixel'"):
        profile_model(layer, (6,))


def _has_allocate() -> bool:
    from hbnn.quant.config import QuantSpec

    return hasattr(QuantSpec(), "allocate")


@pytest.mark.skipif(not _has_allocate(), reason="QuantSpec has no allocate field in this checkout")
def test_error_allocation_codes_the_realized_levels():
    from hbnn.nn import HBConv2d

    conv = HBConv2d.from_float(nn.Conv2d(8, 32, 3), {"weight": {"bits": 1.4, "allocate": "error"}, "act": 2})
    (p,) = profile_model(conv, (8, 6, 6))
    bitmap = conv.weight_quantizer.bitmap(conv.weight).reshape(-1)
    n = bitmap.numel()
    assert p.wmix == tuple((b, int((bitmap == b).sum()) / n) for b in (1, 2, 3))  # the mix's bitwidths, realized shares
    (row,) = network_storage([p], None, "packed")[1]
    assert row["map_bits"] == pytest.approx(n + int((bitmap >= 2).sum()), abs=1e-9)  # nested masks
    assert network_storage([p], None, "fixed")[1][0]["map_bits"] == 2 * n  # K = 3 bitwidths coded


def test_agrees_with_summary_and_the_packed_format():
    import torch

    from hbnn.export.format import pack_model
    from hbnn.nn import HBConv2d
    from hbnn.summary import summarize

    torch.manual_seed(0)
    model = nn.Sequential(
        HBConv2d.from_float(nn.Conv2d(4, 8, 3), {"weight": 1.4, "act": 2}),  # per entry
        HBConv2d.from_float(nn.Conv2d(8, 8, 3), {"weight": {"bits": 1.4, "block": 16}, "act": 2}),  # 72 -> 5 blocks
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10),
    )
    model.train()
    model(torch.randn(4, 4, 6, 6))  # calibrates the activation quantizers for export
    model.eval()
    layers = profile_model(model, (4, 6, 6))
    fixed = network_storage(layers, None, "fixed")[1]
    summary = summarize(model)["layers"]
    assert [r["map_bits"] for r in fixed if r] == [s["map_bits"] for s in summary if s["weight_mix"]]
    header, _ = pack_model(model, input_shape=(4, 6, 6))
    stored = [rec["weight"]["map_bits"] for rec in header["layers"] if (rec.get("weight") or {}).get("encoding") == "planes"]
    packed = [r["map_bits"] for r in network_storage(layers, None, "packed")[1] if r]
    assert len(stored) == len(packed) == 2
    for ours, theirs in zip(packed, stored):
        assert abs(ours - theirs) < 1  # level counts are rounded to whole units in the file


# ----------------------------------------------------------------------------- CLI


def run_json(capsys, *argv):
    assert main(["hw", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_estimate_flags(capsys):
    net = run_json(capsys, "estimate", "--model", "vgg8", "--wbits", "1.4", "--platform", "zc706")["network"]
    weights = net["weights"]
    st = net["weight_storage"]
    assert (st["structure"], st["map_code"], st["map_bits"]) == ("entry", "fixed", 2 * weights)  # defaults
    assert net["weight_memory_bits"] == pytest.approx(1.4 * weights, rel=1e-15)
    net = run_json(capsys, "estimate", "--model", "vgg8", "--wbits", "70/20/10", "--structure", "channel",
                   "--map-code", "entropy", "--platform", "zc706")["network"]
    assert net["weight_storage"]["map_units"] == 64 + 64 + 128 + 128 + 256 + 256 + 512 + 512 + 10
    assert net["weight_storage"]["map_bits"] == pytest.approx(1930 * H_70_20_10, rel=1e-12)
    net = run_json(capsys, "estimate", "--model", "vgg8", "--wbits", "80/0/20", "--map-code", "packed")["network"]
    assert net["weight_storage"]["map_bits"] == weights  # two levels: one mask bit per weight
    assert main(["hw", "estimate", "--model", "vgg8", "--wbits", "1.4", "--structure", "block64", "--per-layer"]) == 0
    out = capsys.readouterr().out
    blocks = VGG8_BLOCKS64
    assert f"map-aware {1.4 + (2 * blocks + 864) / weights:.4g} = 1.4 planes + {2 * blocks / weights:.4g} map " in out
    assert "(block64 structure, fixed code)" in out
    assert "block64" in out.splitlines()[6]  # the per-layer table names each layer's map


def test_cli_model_layers_keep_their_structure(capsys, monkeypatch):
    import hbnn.models

    monkeypatch.setattr(hbnn.models, "build_model", lambda name, **kw: _hb_net({"bits": 1.4, "block": 16}))
    report = run_json(capsys, "estimate", "--model", "small", "--image-size", "6", "--in-channels", "4", "--per-layer")
    assert [p["storage"]["structure"] for p in report["layers"]] == ["block16", "none"]
    assert report["notes"] == []
    report = run_json(capsys, "estimate", "--model", "small", "--image-size", "6", "--in-channels", "4", "--structure", "entry")
    assert report["network"]["weight_storage"]["map_units"] == 8 * 36
    assert "--structure entry replaces the layers' own bit-map structure (block16)" in report["notes"]


def test_cli_table2_and_storage(capsys):
    rows = run_json(capsys, "table2", "--structure", "block64", "--map-code", "packed")
    assert {r["weight_storage"]["structure"] for r in rows} == {"block64", "none"}
    assert main(["hw", "table2"]) == 0
    assert " 5  zc706       VGG-8         1x  1.4" in (out := capsys.readouterr().out) and "1.4 -> 3.4" in out
    table = run_json(capsys, "storage")
    assert table["weights"] == N and [(r["wbits"], r["structure"]) for r in table["rows"]] == [
        (1, "none"), (2, "none"), (pytest.approx(1.4), "entry"), (pytest.approx(1.4), "channel"),
        (pytest.approx(1.4), "block64")]
    entry = table["rows"][2]["bits_per_weight"]
    assert entry["map_aware"] == {"entropy": pytest.approx(1.4 + H_70_20_10 + 96 / N, abs=1e-12),
                                  "fixed": pytest.approx(3.4 + 96 / N, abs=1e-12),
                                  "packed": pytest.approx(2.7 + 96 / N, abs=1e-12)}
    assert table["rows"][0]["bits_per_weight"]["map_aware"]["fixed"] == 1 + 32 / N
    table = run_json(capsys, "storage", "--shape", "64x64x3x3", "--wbits", "1.4", "--structure", "block64")
    assert table["rows"][0]["map_units"] == 64 * 9


@pytest.mark.parametrize(
    "argv,message",
    [
        (["estimate", "--model", "vgg8", "--wbits", "1.4", "--structure", "block0"], "structure: invalid value 'block0'"),
        (["estimate", "--model", "vgg8", "--wbits", "1.4", "--structure", "none"], "'none' needs a homogeneous mix"),
        (["estimate", "--model", "vgg8", "--wbits", "1.4", "--map-code", "huffman"], "map_code: invalid value 'huffman'"),
        (["table2", "--structure", "rows"], "structure: invalid value 'rows'"),
        (["table2", "--map-code", "FIXED"], "map_code: invalid value 'FIXED'"),
        (["storage", "--shape", "3x"], "shape: invalid value '3x'"),
        (["storage", "--shape", "0x4"], "shape: invalid value '0x4'"),
        (["storage", "--wbits", "9"], "wbits: "),
        (["storage", "--structure", "channel", "--structure", "blk"], "structure: invalid value 'blk'"),
    ],
)
def test_cli_bad_values_exit_2(capsys, argv, message):
    assert main(["hw", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hbnn: error: ") and err.count("\n") == 1 and message in err


def test_storage_table_api():
    (row,) = storage_table(10, 30, ["80/0/20"], ["block8"])
    assert row["map_units"] == 10 * 4 and row["bits_per_weight"]["map"]["fixed"] == 40 / 300
