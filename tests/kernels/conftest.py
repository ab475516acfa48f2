"""Shared helpers for the kernel tests: random planes and the C-backend availability."""

from __future__ import annotations

import pytest
import torch

from hbnn.kernels import available_backends, cpu_features


def random_planes(gen: torch.Generator, n: int, shape: tuple, masked: bool, per_row: bool):
    """Random ``(signs, masks, scales)``: plane 0 full, later planes masked (nested) if ``masked``."""
    signs = torch.rand((n, *shape), generator=gen) > 0.5
    if masked:
        level = torch.randint(1, n + 1, shape, generator=gen)
        masks = torch.stack([level > i for i in range(n)])
    else:
        masks = None
    scales = torch.rand((n, shape[0]) if per_row else (n,), generator=gen) + 0.25
    return signs, masks, scales


@pytest.fixture(scope="session")
def c_variants() -> list[str]:
    """Dispatch variants this machine runs (skips the test when the C kernels do not build)."""
    if "c" not in available_backends():
        pytest.skip("C kernels unavailable here (no compiler?)")
    return cpu_features()["variants"]


@pytest.fixture
def planes():
    """The :func:`random_planes` factory."""
    return random_planes


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
