"""Binarized layers: ``HBConv2d`` and ``HBLinear``.

Each subclasses its float layer (same constructor signature plus keyword-only quantizer
arguments) and owns its quantizers. ``forward`` = quantize the input, quantize the weight,
call the float op, then the optional learnable output scale::

    y = alpha * op(Q_a(x), Q_w(W), b)      (alpha = 1 unless output_scale=True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hbnn.quant.config import LayerQuant, QuantSpec
from hbnn.quant.modules import ActQuantizer, WeightQuantizer

__all__ = ["HBConv2d", "HBLinear", "HBLayerMixin"]


class HBLayerMixin:
    """Quantizer ownership shared by the binarized layers."""

    weight_quantizer: WeightQuantizer | None
    act_quantizer: ActQuantizer | None
    output_scale: nn.Parameter | None

    def _init_quantizers(
        self,
        weight_quant: QuantSpec | dict | float | int | None,
        act_quant: QuantSpec | dict | float | int | None,
        output_scale: bool,
    ) -> None:
        self.weight_quantizer = None if weight_quant is None else WeightQuantizer(weight_quant, channel_dim=0)
        self.act_quantizer = None if act_quant is None else ActQuantizer(act_quant)
        if output_scale:
            self.output_scale = nn.Parameter(torch.ones((), device=self.weight.device, dtype=self.weight.dtype))
        else:
            self.register_parameter("output_scale", None)
        if self.weight_quantizer is not None:
            self.weight_quantizer.realized.fill_(self.weight_quantizer.realized_bits(self.weight))

    @property
    def layer_quant(self) -> LayerQuant:
        """The :class:`LayerQuant` this layer was built with."""
        return LayerQuant(
            weight=None if self.weight_quantizer is None else self.weight_quantizer.spec,
            act=None if self.act_quantizer is None else self.act_quantizer.spec,
            output_scale=self.output_scale is not None,
        )

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """``Q_a(x)`` (identity when activations stay float)."""
        return x if self.act_quantizer is None else self.act_quantizer(x)

    def quantized_weight(self) -> torch.Tensor:
        """``Q_w(W)`` (the float weight when weights stay float)."""
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def _scale_output(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.output_scale is None else y * self.output_scale

    @classmethod
    def _float_type(cls) -> type[nn.Module]:
        return cls.__mro__[2]  # (HBLayerMixin, <float layer>) -> the float layer

    @classmethod
    def from_float(cls, layer: nn.Module, quant: LayerQuant | dict) -> "HBLayerMixin":
        """A binarized copy of ``layer`` (weights, bias and training mode copied)."""
        quant = LayerQuant.from_dict(quant)
        kwargs = cls._ctor_kwargs(layer)
        new = cls(
            **kwargs,
            weight_quant=quant.weight,
            act_quant=quant.act,
            output_scale=quant.output_scale,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(layer.weight)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        return new.train(layer.training)

    def to_float(self) -> nn.Module:
        """The float layer with the same (latent) weights; quantizers are dropped."""
        float_cls = self._float_type()
        layer = float_cls(**self._ctor_kwargs(self), device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer.train(self.training)


class HBConv2d(HBLayerMixin, nn.Conv2d):
    """``nn.Conv2d`` with heterogeneous-bitwidth binarized weights and/or inputs.

    Args:
        (positional/keyword): exactly those of :class:`torch.nn.Conv2d`.
        weight_quant: spec for the weight (``QuantSpec``, dict, or bits like ``1.4``); None = float.
        act_quant: spec for the input activation; None = float.
        output_scale: add a learnable scalar multiplying the output.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        weight_quant=None,
        act_quant=None,
        output_scale=False,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_quantizers(weight_quant, act_quant, output_scale)

    @staticmethod
    def _ctor_kwargs(layer: nn.Conv2d) -> dict:
        return dict(
            in_channels=layer.in_channels,
            out_channels=layer.out_channels,
            kernel_size=layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha * conv2d(Q_a(x), Q_w(W), b)``."""
        return self._scale_output(self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias))


class HBLinear(HBLayerMixin, nn.Linear):
    """``nn.Linear`` with heterogeneous-bitwidth binarized weights and/or inputs.

    Args:
        (positional/keyword): exactly those of :class:`torch.nn.Linear`.
        weight_quant, act_quant, output_scale: as for :class:`HBConv2d`.
    """

    def __init__(
        self,
        in_features,
        out_features,
        bias=True,
        device=None,
        dtype=None,
        *,
        weight_quant=None,
        act_quant=None,
        output_scale=False,
    ):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_quantizers(weight_quant, act_quant, output_scale)

    @staticmethod
    def _ctor_kwargs(layer: nn.Linear) -> dict:
        return dict(in_features=layer.in_features, out_features=layer.out_features, bias=layer.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha * linear(Q_a(x), Q_w(W), b)``."""
        return self._scale_output(F.linear(self.quantized_input(x), self.quantized_weight(), self.bias))
