"""Fig. 2a: approximation error of (heterogeneous) residual binarization, no training.

For a seeded N(0, 1) tensor ``x`` of ``n`` entries and each point, the score is the
normalized Euclidean distance ``||x - x_hat|| / ||x||`` with

* homogeneous ``b`` bits: ``x_hat = residual_binarize(x, b)`` (Eq. 4);
* heuristic ``h`` at a paper average ``B``: ``x_hat = hetero_binarize(x, make_bitmap(x,
  BitMix.from_average(B), h))`` (Algorithm 1 + Eq. 5); the random heuristic's permutation
  is seeded with the same seed.

Experiment keys (``configs/experiments/fig2a.yaml``)::

    kind: fig2a
    tensor: {n: 1000000, distribution: normal}
    heuristics: [middle_out, bottom_up, top_down, random]
    mixes: [1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9]
    homogeneous: [1, 2, 3, 4]
    seeds: [0]

``--set n=200000`` (keys of ``tensor``) overrides the tensor. Points are named
``homogeneous-<b>`` and ``<heuristic>-<B>``.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

from hbnn.errors import ConfigError
from hbnn.experiments.paper import FIG2A_AVERAGES, fig2a_paper
from hbnn.experiments.spec import Experiment, RunSpec, config_sha

__all__ = ["expand_fig2a", "approximation_error", "run_fig2a", "fig2a_detail"]

_TENSOR_KEYS = ("n", "distribution")


def _tensor_settings(exp: Experiment, overrides: Iterable[str]) -> dict:
    import yaml

    tensor = {"n": 1_000_000, "distribution": "normal", **exp.tensor}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("tensor.")
        if not sep or key not in _TENSOR_KEYS:
            raise ConfigError(f"--set {item!r}: fig2a accepts only {', '.join(_TENSOR_KEYS)}=VALUE")
        tensor[key] = yaml.safe_load(text)
    n = tensor["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise ConfigError(f"tensor.n: {n!r} is invalid; expected an integer >= 10")
    if tensor["distribution"] != "normal":
        raise ConfigError(f"tensor.distribution: {tensor['distribution']!r} is not allowed; choose normal")
    return tensor


def _mix_label(average: float) -> str:
    from hbnn.quant import BitMix

    mix = BitMix.from_average(average)
    parts = dict(zip(mix.bits, mix.fractions))
    return "/".join(f"{round(parts.get(b, 0.0) * 100):d}" for b in range(1, mix.max_bits + 1))


def _run(exp: Experiment, point: str, seed: int, config: dict, spec: dict) -> RunSpec:
    return RunSpec(experiment=exp.name, point=point, seed=seed, config=config, sha=config_sha(config),
                   spec=spec, figure=exp.figure, kind="fig2a")


def expand_fig2a(exp: Experiment, *, seeds: Iterable[int] | None = None, overrides: Iterable[str] = ()) -> list[RunSpec]:
    """The runs of a fig2a experiment: homogeneous points, then heuristic x average points."""
    from hbnn.quant import BitMix
    from hbnn.quant.checks import HEURISTICS

    tensor = _tensor_settings(exp, overrides)
    heuristics = list(HEURISTICS if exp.heuristics is None else exp.heuristics)
    bad = [h for h in heuristics if h not in HEURISTICS]
    if bad:
        raise ConfigError(f"heuristics: {bad[0]!r} is not allowed; choose from {', '.join(HEURISTICS)}")
    averages = [float(a) for a in (FIG2A_AVERAGES if exp.mixes is None else exp.mixes)]
    homogeneous = [int(b) for b in ((1, 2, 3, 4) if exp.homogeneous is None else exp.homogeneous)]
    seed_list = list(seeds) if seeds is not None else list(exp.seeds)
    runs = []
    for seed in seed_list:
        base = {"distribution": tensor["distribution"], "n": tensor["n"], "seed": int(seed)}
        for bits in homogeneous:
            mix = BitMix.homogeneous(bits)
            spec = {"heuristic": None, "avg_bits": float(bits), "mix": f"{bits}-bit",
                    "paper": fig2a_paper(None, bits), "label": f"{bits} bit"}
            cfg = {**base, "heuristic": None, "bits": {str(b): p for b, p in mix.to_dict().items()}}
            runs.append(_run(exp, f"homogeneous-{bits}", int(seed), cfg, spec))
        for heuristic in heuristics:
            for avg in averages:
                mix = BitMix.from_average(avg)
                spec = {"heuristic": heuristic, "avg_bits": avg, "mix": _mix_label(avg),
                        "paper": fig2a_paper(heuristic, avg), "label": heuristic}
                cfg = {**base, "heuristic": heuristic, "bits": {str(b): p for b, p in mix.to_dict().items()}}
                runs.append(_run(exp, f"{heuristic}-{avg:g}", int(seed), cfg, spec))
    return runs


def _gaussian(n: int, seed: int):
    import torch

    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def approximation_error(x: Any, bits: Any, heuristic: str | None = None, seed: int = 0) -> float:
    """``||x - x_hat|| / ||x||`` for a mix (homogeneous: Eq. 4; otherwise Algorithm 1 + Eq. 5).

    Args:
        x: a float tensor.
        bits: anything :meth:`hbnn.BitMix.coerce` accepts.
        heuristic: Algorithm 1's heuristic (ignored for a homogeneous mix).
        seed: seeds the random heuristic's permutation.

    Example:
        >>> round(approximation_error(torch.randn(100000), 1), 2)   # doctest: +SKIP
        0.6
    """
    import torch

    from hbnn.quant import BitMix, hetero_binarize, make_bitmap, residual_binarize

    mix = BitMix.coerce(bits)
    with torch.no_grad():
        if mix.is_homogeneous:
            x_hat = residual_binarize(x, mix.bits[0])
        else:
            bitmap = make_bitmap(x, mix, heuristic or "middle_out", generator=torch.Generator().manual_seed(seed))
            x_hat = hetero_binarize(x, bitmap)
        return float((x - x_hat).norm() / x.norm())


def fig2a_detail(line: Mapping[str, Any]) -> str:
    """The short result text of a fig2a line (``error 0.1234``)."""
    return f"error {line.get('error', float('nan')):.4f}"


def run_fig2a(run: RunSpec, cache: dict | None = None) -> dict:
    """Compute one fig2a point; returns the line's measurement keys (error, paper, ...)."""
    cfg = run.config
    cache = {} if cache is None else cache
    key = (cfg["n"], cfg["seed"])
    if key not in cache:
        cache.clear()  # one tensor at a time
        cache[key] = _gaussian(cfg["n"], cfg["seed"])
    t0 = time.perf_counter()
    error = approximation_error(cache[key], cfg["bits"], cfg["heuristic"], cfg["seed"])
    return {"heuristic": cfg["heuristic"], "avg_bits": run.spec["avg_bits"], "mix": run.spec["mix"],
            "n": cfg["n"], "error": error, "paper": run.spec["paper"],
            "wall_s": time.perf_counter() - t0}
