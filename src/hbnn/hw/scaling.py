"""The paper's scaling rules (§4, Table 2): every row follows from one measured baseline.

With ``b`` the network's bits, ``b0`` the baseline's bits and ``R`` the ratio of the
network's MACs to the baseline network's:

FPGA (``k``-fold unfolding; ``occ1`` the design's occupancy at ``b0``, the baseline's
unless a workload says otherwise):

    occ  = occ1 * (b / b0) * k
    kFPS = kFPS0 * k * b0 / (b * R)
    W    = W0 * occ / occ0                     (power proportional to LUTs in use)

capped at the device: when ``occ > 1`` the occupancy becomes 1 and the power is scaled
to the cap (``W / occ``); throughput is *not* reduced, exactly as in the paper's row 6
(73.0 kFPS at 4x, 1.2 bits) — the capped design really runs an effective unfolding of
``k / occ``, which the estimate reports.

ASIC (fixed throughput; area and power grow with the bit product, ``(b / 2)^2`` for the
2-bit baseline):

    area = area0 * (b / b0)^2 * R,   W = W0 * (b / b0)^2 * R,   kFPS = kFPS0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hbnn.errors import ConfigError
from hbnn.hw.platforms import Platform
from hbnn.hw.validate import check_bits, check_fraction, check_positive

__all__ = ["ScalingEstimate", "fpga_scaling", "asic_scaling", "scale"]


@dataclass(frozen=True)
class ScalingEstimate:
    """One estimate of the paper's scaling model (an estimate, not a measurement).

    ``occupancy`` (fraction of LUTs) is set for FPGAs, ``area_mm2`` for ASICs. When the
    requested unfolding does not fit, ``capped`` is True, ``requested_occupancy`` is the
    uncapped value and ``effective_unfolding = unfolding / requested_occupancy``.
    """

    platform: str
    kind: str
    bits: float
    kfps: float
    watts: float
    unfolding: float | None = None
    occupancy: float | None = None
    area_mm2: float | None = None
    capped: bool = False
    requested_occupancy: float | None = None
    effective_unfolding: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def energy_per_image_j(self) -> float:
        """Joules per image: ``W / (kFPS * 1000)``."""
        return self.watts / (self.kfps * 1e3)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``energy_per_image_j`` and ``model: "paper_scaling"``."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        return {"model": "paper_scaling", **out, "energy_per_image_j": self.energy_per_image_j}


def fpga_scaling(
    platform: Platform,
    bits: float,
    *,
    unfolding: float = 1,
    op_ratio: float = 1.0,
    occupancy: float | None = None,
) -> ScalingEstimate:
    """The paper's FPGA rule (module docstring): linear in bits, ``k``-fold unfolding, capped.

    Args:
        platform: an FPGA platform.
        bits: network bits ``b`` in [1, 8] (a mix's average allowed).
        unfolding: ``k > 0``, the parallelism relative to the baseline design.
        op_ratio: ``R``, network MACs over the baseline network's MACs.
        occupancy: ``occ1``, the design's occupancy at the baseline bits and ``k = 1``
            (default: the baseline's).

    Example:
        Row 5 of Table 2, VGG-8 at 1.4 bits: ``occ = 0.212 * 1.4 = 29.68 %``,
        ``kFPS = 21.9 / 1.4 = 15.64``, ``W = 3.6 * 1.4 = 5.04``.
    """
    if platform.kind != "fpga":
        raise ConfigError(f"platform: {platform.name!r} is an ASIC; use asic_scaling")
    base = platform.baseline
    b = check_bits(bits)
    k = check_positive(unfolding, "unfolding")
    ratio = check_positive(op_ratio, "op_ratio")
    occ1 = base.occupancy if occupancy is None else check_fraction(occupancy, "occupancy")
    occ = occ1 * (b / base.bits) * k
    kfps = base.kfps * k * base.bits / (b * ratio)
    watts = base.watts * occ / base.occupancy
    if occ <= 1:
        return ScalingEstimate(platform.name, "fpga", b, kfps, watts, unfolding=k, occupancy=occ)
    k_eff = k / occ
    note = (
        f"unfolding {k:g}x needs {occ:.1%} of the device: capped at 100% "
        f"(effective unfolding {k_eff:.2f}x); power scaled to the cap, throughput kept as in the paper "
        f"({kfps * k_eff / k:.3g} kFPS at the effective unfolding)"
    )
    return ScalingEstimate(
        platform.name,
        "fpga",
        b,
        kfps,
        watts / occ,
        unfolding=k,
        occupancy=1.0,
        capped=True,
        requested_occupancy=occ,
        effective_unfolding=k_eff,
        notes=(note,),
    )


def asic_scaling(platform: Platform, bits: float, *, op_ratio: float = 1.0) -> ScalingEstimate:
    """The paper's ASIC rule: area and power times ``(b / b0)^2 * R``, throughput fixed.

    Example:
        Row 8 of Table 2, 1.4 bits on the 2-bit baseline: factor ``(1.4 / 2)^2 = 0.49``,
        ``area = 6.06 * 0.49 = 2.969 mm^2``, ``W = 0.38 * 0.49 = 0.186``.
    """
    if platform.kind != "asic":
        raise ConfigError(f"platform: {platform.name!r} is an FPGA; use fpga_scaling")
    base = platform.baseline
    b = check_bits(bits)
    factor = (b / base.bits) ** 2 * check_positive(op_ratio, "op_ratio")
    return ScalingEstimate(
        platform.name, "asic", b, base.kfps, base.watts * factor, area_mm2=base.area_mm2 * factor
    )


def scale(
    platform: Platform,
    bits: float,
    *,
    unfolding: float | None = None,
    op_ratio: float = 1.0,
    fpga_occupancy: float | None = None,
) -> ScalingEstimate:
    """Dispatch to :func:`fpga_scaling` or :func:`asic_scaling` by ``platform.kind``.

    Raises:
        ConfigError: an unfolding other than 1 for an ASIC (its throughput is fixed).
    """
    if platform.kind == "fpga":
        k = 1 if unfolding is None else unfolding
        return fpga_scaling(platform, bits, unfolding=k, op_ratio=op_ratio, occupancy=fpga_occupancy)
    if unfolding not in (None, 1):
        raise ConfigError(f"unfolding: applies to FPGA platforms only; {platform.name!r} is an ASIC, got {unfolding!r}")
    return asic_scaling(platform, bits, op_ratio=op_ratio)
