"""Every field of a packed file is validated before use (hbnn.export.validate).

Each edit below is *resealed* (``hbnn.io.seal_header`` after the edit, payload digest
recomputed), so the digests pass and only validation can refuse it: one FormatError line
naming the file, the layer and the field, from ``load``/``read_packed``/``storage_report``
and, through the CLI (``hbnn infer`` and ``hbnn hw estimate --packed``), exit code 2 with
one stderr line. The same edits without resealing are refused by the header digest.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from hbnn.cli import main
from hbnn.errors import FormatError
from hbnn.export import export_model, load, read_packed, storage_report
from hbnn.export.ops import SIMPLE_OPS
from hbnn.export.validate import _ATTRS

NAN, INF = float("nan"), float("inf")
#: A ``meta.source`` record as ``hbnn export`` writes it.
SOURCE = {"checkpoint": "run/last.safetensors", "sha256": "0" * 64, "epoch": 2, "step": 8,
          "metrics": {"top1": 0.5, "count": 64}}


@pytest.fixture(scope="module")
def originals(tmp_path_factory, fc4_factory):
    """Exported once per module: a W1.4A1.4 fc4 (BN folded) with model and data metadata, and
    a W1A1 fc4 with its batch norms kept as ops (layer 1 is features.1, a batch_norm)."""
    folder = tmp_path_factory.mktemp("validation")
    meta = {"model": {"name": "cifar_fc4", "in_channels": 1, "image_size": 12, "num_classes": 10},
            "data": {"name": "fashion_mnist", "data_dir": None, "image_size": None}}
    export_model(fc4_factory({"weight": 1.4, "act": 1.4}), folder / "m.hbnn", meta=meta, input_shape=[1, 12, 12])
    export_model(fc4_factory({"weight": 1, "act": 1}), folder / "bn.hbnn", input_shape=[1, 12, 12], fold_bn=False)
    return folder


@pytest.fixture
def packed(tmp_path, originals):
    """A fresh copy of the W1.4A1.4 file."""
    return Path(shutil.copyfile(originals / "m.hbnn", tmp_path / "m.hbnn"))


@pytest.fixture
def unfolded(tmp_path, originals):
    """A fresh copy of the unfolded W1A1 file."""
    return Path(shutil.copyfile(originals / "bn.hbnn", tmp_path / "bn.hbnn"))


def _set(*keys_and_value):
    """An edit setting ``header[k0][k1]... = value`` (a missing last key is created)."""
    *keys, value = keys_and_value

    def edit(h):
        obj = h
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


def _delete(*keys):
    def edit(h):
        obj = h
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]
    return edit


HEADER_CASES = {
    "version bool": (_set("version", True), r"unknown format version True"),
    "version float": (_set("version", 2.0), r"unknown format version 2.0"),
    "unknown field": (_set("extra", 1), r": extra: unknown field; allowed: format, version"),
    "missing field": (_delete("fold_bn"), r": fold_bn: missing; required keys: "),
    "fold_bn int": (_set("fold_bn", 1), r": fold_bn: invalid value 1; allowed: true or false"),
    "source_params bool": (_set("source_params", True), r": source_params: invalid value True; allowed: an integer"),
    "source_params negative": (_set("source_params", -1), r": source_params: invalid value -1"),
    "hbnn_version": (_set("hbnn_version", 1), r": hbnn_version: invalid value 1"),
    "input_shape zero": (_set("input_shape", [1, 12, 0]), r": input_shape: invalid value \[1, 12, 0\]; allowed: 1 to 3 "),
    "input_shape null": (_set("input_shape", None), r": input_shape: invalid value None; allowed: 1 to 3 positive"),
    "input_shape float": (_set("input_shape", [1, 12.0, 12]), r": input_shape: invalid value \[1, 12.0, 12\]"),
    "input_shape bool": (_set("input_shape", [True, 12, 12]), r": input_shape: invalid value \[True, 12, 12\]"),
    "input_shape arity": (_set("input_shape", [1, 1, 12, 12]), r": input_shape: invalid value \[1, 1, 12, 12\]"),
    "input_shape huge": (_set("input_shape", [4096, 4096, 4096]), r": input_shape: .*at most 16777216 entries"),
    "input_shape vs model": (_set("input_shape", [3, 12, 12]), r": input_shape: .*allowed: \[1, 12, 12\], the model"),
    "model": (_set("model", "cifar_fc4"), r": model: invalid value 'cifar_fc4'; allowed: an object with a name"),
    "model null": (_set("model", None), r": model: invalid value None; allowed: an object with a name"),
    "model.name missing": (_delete("model", "name"), r": model.name: missing"),
    "model.image_size": (_set("model", "image_size", True), r": model.image_size: invalid value True"),
    "model unknown": (_set("model", "depth", 4), r": model.depth: unknown field"),
    "meta": (_set("meta", []), r": meta: invalid value \[\]; allowed: an object"),
    "meta.data": (_set("meta", "data", "fmnist"), r": meta.data: invalid value 'fmnist'"),
    "meta.data.image_size": (_set("meta", "data", "image_size", 0), r": meta.data.image_size: invalid value 0"),
    "meta.source.step": (_set("meta", "source", {**SOURCE, "step": 1.5}), r": meta.source.step: invalid value 1.5"),
    "layers empty": (_set("layers", []), r" has no layers; re-create it with `hbnn export RUN --out FILE`"),
    "layers not a list": (_set("layers", {}), r": layers: invalid value \{\}; allowed: a list"),
}

LAYER_CASES = {
    # record level
    "record": (_set("layers", 1, "relu"), r": layer 1: record: invalid value 'relu'"),
    "name": (_set("layers", 1, "name", 5), r": layer 1: name: invalid value 5"),
    "name with newline": (_set("layers", 1, "name", "a\nb"), r": layer 1: name: invalid value 'a\\nb'"),
    "unknown op": (_set("layers", 1, "op", "gelu"), r": layer 1 \(features.2\): unknown layer op 'gelu'; supported"),
    "op bool": (_set("layers", 1, "op", True), r": layer 1 \(features.2\): unknown layer op True"),
    "unknown key": (_set("layers", 1, "inplace", True), r": layer 1 \(features.2\): inplace: unknown field"),
    "attrs missing": (_delete("layers", 1, "attrs"), r": layer 1 \(features.2\): attrs: missing"),
    # hardtanh
    "min_val nan": (_set("layers", 1, "attrs", "min_val", NAN), r"\(features.2\): attrs.min_val: invalid value nan; "
                                                                 r"allowed: a finite number"),
    "min_val inf": (_set("layers", 1, "attrs", "min_val", -INF), r"attrs.min_val: invalid value -inf"),
    "min_val bool": (_set("layers", 1, "attrs", "min_val", False), r"attrs.min_val: invalid value False"),
    "min_val str": (_set("layers", 1, "attrs", "min_val", "-1"), r"attrs.min_val: invalid value '-1'"),
    "max_val <= min_val": (_set("layers", 1, "attrs", "max_val", -1.0), r"attrs.max_val: invalid value -1.0; "
                                                                        r"allowed: a finite number > min_val \(-1\)"),
    "hardtanh extra attr": (_set("layers", 1, "attrs", "inplace", True), r"attrs.inplace: unknown field"),
    # max pool
    "pool stride 0": (_set("layers", 2, "attrs", "stride", 0), r"\(features.3\): attrs.stride: invalid value 0"),
    "pool stride bool": (_set("layers", 2, "attrs", "stride", True), r"attrs.stride: invalid value True"),
    "pool kernel arity": (_set("layers", 2, "attrs", "kernel_size", [2]), r"attrs.kernel_size: invalid value \[2\]"),
    "pool padding": (_set("layers", 2, "attrs", "padding", 2), r"attrs.padding: invalid value 2; allowed: 0..\[1, 1\]"),
    "pool padding negative": (_set("layers", 2, "attrs", "padding", -1), r"attrs.padding: invalid value -1"),
    "pool dilation": (_set("layers", 2, "attrs", "dilation", 0), r"attrs.dilation: invalid value 0"),
    "pool dilation huge": (_set("layers", 2, "attrs", "dilation", 2 ** 70), r"attrs.dilation: invalid value 1180"),
    "pool ceil_mode": (_set("layers", 2, "attrs", "ceil_mode", 0), r"attrs.ceil_mode: invalid value 0"),
    # conv geometry (layer 3 binarized, layer 9 the float classifier)
    "padding": (_set("layers", 9, "geometry", "padding", [3, 1]),
                r"\(classifier\): geometry.padding: invalid value \[3, 1\]; allowed: 0..\[2, 2\]"),
    "padding negative": (_set("layers", 9, "geometry", "padding", [-1, 1]), r"geometry.padding: invalid value \[-1,"),
    "padding bool": (_set("layers", 9, "geometry", "padding", [1, True]), r"padding: invalid value \[1, True\]"),
    "padding str": (_set("layers", 9, "geometry", "padding", "full"), r"geometry.padding: invalid value 'full'"),
    "padding same stride 2": ((lambda h: h["layers"][9]["geometry"].update(padding="same", stride=[2, 2])),
                              r"geometry.padding: invalid value 'same'; allowed: 'same' only with stride"),
    "binarized padding same": (_set("layers", 3, "geometry", "padding", "same"),
                               r"\(features.4\): geometry.padding: .*integer zero padding for a binarized conv"),
    "stride": (_set("layers", 9, "geometry", "stride", [0, 1]), r"geometry.stride: invalid value \[0, 1\]"),
    "stride float": (_set("layers", 9, "geometry", "stride", [1.0, 1]), r"geometry.stride: invalid value \[1.0, 1\]"),
    "dilation": (_set("layers", 9, "geometry", "dilation", [1]), r"geometry.dilation: invalid value \[1\]"),
    "kernel_size": (_set("layers", 9, "geometry", "kernel_size", [3, 3.5]), r"geometry.kernel_size: invalid value"),
    "groups": (_set("layers", 9, "geometry", "groups", 7), r"geometry.groups: invalid value 7; allowed: a divisor"),
    "groups bool": (_set("layers", 9, "geometry", "groups", True), r"geometry.groups: invalid value True"),
    "in_channels": (_set("layers", 9, "geometry", "in_channels", 0), r"geometry.in_channels: invalid value 0"),
    "out_channels huge": (_set("layers", 9, "geometry", "out_channels", 10 ** 20), r"geometry.out_channels: invalid"),
    "padding_mode": (_set("layers", 9, "geometry", "padding_mode", "mirror"), r"geometry.padding_mode: invalid value"),
    "geometry extra": (_set("layers", 9, "geometry", "bias", True), r"geometry.bias: unknown field"),
    "bias int": (_set("layers", 9, "bias", 1), r"\(classifier\): bias: invalid value 1; allowed: true or false"),
    "out_scale int": (_set("layers", 3, "out_scale", 1), r"\(features.4\): out_scale: invalid value 1"),
    "folded": (_set("layers", 3, "folded", "features.5"), r"folded: invalid value 'features.5'"),
    # weight planes
    "encoding": (_set("layers", 3, "weight", "encoding", "int8"), r"weight.encoding: invalid value 'int8'"),
    "bits repeated": (_set("layers", 3, "weight", "bits", [1, 1, 3]), r"weight.bits: invalid value \[1, 1, 3\]"),
    "bits zero": (_set("layers", 3, "weight", "bits", [0, 2, 3]), r"weight.bits: invalid value \[0, 2, 3\]"),
    "bits bool": (_set("layers", 3, "weight", "bits", [True, 2, 3]), r"weight.bits: invalid value \[True, 2, 3\]"),
    "bits too many": (_set("layers", 3, "weight", "bits", [1, 2, 9]), r"weight.bits: .*integers in 1..8"),
    "fractions sum": (_set("layers", 3, "weight", "fractions", [0.7, 0.2, 0.2]), r"weight.fractions: .*summing to 1"),
    "fractions nan": (_set("layers", 3, "weight", "fractions", [0.7, NAN, 0.1]), r"weight.fractions: invalid value"),
    "fractions arity": (_set("layers", 3, "weight", "fractions", [0.8, 0.2]), r"weight.fractions: .*allowed: 3 finite"),
    "weight heuristic": (_set("layers", 3, "weight", "heuristic", "best"), r"weight.heuristic: invalid value 'best'"),
    "block": (_set("layers", 3, "weight", "block", 0), r"weight.block: invalid value 0"),
    "per_channel": (_set("layers", 3, "weight", "per_channel", 0), r"weight.per_channel: invalid value 0"),
    "planes": (_set("layers", 3, "weight", "planes", 2), r"weight.planes: invalid value 2; allowed: 3, the largest"),
    "units": (_set("layers", 3, "weight", "units", 1151), r"weight.units: invalid value 1151; allowed: 1152"),
    "plane_counts arity": (_set("layers", 3, "weight", "plane_counts", [1152, 346]), r"weight.plane_counts: invalid"),
    "plane_counts order": (_set("layers", 3, "weight", "plane_counts", [1152, 116, 346]), r"weight.plane_counts: "),
    "sign_bits": (_set("layers", 3, "weight", "sign_bits", 1613), r"weight.sign_bits: invalid value 1613; allowed: 16"),
    "map_bits": (_set("layers", 3, "weight", "map_bits", 0), r"weight.map_bits: invalid value 0; allowed: 1152..2304"),
    # activation mix
    "act": (_set("layers", 3, "act", [1]), r"\(features.4\): act: invalid value \[1\]"),
    "act heuristic": (_set("layers", 3, "act", "heuristic", "random"),
                      r"act.heuristic: invalid value 'random'; allowed: middle_out, top_down, bottom_up"),
    "act bits": (_set("layers", 3, "act", "bits", [1, 2]), r"act.fractions: invalid value \[0.7, 0.2, 0.1\]"),
    # adaptive pool, flatten
    "output_size": (_set("layers", 10, "attrs", "output_size", 0), r"\(pool\): attrs.output_size: invalid value 0"),
    "output_size huge": (_set("layers", 10, "attrs", "output_size", 5000), r"attrs.output_size: invalid value 5000"),
    "output_size bool": (_set("layers", 10, "attrs", "output_size", [1, True]), r"attrs.output_size: invalid value"),
    "flatten dim": (_set("layers", 11, "attrs", "start_dim", 9), r"\(flatten\): attrs.start_dim: invalid value 9"),
    "flatten bool": (_set("layers", 11, "attrs", "end_dim", True), r"attrs.end_dim: invalid value True"),
}

TENSOR_CASES = {
    "scales nan": (lambda t: t["3.scales"].__setitem__(0, NAN),
                   r"layer 3 \(features.4\): tensor '3.scales': invalid values \(NaN or inf\)"),
    "act scales inf": (lambda t: t["6.act.scales"].__setitem__(1, INF), r"tensor '6.act.scales': invalid values"),
    "out_scale nan": (lambda t: t["3.out_scale"].__setitem__(2, NAN), r"tensor '3.out_scale': invalid values"),
    "weight inf": (lambda t: t["9.weight"].view(-1).__setitem__(0, -INF), r"tensor '9.weight': invalid values"),
    "extra tensor": (lambda t: t.update({"99.x": torch.zeros(1)}), r"tensor '99.x' belongs to no layer record"),
    "missing tensor": (lambda t: t.pop("3.out_scale"), r"layer 3 \(features.4\): tensor '3.out_scale' is missing"),
    "dtype": (lambda t: t.update({"3.scales": t["3.scales"].double()}),
              r"tensor '3.scales' has torch.float64 \[3\], expected torch.float32 \[3\]"),
    "scales shape": (lambda t: t.update({"3.scales": torch.ones(3, 16)}), r"'3.scales' has torch.float32 \[3, 16\]"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES) + list(LAYER_CASES))
def test_resealed_header_edit_is_one_line(packed, rewrite, capsys, case, refused):
    edit, pattern = {**HEADER_CASES, **LAYER_CASES}[case]
    rewrite(packed, edit)
    refused(packed, pattern, capsys)


@pytest.mark.parametrize("case", list(TENSOR_CASES))
def test_resealed_tensor_edit_is_one_line(packed, rewrite, capsys, case, refused):
    edit, pattern = TENSOR_CASES[case]
    rewrite(packed, edit_tensors=edit)
    refused(packed, pattern, capsys)


@pytest.mark.parametrize("edit,pattern", [
    (_set("layers", 1, "dim", 3), r"layer 1 \(features.1\): dim: invalid value 3; allowed: 1 or 2"),
    (_set("layers", 1, "dim", True), r"layer 1 \(features.1\): dim: invalid value True"),
    (_set("layers", 1, "num_features", 0), r"num_features: invalid value 0"),
    (_set("layers", 1, "eps", 0.0), r"eps: invalid value 0.0; allowed: a finite number > 0"),
    (_set("layers", 1, "eps", NAN), r"eps: invalid value nan"),
    (_set("layers", 1, "momentum", 0.1), r"momentum: unknown field; allowed: op, name, dim, num_features, eps"),
])
def test_resealed_batch_norm_edit_is_one_line(unfolded, rewrite, capsys, edit, pattern, refused):
    assert read_packed(unfolded)[0]["layers"][1]["op"] == "batch_norm"
    rewrite(unfolded, edit)
    refused(unfolded, pattern, capsys)


def test_negative_batch_norm_variance(unfolded, rewrite, capsys, refused):
    rewrite(unfolded, edit_tensors=lambda t: t["1.running_var"].__setitem__(0, -1.0))
    refused(unfolded, r"layer 1 \(features.1\): tensor '1.running_var': invalid values \(negative\)", capsys)


AVG_POOL = {"kernel_size": 2, "stride": 2, "padding": 0, "ceil_mode": False, "count_include_pad": True,
            "divisor_override": None}


def test_avg_pool_attrs(packed, rewrite, capsys, refused):
    rewrite(packed, lambda h: h["layers"][2].update(op="avg_pool2d", attrs=dict(AVG_POOL)))
    assert load(packed)(torch.zeros(1, 1, 12, 12)).shape == (1, 10)  # a valid avg pool loads
    for key, value, pattern in [("divisor_override", 0, "attrs.divisor_override: invalid value 0"),
                                ("count_include_pad", 1, "attrs.count_include_pad: invalid value 1"),
                                ("dilation", 1, "attrs.dilation: unknown field")]:
        rewrite(packed, _set("layers", 2, "attrs", {**AVG_POOL, key: value}))
        refused(packed, pattern, capsys)


@pytest.mark.parametrize("edit,what", [
    (_set("layers", 9, "geometry", "padding", [2, 2]), "a conv's padding"),
    (_set("layers", 1, "attrs", "min_val", NAN), "hardtanh min_val -> NaN"),
    (_set("layers", 9, "geometry", "stride", [2, 2]), "the classifier's stride"),
    (_set("layers", 2, "attrs", "dilation", 2), "a max-pool's dilation"),
])
def test_unsealed_edits_from_the_issue_are_refused_by_the_digest(packed, rewrite, capsys, edit, what, refused):
    rewrite(packed, edit, reseal=False)
    refused(packed, r"is corrupt or was edited \(header digest mismatch\)", capsys)


def test_version_1_files_say_how_to_recreate_them(packed, rewrite, capsys, refused):
    rewrite(packed, lambda h: (h.update(version=1), h.pop("header_sha256")), reseal=False)  # as version 1 wrote it
    refused(packed, r"has no header_sha256: it was written by an older hbnn .*`hbnn export RUN --out FILE`", capsys)


def test_valid_files_load_unchanged(packed, rewrite):
    x = torch.randn(8, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    before = load(packed)(x)
    rewrite(packed)  # resealed without an edit: still valid, same outputs
    assert torch.equal(load(packed)(x), before)
    assert storage_report(packed)["model"]["file_bytes"] == packed.stat().st_size


def test_every_stateless_op_has_an_attribute_check():
    assert set(_ATTRS) == set(SIMPLE_OPS)


def test_export_refuses_non_finite_parameters(tmp_path, make_fc4):
    model = make_fc4({"weight": 1, "act": 1})
    with torch.no_grad():
        model.classifier.weight[0, 0, 0, 0] = math.inf
    with pytest.raises(FormatError, match=r"export of CifarFC4: layer 9 \(classifier\): tensor '9.weight': invalid"):
        export_model(model, tmp_path / "inf.hbnn", input_shape=[1, 12, 12])
    assert not list(tmp_path.iterdir())  # nothing written


_NASTY = (None, True, -1, 2 ** 70, NAN, "x", [], {})
#: One layer of each kind: hardtanh, max pool, binarized conv (planes, act), adaptive pool, flatten.
_MUTATED_LAYERS = (1, 2, 3, 10, 11)


def _leaves(obj, path=()):
    """Paths of every field and every object or list of fields below ``obj`` (numeric lists whole)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list) and obj and not all(isinstance(v, (int, float)) for v in obj):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    if path:
        yield path


def test_no_mutation_of_any_field_escapes_as_another_error(packed, rewrite, tmp_path):
    """Each header field (all top-level ones, every field of one layer of each kind) replaced
    by each of a set of nasty values: the file is refused with one FormatError line, or it
    loads, runs and reports; no other exception escapes."""
    header = read_packed(packed)[0]
    header = {k: v for k, v in header.items() if k not in ("payload_sha256", "header_sha256")}
    header["layers"] = {i: header["layers"][i] for i in _MUTATED_LAYERS}
    x = torch.zeros(1, 1, 12, 12)
    refused = 0
    for path in _leaves(header):
        for value in _NASTY:
            target = Path(shutil.copyfile(packed, tmp_path / "mut.hbnn"))
            rewrite(target, _set(*path, json.loads(json.dumps(value))))
            try:
                load(target)(x)
                storage_report(target)
            except FormatError as exc:
                assert "\n" not in str(exc)
                refused += 1
    assert refused > 400


# ----------------------------------------------------------------------------- issue 12 (K1b)

CONFIG = {"name": "cifar_fc4", "activation": "hardtanh", "kwargs": {"widths": [8, 16, 24]}}
QUANT = {"default": {"weight": {"bits": 1.4}, "act": {"bits": 1.4}}}
DATA = {"name": "fashion_mnist", "data_dir": "data", "image_size": None}

FLOAT_CASES = {  # hardtanh bounds and batch-norm eps are floats the engine holds in float32
    "min_val int huge": (_set("layers", 1, "attrs", "min_val", -(2 ** 63)), r"attrs.min_val: invalid value -92233"),
    "max_val int huge": (_set("layers", 1, "attrs", "max_val", 2 ** 63), r"attrs.max_val: invalid value 92233"),
    "max_val 1e308": (_set("layers", 1, "attrs", "max_val", 1e308), r"attrs.max_val: invalid value 1e\+308; allowed: "
                                                                     r"a finite number \(a float, \|x\| <= 3.403e\+38\)"),
    "max_val 10**30": (_set("layers", 1, "attrs", "max_val", 10 ** 30), r"attrs.max_val: invalid value 10000"),
    "max_val int": (_set("layers", 1, "attrs", "max_val", 1), r"attrs.max_val: invalid value 1; allowed: a finite"),
    "bounds equal in float32": (_set("layers", 1, "attrs", "max_val", -1.0 + 1e-12),
                                r"attrs.max_val: .*> min_val \(-1\) in float32"),
}

SHAPE_CASES = {  # resealed edits the field checks accept but the shape propagation does not
    "flatten start_dim +1": (_set("layers", 11, "attrs", "start_dim", 2),
                             r"layer 11 \(flatten\): the output is \[N, 10, 1\]; a packed model outputs \[N, K\]"),
    "flatten start_dim 0": (_set("layers", 11, "attrs", "start_dim", 0),
                            r"layer 11 \(flatten\): shapes do not chain on input_shape \[1, 12, 12\]: its input is "
                            r"\[N, 10, 1, 1\], it needs start_dim >= 1 \(it would merge the batch dimension\)"),
    "pool window larger than input": (_set("layers", 8, "attrs", "kernel_size", 4),
                                      r"layer 8 \(features.11\): .*its input is \[N, 24, 3, 3\], it needs its pooling "
                                      r"window spans 4 but the padded input side is 3"),
    "conv channels": ((lambda h: h["layers"][9]["geometry"].update(in_channels=48, groups=2)),  # same weight shape
                      r"layer 9 \(classifier\): .*its input is \[N, 24, 1, 1\], it needs 48 input channels"),
    "conv dilation": (_set("layers", 9, "geometry", "dilation", [5, 5]), r"layer 9 \(classifier\): .*dilated kernel "
                                                                        r"window spans 11 but the padded input side is 3"),
    "output not logits": (lambda h: h["layers"].__setitem__(11, {"op": "identity", "name": "flatten", "attrs": {},
                                                                "inputs": h["layers"][11]["inputs"]}),
                          r"layer 11 \(flatten\): the output is \[N, 10, 1, 1\]; a packed model outputs \[N, K\]"),
    "num_classes": (_set("model", "num_classes", 9), r"layer 11 \(flatten\): the output is \[N, 10\]; the model "
                                                     r"records num_classes 9"),
}

PROVENANCE_CASES = {  # model.config / model.quant / meta.data / meta.source
    "config null": (_set("model", "config", None), r"model.config: invalid value None; allowed: an object with keys "
                                                   r"name, activation, kwargs"),
    "config string": (_set("model", "config", "cifar_fc4"), r"model.config: invalid value 'cifar_fc4'"),
    "config bool": (_set("model", "config", True), r"model.config: invalid value True"),
    "config missing key": (_set("model", "config", {"name": "cifar_fc4", "kwargs": {}}),
                           r"model.config.activation: missing"),
    "config activation": (_set("model", "config", {**CONFIG, "activation": "gelu"}), r"model.config.activation"),
    "config kwargs null": (_set("model", "config", {**CONFIG, "kwargs": None}), r"model.config.kwargs"),
    "config widths bool": (_set("model", "config", {**CONFIG, "kwargs": {"widths": [True, 16, 24]}}),
                           r"model.config.kwargs.widths: invalid value \[True, 16, 24\]; allowed: a value like the "
                           r"default"),
    "config widths string": (_set("model", "config", {**CONFIG, "kwargs": {"widths": "8"}}),
                             r"model.config.kwargs.widths: invalid value '8'"),
    "config unknown option": (_set("model", "config", {**CONFIG, "kwargs": {"depth": 3}}),
                              r"model.config.kwargs.depth: unknown option of model 'cifar_fc4'; allowed: "),
    "config unknown model": (_set("model", "config", {**CONFIG, "name": "resnet"}), r"unknown model 'resnet'"),
    "config name vs model": (_set("model", "config", {**CONFIG, "name": "vgg8_cnv", "kwargs": {}}),
                             r"model.config.name: invalid value 'vgg8_cnv'; allowed: 'cifar_fc4', the model's name"),
    "quant string": (_set("model", "quant", "w1a1"), r"model.quant: invalid value 'w1a1'; allowed: null or an object"),
    "quant bool": (_set("model", "quant", True), r"model.quant: invalid value True"),
    "quant act string": (_set("model", "quant", {"default": {"act": "x"}}), r"model.quant: mix: cannot parse 'x'"),
    "quant unknown key": (_set("model", "quant", {**QUANT, "depth": 1}), r"model.quant.depth"),
    "data missing key": (_set("meta", "data", {"name": "fashion_mnist", "image_size": None}),
                         r"meta.data.data_dir: missing"),
    "data_dir int": (_set("meta", "data", {**DATA, "data_dir": 3}), r"meta.data.data_dir: invalid value 3; allowed: "
                                                                     r"null or a string"),
    "data name null": (_set("meta", "data", {**DATA, "name": None}), r"meta.data.name: invalid value None"),
    "source missing step": (_set("meta", "source", {k: v for k, v in SOURCE.items() if k != "step"}),
                            r"meta.source.step: missing"),
    "source step negative": (_set("meta", "source", {**SOURCE, "step": -1}), r"meta.source.step: invalid value -1"),
    "source epoch bool": (_set("meta", "source", {**SOURCE, "epoch": True}), r"meta.source.epoch: invalid value True"),
    "source sha256": (_set("meta", "source", {**SOURCE, "sha256": [1]}), r"meta.source.sha256: invalid value \[1\]"),
    "source metrics": (_set("meta", "source", {**SOURCE, "metrics": {"top1": "x"}}), r"meta.source.metrics: invalid"),
}


@pytest.mark.parametrize("case", list(FLOAT_CASES) + list(SHAPE_CASES) + list(PROVENANCE_CASES))
def test_issue12_resealed_edit_is_one_line(packed, rewrite, capsys, case, refused):
    edit, pattern = {**FLOAT_CASES, **SHAPE_CASES, **PROVENANCE_CASES}[case]
    rewrite(packed, edit)
    refused(packed, pattern, capsys)


@pytest.mark.parametrize("eps,pattern", [
    (2 ** 63, r"eps: invalid value 9223372036854775808; allowed: a finite number"),
    (1, r"eps: invalid value 1; allowed: a finite number"),
    (1e-300, r"eps: invalid value 1e-300; allowed: a finite number > 0 \(at least 1.175e-38"),
])
def test_batch_norm_eps_is_a_float32(unfolded, rewrite, capsys, eps, pattern, refused):
    rewrite(unfolded, _set("layers", 1, "eps", eps))
    refused(unfolded, pattern, capsys)


def test_valid_provenance_records_load(packed, rewrite):
    """The records ``hbnn export`` writes (config, quant, data, source) are accepted."""
    rewrite(packed, lambda h: (h["model"].update(config=CONFIG, quant=QUANT), h["meta"].update(data=DATA,
                                                                                                source=SOURCE)))
    assert load(packed)(torch.zeros(2, 1, 12, 12)).shape == (2, 10)


def test_wrong_input_shape_is_one_line(packed):
    model = load(packed)
    assert model.input_shape == (1, 12, 12)
    for x in (torch.zeros(2, 1, 28, 28), torch.zeros(1, 12, 12), torch.zeros(2, 3, 12, 12)):
        with pytest.raises(ValueError, match=re.escape(f"packed model: input of shape {list(x.shape)}; expected "
                                                       "[N, 1, 12, 12] (a batch of the file's input_shape")) as exc:
            model(x)
        assert "\n" not in str(exc.value)


def test_infer_on_a_dataset_of_another_shape_is_one_line(packed_run, tmp_path, rewrite, capsys):
    path = Path(shutil.copyfile(packed_run, tmp_path / "m.hbnn"))
    rewrite(path, lambda h: (h.update(input_shape=[1, 14, 14]), h["model"].update(image_size=14)))  # still chains
    assert main(["infer", str(path), "--limit", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "fashion_mnist gives images of shape [1, 28, 28]; the packed model takes [1, 14, 14]" in err, err


def test_export_always_records_input_shape_and_model_name(tmp_path, make_fc4):
    model = make_fc4({"weight": 1, "act": 1})
    with pytest.raises(FormatError, match=r"export of CifarFC4: input_shape: unknown; pass input_shape=\[C, H, W\]"):
        export_model(model, tmp_path / "m.hbnn")
    assert not list(tmp_path.iterdir())
    export_model(model, tmp_path / "m.hbnn", input_shape=[1, 12, 12])
    header = read_packed(tmp_path / "m.hbnn")[0]
    assert header["model"] == {"name": "CifarFC4"} and header["input_shape"] == [1, 12, 12]
    linear = torch.nn.Sequential(torch.nn.Linear(20, 4))
    export_model(linear, tmp_path / "l.hbnn")  # a leading linear layer gives the shape
    assert read_packed(tmp_path / "l.hbnn")[0]["input_shape"] == [20]


def test_export_refuses_a_chain_whose_shapes_do_not_meet(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 10 * 10, 10))
    with pytest.raises(FormatError, match=r"layer 2 \(2\): shapes do not chain on input_shape \[1, 11, 11\]: its "
                                          r"input is \[N, 324\], it needs 400 input features"):
        export_model(model, tmp_path / "m.hbnn", input_shape=[1, 11, 11])
    export_model(model, tmp_path / "m.hbnn", input_shape=[1, 12, 12])
