"""Shared fixtures for the hardware cost model tests: tiny nets with fake hbnn quantizers."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class FakeQuantizer:
    """Stands in for hbnn's quantizers: only ``realized_bits()`` (and ``mix``) matter here."""

    def __init__(self, bits, mix=None):
        self.bits, self.mix = bits, mix

    def realized_bits(self):
        return self.bits


def attach(layer: nn.Module, wbits=None, abits=None) -> nn.Module:
    """Give a float layer fake weight/activation quantizers (None = no quantizer)."""
    layer.weight_quantizer = None if wbits is None else FakeQuantizer(wbits)
    layer.act_quantizer = None if abits is None else FakeQuantizer(abits)
    return layer


class TinyNet(nn.Module):
    """conv 3->8 (3x3, pad 1) on 8x8 (float), depthwise 8 (3x3, stride 2) -> 4x4 at 2 bits,
    linear 128->10 at 1.5 bits.

    MACs: 8*27*64 = 13824, 8*9*16 = 1152, 10*128 = 1280; total 16256.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = attach(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), 2, 2)
        self.fc = attach(nn.Linear(128, 10), 1.5, 1.5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.dw(x))
        return self.fc(x.flatten(1))


@pytest.fixture
def tiny_net() -> TinyNet:
    return TinyNet()


@pytest.fixture
def fake_quantizer():
    return FakeQuantizer


@pytest.fixture
def attach_quantizers():
    return attach
