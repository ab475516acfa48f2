"""Building blocks and argument checks shared by the model files.

Every model is a plain ``nn.Module`` tree of ``nn.Conv2d``, ``nn.Linear``,
``nn.BatchNorm1d/2d``, activation, pooling and ``nn.Flatten`` modules, so that
``hbnn.quantize_`` can swap the learnable layers by name and forward hooks can count
operations. Blocks are ordered ``conv -> BN -> activation (-> pool)``: the tensor that
reaches the next conv is the activation output, which with ``"hardtanh"`` is signed and
in ``[-1, 1]`` -- what a binarized-activation quantizer at that conv's input expects.
No module works in place, so a quantizer inserted later never sees a tensor that a
following op has overwritten.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from hbnn.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "SMALL_INPUT_MAX",
    "check_activation",
    "check_common",
    "check_int",
    "check_positive_float",
    "conv_bn_act",
    "conv_out",
    "final_size",
    "make_activation",
    "resolve_small_input",
]

#: Activation names every model accepts.
ACTIVATIONS = ("relu", "hardtanh")
#: ``small_input=None`` picks the small-input variant of an ImageNet model up to this size.
SMALL_INPUT_MAX = 64


def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) ``>= minimum``.

    Raises:
        ConfigError: naming ``owner``, the argument, the bad value and what is allowed.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive_float(owner: str, name: str, value: Any) -> float:
    """Return ``float(value)`` if it is a finite real number ``> 0``.

    Raises:
        ConfigError: naming ``owner``, the argument and the bad value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_activation(owner: str, activation: Any) -> str:
    """Return ``activation`` if it is one of :data:`ACTIVATIONS`.

    Raises:
        ConfigError: listing the allowed names.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"{owner}: unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}"
        )
    return activation


def check_common(
    owner: str, num_classes: Any, in_channels: Any, image_size: Any, activation: Any
) -> None:
    """Validate the arguments every model takes (see :func:`check_int`, :func:`check_activation`)."""
    check_int(owner, "num_classes", num_classes)
    check_int(owner, "in_channels", in_channels)
    check_int(owner, "image_size", image_size)
    check_activation(owner, activation)


def resolve_small_input(owner: str, small_input: Any, image_size: int) -> bool:
    """``small_input`` itself if a bool; ``image_size <= SMALL_INPUT_MAX`` if ``None``.

    Raises:
        ConfigError: for any other value.
    """
    if small_input is None:
        return image_size <= SMALL_INPUT_MAX
    if not isinstance(small_input, bool):
        raise ConfigError(f"{owner}: small_input must be true, false or null, got {small_input!r}")
    return small_input


def make_activation(activation: str) -> nn.Module:
    """A fresh, not-in-place activation module.

    ``"relu"`` is ``max(0, x)``; ``"hardtanh"`` is ``clamp(x, -1, 1)``, whose output is
    what a sign-based activation quantizer at the next layer's input binarizes.
    """
    if activation == "relu":
        return nn.ReLU(inplace=False)
    if activation == "hardtanh":
        return nn.Hardtanh(-1.0, 1.0, inplace=False)
    raise ConfigError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    activation: str,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> list[nn.Module]:
    """``[Conv2d(bias=False), BatchNorm2d, activation]`` -- BN's shift makes a conv bias redundant."""
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        make_activation(activation),
    ]


def conv_out(size: int, kernel_size: int, stride: int = 1, padding: int = 0) -> int:
    """Output side length of a conv or pool: ``floor((size + 2 * padding - kernel_size) / stride) + 1``.

    May be ``<= 0``, meaning the input is too small; callers turn that into a ConfigError.
    """
    return (size + 2 * padding - kernel_size) // stride + 1


def final_size(
    image_size: int,
    convs: Sequence[tuple[int, int, int]],
    pools: Mapping[int, tuple[int, int]],
) -> int:
    """Side length after a stack of convs, each optionally followed by a max-pool.

    Args:
        image_size: input side length.
        convs: ``(kernel_size, stride, padding)`` of each conv, in order.
        pools: conv index -> ``(kernel_size, stride)`` of the pool that follows it.

    Returns:
        The final side length, or 0 if some layer would get an empty input.
    """
    size = image_size
    for i, (kernel, stride, padding) in enumerate(convs):
        size = conv_out(size, kernel, stride, padding)
        if size >= 1 and i in pools:
            size = conv_out(size, *pools[i])
        if size < 1:
            return 0
    return size
