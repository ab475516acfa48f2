"""``hbnn hw estimate --run`` / ``--packed`` on a tiny trained run: models rebuilt by hbnn.train and hbnn.export."""

from __future__ import annotations

import json

import pytest

from hbnn.cli import main
from hbnn.export import export_model, model_from_packed, packed_input_shape

W14 = {"weight": {"bits": 1.4}, "act": {"bits": 1.4}}


def estimate(capsys, *argv) -> dict:
    assert main(["hw", "estimate", *argv, "--per-layer", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_and_packed_estimates_agree(trained_run, packed_run, capsys):
    run = estimate(capsys, "--run", str(trained_run), "--platform", "zc706")
    packed = estimate(capsys, "--packed", str(packed_run), "--platform", "zc706")
    assert run["estimate"] is True and packed["estimate"] is True
    assert [p["platform"] for p in packed["platforms"]] == ["zc706"]
    keys = ("name", "kind", "rows", "cols", "pixels", "wbits", "quantized")
    assert [{k: r[k] for k in keys} for r in packed["layers"]] == [{k: r[k] for k in keys} for r in run["layers"]]
    assert packed["network"]["macs"] == run["network"]["macs"] > 0
    binarized = [r for r in packed["layers"] if r["quantized"]]
    assert len(binarized) == 2  # first and last layer stay float
    for row in binarized:
        assert row["wbits"] == pytest.approx(1.4, abs=0.01)
        assert row["abits"] == pytest.approx(1.4)  # nominal: packed files keep no running estimate


def test_packed_file_rebuilds_the_source_architecture(packed_run):
    model, header = model_from_packed(packed_run)
    assert packed_input_shape(header) == (1, 28, 28) and not model.training
    quantized = [n for n, m in model.named_modules() if getattr(m, "weight_quantizer", None) is not None]
    assert quantized == ["features.4", "features.8"]


def test_packed_without_source_model_is_one_line(tmp_path, make_fc4, meta, capsys):
    path = tmp_path / "bare.hbnn"
    export_model(make_fc4(W14), path, meta=meta)  # name and shape, but no config
    assert main(["hw", "estimate", "--packed", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not record its source model" in err


def test_packed_header_that_disagrees_with_its_records(tmp_path, make_fc4, meta, capsys):
    path = tmp_path / "liar.hbnn"
    meta["model"].update(config={"name": "cifar_fc4", "activation": "hardtanh", "kwargs": {"widths": [8, 16, 24]}},
                         quant=None)  # says float, but the layers are binarized
    export_model(make_fc4(W14), path, meta=meta)
    assert main(["hw", "estimate", "--packed", str(path)]) == 2
    err = capsys.readouterr().err
    assert "does not match the source model" in err and "binarized in one and float in the other" in err


@pytest.mark.parametrize("edit,problem", [
    (lambda h: h["layers"][0]["geometry"].update(stride=[2, 2]),
     r"layer 'features.0' has geometry .*'stride': \[2, 2\]"),
    (lambda h: h["layers"][3]["weight"].update(fractions=[0.6, 0.3, 0.1]),
     r"layer 'features.4' has weight bit mix \[1, 2, 3\]/\[0.6, 0.3, 0.1\] in one"),
    (lambda h: h["layers"][3]["act"].update(fractions=[0.5, 0.4, 0.1]), r"has input bit mix \[1, 2, 3\]/\[0.5, 0.4"),
])
def test_packed_records_that_disagree_with_the_rebuilt_model(packed_run, tmp_path, rewrite, capsys, edit, problem):
    """A valid (resealed) record whose geometry or bit mix differs from the recorded source model
    is refused: the estimate would cost a model other than the file's."""
    import re
    import shutil

    path = shutil.copyfile(packed_run, tmp_path / "edited.hbnn")
    rewrite(path, edit)
    assert main(["hw", "estimate", "--packed", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match the source model in its header" in err and re.search(problem, err)
