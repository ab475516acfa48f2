"""The paper's reference numbers that no config row carries (Fromm et al. 2018; paper.md §3).

Training rows carry their paper number in the experiment YAML (``paper:`` of a point);
Fig. 2a has no training rows, so its table lives here. Values were read off the paper's
plot (about +-0.01); the homogeneous ones follow from the maths.
"""

from __future__ import annotations

__all__ = ["FIG2A_AVERAGES", "FIG2A_HETERO", "FIG2A_HOMOGENEOUS", "fig2a_paper"]

#: The average bitwidths of the paper's error study (mixes in hbnn.quant.mix.PAPER_MIXES).
FIG2A_AVERAGES = (1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9)

#: ``||x - x_hat|| / ||x||`` on N(0, 1) per heuristic, in the order of FIG2A_AVERAGES.
FIG2A_HETERO = {
    "middle_out": (0.45, 0.44, 0.35, 0.33, 0.29, 0.29, 0.26, 0.24, 0.25),
    "bottom_up": (0.45, 0.44, 0.44, 0.41, 0.49, 0.44, 0.45, 0.44, 0.45),
    "top_down": (0.56, 0.56, 0.50, 0.50, 0.50, 0.49, 0.49, 0.50, 0.50),
    "random": (0.58, 0.58, 0.54, 0.53, 0.50, 0.51, 0.48, 0.46, 0.45),
}

#: Homogeneous n-bit residual binarization.
FIG2A_HOMOGENEOUS = {1: 0.60, 2: 0.36, 3: 0.24, 4: 0.18}


def fig2a_paper(heuristic: str | None, average: float) -> float | None:
    """The paper's Fig. 2a error for a heuristic (None = homogeneous) and average, if it has one."""
    if heuristic is None:
        return FIG2A_HOMOGENEOUS.get(int(average)) if float(average).is_integer() else None
    key = round(float(average), 1)
    if heuristic not in FIG2A_HETERO or key not in FIG2A_AVERAGES:
        return None
    return FIG2A_HETERO[heuristic][FIG2A_AVERAGES.index(key)]
