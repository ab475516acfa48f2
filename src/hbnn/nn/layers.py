"""Binarized layers: ``HBConv2d`` and ``HBLinear``.

Each subclasses its float layer (same constructor signature plus keyword-only quantizer
arguments) and owns its quantizers. ``forward`` = quantize the input, quantize the weight,
call the float op, then the optional learnable output scale::

    y = alpha * op(Q_a(x), Q_w(W), b)      (alpha = 1 unless output_scale=True)

``from_float``/``to_float`` move the float layer's own ``weight``/``bias`` Parameter objects
into the new layer (nothing is copied), so an optimizer built before a conversion keeps
training them; only ``output_scale`` is a new Parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hbnn.errors import ConfigError
from hbnn.quant.config import LayerQuant, QuantSpec
from hbnn.quant.modules import ActQuantizer, WeightQuantizer
from hbnn.quant.structure import check_fit

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
        conv = isinstance(self, nn.Conv2d)
        self.weight_quantizer = None if weight_quant is None else WeightQuantizer(weight_quant, channel_dim=0)
        self.act_quantizer = None if act_quant is None else ActQuantizer(act_quant, feature_dim=1 if conv else -1)
        self._check_fit(conv)
        if output_scale:
            self.output_scale = nn.Parameter(torch.ones((), device=self.weight.device, dtype=self.weight.dtype))
        else:
            self.register_parameter("output_scale", None)
        if self.weight_quantizer is not None:
            self.weight_quantizer.realized.fill_(self.weight_quantizer.realized_bits(self.weight))

    def _check_fit(self, conv: bool) -> None:
        """Structured maps must fit the layer: a block no longer than a row, pixel on conv inputs,
        a group no larger than the input's channels (:func:`hbnn.quant.structure.check_fit`)."""
        layer = f"{type(self).__name__} with weight {list(self.weight.shape)}"
        if self.weight_quantizer is not None:
            check_fit(self.weight_quantizer.structure, "weight", layer, row_length=self.weight[0].numel())
        if self.act_quantizer is not None:
            channels = self.in_channels if conv else self.in_features
            check_fit(self.act_quantizer.structure, "act", layer, channels=channels, conv=conv)

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
        """A binarized layer that trains ``layer``'s own ``weight`` and ``bias`` Parameters.

        The new layer holds the very ``nn.Parameter`` objects of ``layer`` (same Python
        objects, same storage, same ``requires_grad``), like torchao's QAT layers, so an
        optimizer built before the conversion keeps updating the binarized weights. Only the
        parameters the HB layer adds (the learnable ``output_scale``) are new: an optimizer
        built earlier does not see those. Parameter order is that of a freshly constructed
        HB layer (``weight``, ``bias``, ``output_scale``), and the global RNG is advanced
        exactly as the constructor does, so seeded runs are unchanged.

        Args:
            layer: a float layer of this class's float type (``weight`` and ``bias`` must be
                ``nn.Parameter`` or ``None``).
            quant: a :class:`LayerQuant` or its dict form.

        Returns:
            The HB layer, in ``layer``'s training mode; ``layer`` shares its Parameters.

        Raises:
            ConfigError: ``layer.weight``/``layer.bias`` is not an ``nn.Parameter`` (e.g. a
                parametrized layer) or does not fit the layer's shape.
        """
        quant = LayerQuant.from_dict(quant)
        new = cls(
            **cls._ctor_kwargs(layer),
            weight_quant=quant.weight,
            act_quant=quant.act,
            output_scale=quant.output_scale,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        _share_parameters(layer, new)
        if new.weight_quantizer is not None:
            new.weight_quantizer.realized.fill_(new.weight_quantizer.realized_bits(new.weight))
        return new.train(layer.training)

    def to_float(self) -> nn.Module:
        """The float layer holding this layer's own ``weight``/``bias`` Parameters; quantizers are dropped.

        Like :meth:`from_float`, no Parameter is copied: an optimizer keeps training the
        float layer's weights. ``output_scale`` (if any) is dropped with the quantizers.
        """
        float_cls = self._float_type()
        layer = float_cls(**self._ctor_kwargs(self), device=self.weight.device, dtype=self.weight.dtype)
        _share_parameters(self, layer)
        return layer.train(self.training)


def _share_parameters(source: nn.Module, target: nn.Module) -> None:
    """Rebind ``target.weight``/``target.bias`` to ``source``'s Parameter objects, in place.

    ``target`` was built with the same shapes; re-registering an existing name keeps its
    position in ``_parameters``, so ``named_parameters()``/``state_dict()`` order is unchanged.
    """
    for name in ("weight", "bias"):
        param, slot = getattr(source, name), getattr(target, name)
        if param is None:
            continue
        if not isinstance(param, nn.Parameter):
            raise ConfigError(f"{name}: a {type(param).__name__} is not allowed; from_float/to_float share an "
                              "nn.Parameter (or None)")
        if slot is None or param.shape != slot.shape:
            raise ConfigError(f"{name}: shape {tuple(param.shape)} is not allowed; {type(target).__name__} "
                              f"needs {None if slot is None else tuple(slot.shape)}")
        setattr(target, name, param)


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
