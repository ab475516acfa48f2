"""Fixtures for the research-harness tests: synthetic result lines."""

from __future__ import annotations

import pytest


def _line(experiment: str, point: str, seed: int, top1: float, spec: dict, *, figure: str | None = None,
          weight_bits: float | None = None, act_bits: float = 32.0, sha: str = "x") -> dict:
    w = spec.get("weight")
    if weight_bits is None:
        weight_bits = 32.0 if w is None else float(w) if isinstance(w, (int, float)) else 1.4
    return {"schema": 1, "kind": "train", "experiment": experiment, "figure": figure or experiment,
            "point": point, "run": f"{experiment}/{point}/seed{seed}", "seed": seed, "spec": dict(spec),
            "config": {}, "config_sha": sha, "top1": top1, "top5": min(1.0, top1 + 0.05), "loss": 1.0,
            "weight_bits": weight_bits, "act_bits": act_bits}


@pytest.fixture
def make_lines():
    """``make_lines(experiment, {point: (spec, [top1 per seed])}, **kw)`` -> synthetic result lines.

    Accuracies are fractions (as fit reports them); ``spec`` may carry ``_bits`` to set the
    realized weight bits of that point.
    """

    def make(experiment: str, points: dict, **kw) -> list[dict]:
        out = []
        for name, (spec, values) in points.items():
            spec = dict(spec)
            bits = spec.pop("_bits", None)
            for seed, top1 in enumerate(values):
                out.append(_line(experiment, name, seed, top1, spec, weight_bits=bits, **kw))
        return out

    return make
