"""Packed format v3: structured bit maps (one code per unit), structured activations, the v2 reader.

Round trips for every weight structure x activation structure on small conv and linear
models (predictions equal, logits within the round-trip tolerance of
``conftest.assert_parity``; the engine's activation maps bit-identical to the model's),
unit codes bit-exact against ``WeightQuantizer.unit_map``, the size target on a
256x256x3x3 conv, the committed v2 file, and every malformed unit-code record refused in
one line (exit 2 on the CLI, nothing written by a failed export).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save
from torch import nn

from hbnn.cli import main
from hbnn.convert import quantize_
from hbnn.errors import FormatError
from hbnn.export import PackedLayer, export_model, format_report, load, read_packed, storage_report
from hbnn.export import units
from hbnn.export.encode import unpack_stream
from hbnn.export.format import META_KEY
from hbnn.io import seal_header
from hbnn.nn import HBConv2d

DATA = Path(__file__).parent / "data"
WEIGHTS = {"entry": {"bits": 1.4}, "block8": {"bits": 1.4, "structure": "block8"},
           "channel": {"bits": 1.4, "structure": "channel"},
           "block8-error": {"bits": 1.4, "structure": "block8", "allocate": "error", "per_channel": True},
           "block5-random": {"bits": "60/30/10", "structure": "block5", "heuristic": "random"}}
CONV_ACTS = {"entry": {"bits": 1.4}, "pixel": {"bits": 1.4, "structure": "pixel"},
             "group3": {"bits": 1.6, "structure": "group3", "heuristic": "top_down"}}
LINEAR_ACTS = {"entry": {"bits": 1.4}, "group4": {"bits": 1.4, "structure": "group4"}}


def _mlp(quant: dict, calibrate) -> nn.Module:
    """Linear 36-70-65-40-5 with BN; the two middle layers binarized (70 and 65 inputs)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 70), nn.BatchNorm1d(70), nn.Hardtanh(),
                          nn.Linear(70, 65), nn.BatchNorm1d(65), nn.Hardtanh(),
                          nn.Linear(65, 40), nn.BatchNorm1d(40), nn.Hardtanh(), nn.Linear(40, 5))
    quantize_(model, {"default": quant})
    return calibrate(model, (1, 6, 6))


def _inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of every binarized layer of ``model`` on ``x`` (eval mode), by layer name."""
    seen, hooks = {}, []
    for name, m in model.named_modules():
        if getattr(m, "act_quantizer", None) is not None:
            hooks.append(m.register_forward_pre_hook(lambda mod, args, n=name: seen.__setitem__(n, args[0])))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _check_roundtrip(model, path, shape, parity):
    export_model(model, path, input_shape=list(shape))
    engine = load(path)
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        parity(model(x), engine(x))
    assert sum(isinstance(m, PackedLayer) and m.binary for m in engine.layers) == 2
    # the engine binarizes each input with the model's map: unit keys against the same thresholds
    modules, inputs = dict(model.named_modules()), _inputs(model, x)
    for name, layer in engine.named_layers():
        if isinstance(layer, PackedLayer) and layer.act is not None:
            aq, xin = modules[name].act_quantizer, inputs[name]
            assert layer.act.structure == aq.structure
            rows = xin.permute(0, 2, 3, 1).reshape(-1, xin.shape[1]) if xin.dim() == 4 else xin
            torch.testing.assert_close(layer.act.running_bitmap(rows), aq.running_bitmap(xin).movedim(1, -1)
                                       .reshape(rows.shape), atol=0, rtol=0)
    return engine


@pytest.mark.parametrize("act", list(CONV_ACTS))
@pytest.mark.parametrize("weight", list(WEIGHTS))
def test_conv_roundtrip_every_structure(weight, act, tmp_path, make_fc4, parity):
    model = make_fc4({"weight": WEIGHTS[weight], "act": CONV_ACTS[act]}, seed=len(weight + act))
    _check_roundtrip(model, tmp_path / "m.hbnn", (1, 12, 12), parity)
    header = read_packed(tmp_path / "m.hbnn")[0]
    binarized = [r for r in header["layers"] if r["op"] == "conv2d" and r["act"] is not None]
    name = WEIGHTS[weight].get("structure", "entry")
    assert [(r["weight"]["structure"], r["act"]["structure"]) for r in binarized] == [(name, act)] * 2


@pytest.mark.parametrize("act", list(LINEAR_ACTS))
@pytest.mark.parametrize("weight", list(WEIGHTS))
def test_linear_roundtrip_every_structure(weight, act, tmp_path, calibrated, parity):
    model = _mlp({"weight": WEIGHTS[weight], "act": LINEAR_ACTS[act]}, calibrated)
    _check_roundtrip(model, tmp_path / "m.hbnn", (1, 6, 6), parity)


# ----------------------------------------------------------------------------- unit codes

def test_code_width_and_bit_order():
    assert [units.code_width(k) for k in (1, 2, 3, 4, 5, 8)] == [0, 1, 2, 2, 3, 3]
    levels = torch.tensor([0, 2, 1, 1])
    stream = units.encode_codes(levels, 3)  # 2 bits per code, least significant bit first
    assert stream.int().tolist() == [0, 0, 0, 1, 1, 0, 1, 0]
    assert torch.equal(units.decode_codes(stream, 4, 3, "t"), levels)
    with pytest.raises(FormatError, match="t: unit code 3 of unit 1 is out of range; allowed: 0..2"):
        units.decode_codes(torch.tensor([0, 0, 1, 1], dtype=torch.bool), 2, 3, "t")
    with pytest.raises(FormatError, match="t: unit-code stream has 3 bits, 2 units of 2 bits need 4"):
        units.decode_codes(torch.zeros(3, dtype=torch.bool), 2, 3, "t")


@pytest.mark.parametrize("weight", ["block8", "channel", "block8-error", "block5-random"])
def test_unit_codes_bit_exact_against_the_quantizer(weight, tmp_path, make_fc4):
    model = make_fc4({"weight": WEIGHTS[weight], "act": 1.4}, seed=4)
    export_model(model, tmp_path / "m.hbnn", input_shape=[1, 12, 12])
    header, tensors, _ = read_packed(tmp_path / "m.hbnn")
    engine, modules, checked = load(tmp_path / "m.hbnn"), dict(model.named_modules()), 0
    engine_layers = dict(engine.named_layers())
    for i, rec in enumerate(header["layers"]):
        w = rec.get("weight") or {}
        if w.get("encoding") != "planes":
            continue
        wq, weight_t = modules[rec["name"]].weight_quantizer, modules[rec["name"]].weight.detach()
        unit_map = wq.unit_map(weight_t)
        k = len(w["bits"])
        stream = unpack_stream(tensors[f"{i}.map"], w["map_bits"], "t")
        assert w["units"] == unit_map.bits.numel() and w["map_bits"] == w["units"] * units.code_width(k)
        assert torch.equal(stream, units.encode_codes(unit_map.levels(wq.mix), k))
        assert torch.equal(units.decode_codes(stream, w["units"], k, "t"), unit_map.levels(wq.mix))
        signs, masks, _ = engine_layers[rec["name"]].planes  # decoded once at load: the model's planes
        bitmap = unit_map.expand()
        assert torch.equal(masks, torch.stack([bitmap > p for p in range(w["planes"])]))
        assert torch.equal(signs, _model_signs(wq, weight_t))
        checked += 1
    assert checked == 2


def _model_signs(wq, w: torch.Tensor) -> torch.Tensor:
    """The sign planes Eq. 5 gives the model's weight (0 where a plane is inactive)."""
    from hbnn.quant.functional import residual_forward

    cdim = wq.channel_dim if wq.spec.per_channel else None
    _, _, signs, masks = residual_forward(w.float(), wq.bitmap(w), wq.mix.max_bits, cdim, keep_planes=True)
    return signs & masks


# ----------------------------------------------------------------------------- size

def _big_conv_row(tmp_path, weight: dict) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(HBConv2d(256, 256, 3, padding=1, weight_quant=weight), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten()).eval()
    return export_model(model, tmp_path / "big.hbnn", input_shape=[256, 4, 4])


@pytest.mark.parametrize("structure,units_", [("block64", 256 * 36), ("channel", 256)])
def test_structured_1p4_bit_conv_within_1p5_bits(structure, units_, tmp_path):
    report = _big_conv_row(tmp_path, {"bits": 1.4, "structure": structure, "per_channel": True})
    row, n = report["layers"][0], 256 * 256 * 9
    assert row["structure"] == structure and row["map_units"] == units_
    assert row["map_bits"] == 64 * math.ceil(2 * units_ / 64)  # 2-bit codes for {1, 2, 3}
    assert row["scale_bits"] == 3 * 256 * 32
    split = row["bits_per_weight_split"]
    assert split == {"planes": row["sign_bits"] / n, "map": row["map_bits"] / n, "scales": row["scale_bits"] / n}
    assert row["bits_per_weight"] == (row["sign_bits"] + row["map_bits"] + row["scale_bits"]) / n
    assert 1.39 < split["planes"] < 1.41 and row["bits_per_weight"] <= 1.5
    assert report["model"]["bits_per_binarized_weight_split"] == split
    assert f"{row['bits_per_weight']:.3f}" in format_report(report)


def test_per_entry_map_keeps_the_nested_code(tmp_path):
    row = _big_conv_row(tmp_path, {"bits": 1.4})["layers"][0]
    n = 256 * 256 * 9  # 70/20/10 per entry: [l >= 1] for all, [l >= 2] for the 30 % above level 0
    assert row["structure"] == "entry" and row["map_bits"] == 64 * math.ceil((n + round(0.3 * n)) / 64)


# ----------------------------------------------------------------------------- version 2

def _as_version_3(src: Path, dest: Path) -> None:
    """``src`` (a v2 file) re-written as v3: the same tensors, every record marked ``entry`` and
    naming its input (the previous record: a v2 file is a chain)."""
    header, tensors, _ = read_packed(src)
    header = copy.deepcopy(header)
    header["version"] = 3
    previous = "input"
    for rec in header["layers"]:
        rec["inputs"], previous = [previous], rec["name"]
        if (rec.get("weight") or {}).get("encoding") == "planes":
            rec["weight"]["structure"] = "entry"
        if rec.get("act") is not None:
            rec["act"]["structure"] = "entry"
    dest.write_bytes(save(tensors, metadata={META_KEY: json.dumps(seal_header(header))}))


def test_version_2_file_loads_with_the_same_outputs(tmp_path, parity):
    """``data/v2_small.hbnn`` was written by the v2 writer (commit dc025cd) with its engine's logits."""
    path, ref = DATA / "v2_small.hbnn", load_file(DATA / "v2_small.expected.safetensors")
    header = read_packed(path)[0]
    planes = [r["weight"] for r in header["layers"] if (r.get("weight") or {}).get("encoding") == "planes"]
    assert header["version"] == 2 and len(planes) == 4 and not any("structure" in w for w in planes)
    with torch.no_grad():
        out = load(path)(ref["x"])
    parity(ref["logits"], out)
    parity(ref["model_logits"], out)
    _as_version_3(path, tmp_path / "v3.hbnn")
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "v3.hbnn")(ref["x"]), out)  # v2 records read as v3 entry records
    rows = storage_report(path)["layers"]
    assert [r.get("structure") for r in rows if r["binarized"]] == ["entry", "oihw_block4", "entry", "entry"]


def test_version_2_records_have_no_structure(tmp_path, rewrite, refused, capsys):
    path = Path(shutil.copyfile(DATA / "v2_small.hbnn", tmp_path / "v2.hbnn"))
    i = next(i for i, r in enumerate(read_packed(path)[0]["layers"]) if r.get("act"))
    name = read_packed(path)[0]["layers"][i]["name"]
    rewrite(path, lambda h: h["layers"][i]["weight"].update(structure="entry"))
    refused(path, rf"layer {i} \({name}\): weight.structure: unknown field", capsys)


# ----------------------------------------------------------------------------- bad unit codes

@pytest.fixture(scope="module")
def structured(tmp_path_factory, fc4_factory):
    """A W1.4 (block8) A1.4 (group3) fc4; layer 3 is features.4 (8 input channels, rows of 72)."""
    folder = tmp_path_factory.mktemp("units")
    model = fc4_factory({"weight": {"bits": 1.4, "structure": "block8"}, "act": {"bits": 1.4, "structure": "group3"}})
    export_model(model, folder / "m.hbnn", input_shape=[1, 12, 12])
    rec = read_packed(folder / "m.hbnn")[0]["layers"][3]
    assert rec["name"] == "features.4" and rec["weight"]["units"] == 16 * 9
    return folder / "m.hbnn"


@pytest.fixture
def packed(tmp_path, structured):
    return Path(shutil.copyfile(structured, tmp_path / "m.hbnn"))


def _weight(**fields):
    return lambda h: h["layers"][3]["weight"].update(fields)


def _act(**fields):
    return lambda h: h["layers"][3]["act"].update(fields)


def _first_code(value: int):
    """Set unit 0's 2-bit code (the low bits of the map's first word)."""
    return lambda t: t["3.map"].__setitem__(0, (int(t["3.map"][0]) & ~3) | value)


L3 = r"layer 3 \(features.4\): "
HEADER_EDITS = {
    "units": (lambda h: h["layers"][3]["weight"].update(units=145), L3 + r"weight.units: invalid value 145; allowed: "
                                                                         r"144 for a \[16, 8, 3, 3\] weight with "
                                                                         r"structure block8"),
    "map_bits": (_weight(map_bits=286), L3 + r"weight.map_bits: invalid value 286; allowed: 288..288 .*2-bit code"),
    "unknown structure": (_weight(structure="tile8"), L3 + r"weight.structure: invalid value 'tile8'; allowed: "
                                                           r"entry, block<K>, channel"),
    "structure not a string": (_weight(structure=8), L3 + r"weight.structure: invalid value 8"),
    "act structure on a weight": (_weight(structure="pixel"), L3 + r"weight.structure: invalid value 'pixel'"),
    "block longer than a row": (_weight(structure="block73"), L3 + r"weight.structure: .*K <= 72"),
    "structure with legacy block": (_weight(block=2), L3 + r"weight.block: invalid value 2; allowed: 1 with "
                                                          r"structure block8"),
    "structure missing": (lambda h: h["layers"][3]["weight"].pop("structure"), L3 + r"weight.structure: missing"),
    "weight structure on an input": (_act(structure="channel"), L3 + r"act.structure: invalid value 'channel'; "
                                                                      r"allowed: entry, pixel, group<G>"),
    "group wider than the input": (_act(structure="group9"), L3 + r"act.structure: .*G <= 8, the input's channels"),
    "act structure missing": (lambda h: h["layers"][3]["act"].pop("structure"), L3 + r"act.structure: missing"),
}
TENSOR_EDITS = {
    "code out of range": (_first_code(3), L3 + r"unit code 3 of unit 0 is out of range; allowed: 0..2"),
    "map words": (lambda t: t.update({"3.map": torch.cat([t["3.map"], t["3.map"][:1]])}),
                  L3 + r"tensor '3.map' has torch.int64 \[6\], expected torch.int64 \[5\]"),
}


@pytest.mark.parametrize("case", list(HEADER_EDITS))
def test_bad_structure_fields_are_one_line(case, packed, rewrite, refused, capsys):
    edit, pattern = HEADER_EDITS[case]
    rewrite(packed, edit)
    refused(packed, pattern, capsys)


@pytest.mark.parametrize("case", list(TENSOR_EDITS))
def test_bad_unit_codes_are_one_line(case, packed, rewrite, refused, capsys):
    edit, pattern = TENSOR_EDITS[case]
    rewrite(packed, edit_tensors=edit)
    refused(packed, pattern, capsys)


def test_codes_that_do_not_match_the_sign_planes(packed, structured, rewrite, refused, capsys):
    header, tensors, _ = read_packed(packed)
    w = header["layers"][3]["weight"]
    level = int(units.decode_codes(unpack_stream(tensors["3.map"], w["map_bits"], ""), 144, 3, "")[0])
    rewrite(packed, edit_tensors=_first_code((level + 1) % 3))  # an in-range code: other plane sizes
    refused(packed, L3 + r"unit codes give plane sizes \[1152, \d+, \d+\], plane_counts says \[1152, ", capsys)
    # plane 1 claims one more unit of 8 entries: the sign stream (and its words) grow to match, the codes do not
    shutil.copyfile(structured, packed)
    counts = [w["plane_counts"][0], w["plane_counts"][1] + 8, *w["plane_counts"][2:]]
    words = -(-sum(counts) // 64)

    def longer_signs(t):
        t["3.signs"] = torch.cat([t["3.signs"], torch.zeros(words - t["3.signs"].numel(), dtype=torch.int64)])

    rewrite(packed, _weight(plane_counts=counts, sign_bits=sum(counts)), edit_tensors=longer_signs)
    refused(packed, L3 + r"unit codes give plane sizes .*plane_counts says .*\(the sign stream's planes\)", capsys)


def test_pixel_on_a_linear_input_is_refused(tmp_path, calibrated, rewrite, refused, capsys):
    path = tmp_path / "mlp.hbnn"
    export_model(_mlp({"weight": 1.4, "act": {"bits": 1.4, "structure": "group4"}}, calibrated), path,
                 input_shape=[1, 6, 6])
    index = next(i for i, r in enumerate(read_packed(path)[0]["layers"]) if r.get("act"))
    rewrite(path, lambda h: h["layers"][index]["act"].update(structure="pixel"))
    refused(path, rf"layer {index} \(\d+\): act.structure: invalid value 'pixel'; allowed: .*pixel applies to conv",
            capsys)


def test_failed_export_writes_nothing(tmp_path, make_fc4, monkeypatch):
    model = make_fc4({"weight": {"bits": 1.4, "structure": "channel"}, "act": 1.4})
    real = units.encode_codes
    monkeypatch.setattr(units, "encode_codes", lambda levels, k: real(levels, k)[:-1])  # one bit short
    with pytest.raises(FormatError, match=r"export of CifarFC4: layer 3 \(features.4\): weight.map_bits: "):
        export_model(model, tmp_path / "m.hbnn", input_shape=[1, 12, 12])
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def structured_run(tmp_path_factory, fabricate_fashion_mnist) -> Path:
    """A 1-epoch run of a narrow fc4 with block8 weights and group4 activations."""
    root = tmp_path_factory.mktemp("structured_run")
    data = fabricate_fashion_mnist(root / "fmnist")
    out = root / "run"
    quant = ("quant={default: {weight: {bits: 1.4, structure: block8}, act: {bits: 1.4, structure: group4}}}")
    assert main(["train", "--data-dir", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "32",
                 "--quiet", "--set", "model.kwargs={widths: [8, 16, 16]}", "--set", "run.tensorboard=false",
                 "--set", quant, "--set", "model.activation=hardtanh"]) == 0
    return out


def test_cli_export_and_infer_a_structured_run(structured_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.hbnn"
    assert main(["export", str(structured_run), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "block8" in text and "planes +" in text and " map + " in text
    assert main(["infer", str(out), "--compare", str(structured_run), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 64 and result["compare"]["mismatches"] == 0
    assert main(["hw", "estimate", "--packed", str(out), "--json"]) == 0  # the source model's structures match
    capsys.readouterr()
    real = units.encode_codes
    monkeypatch.setattr(units, "encode_codes", lambda levels, k: real(levels, k)[:-1])
    bad = tmp_path / "bad.hbnn"
    assert main(["export", str(structured_run), "--out", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hbnn: error: ") and err.count("\n") == 1 and "layer 3 (features.4): weight.map_bits" in err
    assert not bad.exists()
