"""A per-layer dataflow model in the style of FINN's matrix-vector units (beyond the paper).

Each weight layer (a ``rows x cols`` matrix at ``pixels`` positions, see
:mod:`hbnn.hw.profile`) gets its own unit of ``PE`` processing elements x ``SIMD``
lanes, all layers running concurrently as a pipeline (Umuroglu et al., FINN, 2017):

* folding constraint: ``PE`` divides ``rows`` and ``SIMD`` divides ``cols``;
* cycles per image of layer ``l``: ``(rows/PE) * (cols/SIMD) * pixels = MACs_l / (PE*SIMD)``;
* throughput: ``FPS = f_clk / max_l cycles_l`` — the slowest layer sets the pace;
* LUTs of layer ``l``: ``PE*SIMD * c_lane * m*n + PE * c_pe + c_layer`` with ``m, n`` its
  weight / activation bits (float layers at ``float_bits``), so a lane's cost grows with
  the bit product, like the ``m*n`` xnor-popcount passes of §4.5;
* power: proportional to LUTs in use, ``W = W0 * LUTs / LUTs0`` (the paper's
  assumption too, so the two models differ only in throughput and area);
* folding: greedy — repeatedly give the slowest layer its next larger ``SIMD`` or ``PE``
  (whichever saves more cycles per added LUT) while the total fits the LUT budget. The sequence of
  steps does not depend on the budget, so a larger budget never lowers throughput.

Constants and their sources are in ``docs/hardware.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

from hbnn.errors import ConfigError
from hbnn.hw.platforms import DataflowConstants, Platform
from hbnn.hw.profile import LayerProfile
from hbnn.hw.validate import FLOAT_BITS, check_fraction, check_positive

__all__ = [
    "LayerFold",
    "DataflowEstimate",
    "layer_luts",
    "fold_to_budget",
    "luts_for_kfps",
    "dataflow_estimate",
    "calibrate_lut_per_lane",
]


@dataclass(frozen=True)
class LayerFold:
    """A layer folded onto ``pe x simd`` lanes."""

    layer: LayerProfile
    pe: int = 1
    simd: int = 1

    @property
    def cycles(self) -> int:
        """Cycles per image: ``(rows/PE) * (cols/SIMD) * pixels``."""
        return (self.layer.rows // self.pe) * (self.layer.cols // self.simd) * self.layer.pixels

    def to_dict(self, constants: DataflowConstants) -> dict[str, Any]:
        """Name, shape, folding, cycles and LUTs of the layer."""
        layer = self.layer
        shape = {k: getattr(layer, k) for k in ("name", "rows", "cols", "pixels", "wbits", "abits")}
        return {**shape, "pe": self.pe, "simd": self.simd, "cycles": self.cycles, "luts": layer_luts(self, constants)}


def _cost_bits(bits: float, constants: DataflowConstants) -> float:
    return constants.float_bits if bits >= FLOAT_BITS else bits


def layer_luts(fold: LayerFold, constants: DataflowConstants) -> float:
    """``PE*SIMD * lut_per_lane * m*n + PE * lut_per_pe + lut_per_layer`` LUTs."""
    mn = _cost_bits(fold.layer.wbits, constants) * _cost_bits(fold.layer.abits, constants)
    lanes = fold.pe * fold.simd
    return lanes * constants.lut_per_lane * mn + fold.pe * constants.lut_per_pe + constants.lut_per_layer


def _next_divisor(n: int, current: int) -> int | None:
    """Smallest divisor of ``n`` above ``current`` (None when ``current == n``)."""
    return next((d for d in range(current + 1, n + 1) if n % d == 0), None)


def _next_fold(fold: LayerFold, constants: DataflowConstants) -> LayerFold | None:
    """The next step for one layer: more SIMD or more PE, whichever saves more cycles per LUT.

    Ties go to the step leaving fewer cycles, then to SIMD. None when fully unfolded.
    """
    options = []
    simd = _next_divisor(fold.layer.cols, fold.simd)
    if simd is not None:
        options.append(replace(fold, simd=simd))
    pe = _next_divisor(fold.layer.rows, fold.pe)
    if pe is not None:
        options.append(replace(fold, pe=pe))
    if not options:
        return None
    now, luts = fold.cycles, layer_luts(fold, constants)
    return max(options, key=lambda f: ((now - f.cycles) / (layer_luts(f, constants) - luts), -f.cycles))


def _greedy(layers: Sequence[LayerProfile], constants: DataflowConstants) -> Iterator[tuple[list[LayerFold], float]]:
    """Yield ``(folds, total LUTs)`` from all-``1x1`` onward, one step on the slowest layer at a time."""
    folds = [LayerFold(layer) for layer in layers]
    total = sum(layer_luts(f, constants) for f in folds)
    yield folds, total
    while True:
        i = max(range(len(folds)), key=lambda j: folds[j].cycles)  # first slowest layer
        step = _next_fold(folds[i], constants)
        if step is None:
            return
        total += layer_luts(step, constants) - layer_luts(folds[i], constants)
        folds = [*folds[:i], step, *folds[i + 1 :]]
        yield folds, total


def _check_layers(layers: Sequence[LayerProfile]) -> None:
    if not layers:
        raise ConfigError("layers: the model has no nn.Conv2d or nn.Linear layer to cost")


def fold_to_budget(
    layers: Sequence[LayerProfile], constants: DataflowConstants, lut_budget: float
) -> tuple[list[LayerFold], float] | None:
    """The greedy folding that fits ``lut_budget`` LUTs, or None if even ``1x1`` does not fit.

    Returns:
        ``(folds, luts)`` — the last greedy state whose total is within the budget.
    """
    _check_layers(layers)
    best = None
    for folds, total in _greedy(layers, constants):
        if total > lut_budget:
            break
        best = (folds, total)
    return best


def luts_for_kfps(
    layers: Sequence[LayerProfile], constants: DataflowConstants, clock_mhz: float, kfps: float
) -> float | None:
    """LUTs the greedy folding needs to reach ``kfps`` (None if unreachable at this clock)."""
    _check_layers(layers)
    max_cycles = clock_mhz * 1e3 / check_positive(kfps, "kfps")
    for folds, total in _greedy(layers, constants):
        if max(f.cycles for f in folds) <= max_cycles:
            return total
    return None


@dataclass(frozen=True)
class DataflowEstimate:
    """Result of the dataflow model on one FPGA (an estimate, not a measurement)."""

    platform: str
    kfps: float
    watts: float
    occupancy: float
    luts: float
    lut_budget: float
    bottleneck: str
    cycles: int
    folds: tuple[LayerFold, ...]
    constants: DataflowConstants
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def energy_per_image_j(self) -> float:
        """Joules per image: ``W / (kFPS * 1000)``."""
        return self.watts / (self.kfps * 1e3)

    def to_dict(self, layers: bool = False) -> dict[str, Any]:
        """JSON-ready summary (``layers=True`` adds the per-layer folding)."""
        keys = ("platform", "kfps", "watts", "occupancy", "luts", "lut_budget", "bottleneck", "cycles")
        out = {"model": "dataflow", "kind": "fpga", **{k: getattr(self, k) for k in keys}}
        out.update(energy_per_image_j=self.energy_per_image_j, notes=list(self.notes))
        if layers:
            out["layers"] = [f.to_dict(self.constants) for f in self.folds]
        return out


def _require_dataflow(platform: Platform) -> DataflowConstants:
    if platform.kind != "fpga" or platform.dataflow is None:
        raise ConfigError(f"platform: {platform.name!r} has no dataflow constants (an FPGA with a 'dataflow' entry is needed)")
    return platform.dataflow


def dataflow_estimate(platform: Platform, layers: Sequence[LayerProfile], *, lut_budget: float = 1.0) -> DataflowEstimate:
    """Fold ``layers`` onto ``platform`` within ``lut_budget`` (a fraction of its LUTs).

    Raises:
        ConfigError: no dataflow constants, a budget outside (0, 1], or a network that does
            not fit even fully folded (``PE = SIMD = 1`` everywhere).
    """
    constants = _require_dataflow(platform)
    budget = check_fraction(lut_budget, "lut_budget") * platform.device_luts
    result = fold_to_budget(layers, constants, budget)
    if result is None:
        need = sum(layer_luts(LayerFold(layer), constants) for layer in layers)
        raise ConfigError(
            f"lut_budget: the network needs {need:.0f} LUTs even fully folded, over the budget of "
            f"{budget:.0f} ({lut_budget:g} of {platform.name}'s {platform.device_luts} LUTs)"
        )
    folds, luts = result
    slowest = max(folds, key=lambda f: f.cycles)
    occupancy = luts / platform.device_luts
    base = platform.baseline
    notes = []
    if _next_fold(slowest, constants) is None:
        notes.append(f"layer {slowest.layer.name} is fully unfolded: more LUTs cannot raise throughput")
    return DataflowEstimate(
        platform=platform.name,
        kfps=platform.clock_mhz * 1e3 / slowest.cycles,
        watts=base.watts * occupancy / base.occupancy,
        occupancy=occupancy,
        luts=luts,
        lut_budget=budget,
        bottleneck=slowest.layer.name,
        cycles=slowest.cycles,
        folds=tuple(folds),
        constants=constants,
        notes=tuple(notes),
    )


def calibrate_lut_per_lane(platform: Platform, layers: Sequence[LayerProfile], *, iters: int = 40) -> float:
    """Largest ``lut_per_lane`` for which ``layers`` reach the baseline's kFPS in its LUTs.

    Bisection on ``c_lane`` (throughput at a fixed budget only falls as lanes get
    dearer); ``layers`` should be the baseline network at the baseline's bits. Used to
    derive the packaged constant (``docs/hardware.md``).
    """
    constants = _require_dataflow(platform)
    base = platform.baseline
    budget = base.occupancy * platform.device_luts
    target_cycles = platform.clock_mhz * 1e3 / base.kfps

    def reaches(c_lane: float) -> bool:
        result = fold_to_budget(layers, replace(constants, lut_per_lane=c_lane), budget)
        return result is not None and max(f.cycles for f in result[0]) <= target_cycles

    lo, hi = 0.0, 1024.0
    if not reaches(1e-9):
        raise ConfigError(f"platform: {platform.name!r} cannot reach its baseline kFPS even with free lanes")
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if reaches(mid) else (lo, mid)
    return lo
