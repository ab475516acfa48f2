"""Binarized layers that subclass the float ones and own their quantizers."""

from hbnn.nn.layers import HBConv2d, HBLayerMixin, HBLinear

__all__ = ["HBConv2d", "HBLinear", "HBLayerMixin"]
