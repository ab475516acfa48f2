"""Experiment points with structured bit maps: structure/allocate/act_structure -> QuantSpec, and
every committed result line keeps the config hash it was recorded with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hbnn.errors import ConfigError
from hbnn.experiments.kinds import expand
from hbnn.experiments.spec import Layout, Point, load_experiment, point_quant
from hbnn.quant import QuantSpec

REPO = Path(__file__).resolve().parents[2]
LAYOUT = Layout.from_dict({"keep_first": True, "keep_last": True})


def _committed_lines() -> dict[str, list[dict]]:
    """``{experiment: lines}`` of every ``results/<experiment>.jsonl`` whose lines name that experiment."""
    out: dict[str, list[dict]] = {}
    for path in sorted((REPO / "results").glob("*.jsonl")):
        if not (REPO / "configs" / "experiments" / f"{path.stem}.yaml").is_file():
            continue  # e.g. pilot-attempt1.jsonl: an earlier scale, kept for the record
        lines = [json.loads(t) for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
        lines = [line for line in lines if line.get("experiment") == path.stem and "config_sha" in line]
        if lines:
            out[path.stem] = lines
    return out


def test_committed_result_lines_keep_their_config_hash(monkeypatch):
    """Points written without the structure keys expand to the config (and hash) recorded for them."""
    monkeypatch.chdir(REPO)
    committed = _committed_lines()
    assert {"fig2b", "table1", "block", "pilot"} <= set(committed)
    checked = 0
    for name, lines in committed.items():
        seeds = sorted({line["seed"] for line in lines})
        shas = {r.name: r.sha for r in expand(load_experiment(name), seeds=seeds)}
        for line in lines:
            assert shas.get(line["run"]) == line["config_sha"], f"{name}: {line['run']} changed its config hash"
            checked += 1
    assert checked >= 300


def test_defaults_give_the_quant_section_of_a_point_without_the_keys():
    plain = Point.from_dict({"name": "p", "weight": 1.4, "act": 1.4})
    spelled = Point.from_dict({"name": "p", "weight": 1.4, "act": 1.4, "structure": "entry", "allocate": "key",
                               "act_structure": "entry"})
    a, b = point_quant(plain, LAYOUT, 3), point_quant(spelled, LAYOUT, 3)
    assert a == b and a.to_dict() == b.to_dict()
    assert "structure" not in a.to_dict()["default"]["weight"] and "allocate" not in a.to_dict()["default"]["act"]


def test_structure_fields_become_the_weight_and_act_specs():
    point = Point.from_dict({"name": "p", "weight": 1.4, "act": 1.4, "structure": "block64", "allocate": "error",
                             "act_structure": "group64"})
    q = point_quant(point, LAYOUT, 5)
    assert q.default.weight == QuantSpec(bits=1.4, structure="block64", allocate="error")
    assert q.default.act == QuantSpec(bits=1.4, structure="group64")
    assert q.keep_first and q.keep_last and q.rules == {}
    d = q.to_dict()["default"]
    assert (d["weight"]["structure"], d["weight"]["allocate"], d["act"]["structure"]) == ("block64", "error", "group64")
    only_w = point_quant(Point.from_dict({"name": "w", "weight": 1.4, "structure": "channel"}), LAYOUT, 0)
    assert only_w.default.weight == QuantSpec(bits=1.4, structure="channel") and only_w.default.act is None


def test_structured_points_get_their_own_config_hash(write_experiment):
    points = [{"name": "entry", "weight": 1.4}, {"name": "ch", "weight": 1.4, "structure": "channel"},
              {"name": "ch_err", "weight": 1.4, "structure": "channel", "allocate": "error"},
              {"name": "wa", "weight": 1.4, "act": 1.4}, {"name": "wa_px", "weight": 1.4, "act": 1.4,
                                                          "act_structure": "pixel"}]
    runs = expand(load_experiment(write_experiment("tiny", points)))
    assert len({r.sha for r in runs}) == len(runs)
    assert runs[1].spec == {"name": "ch", "weight": 1.4, "structure": "channel"}  # the point as written
    assert runs[4].config["quant"]["default"]["act"]["structure"] == "pixel"


@pytest.mark.parametrize("point, message", [
    ({"name": "p", "structure": "channel"}, "structure: invalid value 'channel'"),
    ({"name": "p", "allocate": "error"}, "allocate: invalid value 'error'"),
    ({"name": "p", "weight": 1, "act_structure": "pixel"}, "act_structure: invalid value 'pixel'"),
    ({"name": "p", "layer_bits": 1.4, "structure": "block8"}, "structure"),
])
def test_structure_keys_need_the_tensor_they_describe(point, message):
    with pytest.raises(ConfigError, match=message):
        Point.from_dict(point)


@pytest.mark.parametrize("point, message", [
    ({"name": "p", "weight": 1.4, "structure": "pixel"}, "tiny/p: weight.structure"),
    ({"name": "p", "weight": 1.4, "act": 1.4, "act_structure": "channel"}, "tiny/p: act.structure"),
    ({"name": "p", "weight": 1.4, "structure": "block8", "block": 4}, "tiny/p: block"),
    ({"name": "p", "weight": 1.4, "heuristic": "random", "allocate": "error"}, "tiny/p: heuristic"),
    ({"name": "p", "weight": 1.4, "structure": "blocky"}, "tiny/p: structure"),
])
def test_bad_structures_are_one_line_errors_naming_the_run(write_experiment, point, message):
    with pytest.raises(ConfigError, match=message):
        expand(load_experiment(write_experiment("tiny", [point])))


def test_structure_experiment_fits_every_binarized_layer(monkeypatch):
    """Every point of configs/experiments/structure.yaml converts: block64 / group64 fit both binarized
    convs of cifar_fc4 64-128-256 (rows of 576 and 1152 inputs, 64 and 128 input channels), the image
    conv and the classifier stay float (the forward pass of every config: tests/experiments/test_spec.py)."""
    from hbnn.experiments.layerwise import config_shape
    from hbnn.train.config import config_from_dict
    from hbnn.train.rebuild import build_model_for

    monkeypatch.chdir(REPO)
    runs = expand(load_experiment("structure"), seeds=[0])
    assert len(runs) == 15 and len(expand(load_experiment("structure"))) == 45
    for run in runs:
        cfg = config_from_dict(run.config)
        model, report = build_model_for(cfg.model, config_shape(run.config["data"]), cfg.quant)
        if run.point == "fp":
            assert report is None
            continue
        assert not report.unmatched_rules and not report.unsupported, run.name
        assert set(report.converted) == {"features.4", "features.8"}, run.name
        assert {"features.0", "classifier"} <= set(report.kept_float), run.name
        spec = run.spec
        for layer in report.converted.values():
            assert (layer.weight.structure, layer.weight.allocate) == (spec.get("structure", "entry"),
                                                                       spec.get("allocate", "key")), run.name
            assert (layer.act is None) == ("act" not in spec), run.name
            assert layer.act is None or layer.act.structure == spec.get("act_structure", "entry"), run.name
