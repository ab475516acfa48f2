"""Residual building blocks shared by ``resnet20`` and ``resnet18`` (:mod:`hbnn.models.resnet`).

A :class:`BasicBlock` (He et al. 2016) computes, with ``act`` the model's activation and
every conv bias-free and followed by batch norm::

    h   = act(bn1(conv1(x)))                    conv1: 3x3, stride s, C_in -> C_out
    out = act(bn2(conv2(h)) + shortcut(x))      conv2: 3x3, stride 1, C_out -> C_out

The residual add is in float; when the convs are binarized, their activation quantizer
sits at the conv's input, so ``x`` and ``h`` are binarized on their way into ``conv1`` and
``conv2`` while the shortcut carries ``x`` itself (as XNOR-Net/Bi-Real/ReActNet do). The
activation follows the add, so every block output -- the input of the next block's conv1
and shortcut -- is a hardtanh (``[-1, 1]``) or ReLU (``>= 0``) output.

``shortcut(x)`` is the identity where shape is kept (``s = 1``, ``C_in = C_out``);
otherwise, by option:

- ``"A"`` (:class:`ZeroPadShortcut`, the CIFAR ResNets' option A): no parameters;
  ``x[:, :, ::s, ::s]`` with ``C_out - C_in`` zero channels appended after the ``C_in``
  identity channels (the channel order of fb.resnet.torch's ``shortcutType A``, a concat of
  the identity and a zeroed copy);
- ``"B"`` (:class:`ProjectionShortcut`): ``bn(conv1x1/s(x))``, a learned projection.

Projection convs are named ``shortcut.conv`` when ``binarize_shortcut`` is true and
``shortcut.float_conv`` otherwise, so one quantization rule (``hbnn.models.RESNET_QUANT``)
keeps the float ones float while the name says which they are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hbnn.errors import ConfigError
from hbnn.models._layers import make_activation

__all__ = [
    "SHORTCUTS",
    "BasicBlock",
    "ProjectionShortcut",
    "ResNetBase",
    "ZeroPadShortcut",
    "check_shortcut",
    "make_shortcut",
]

#: Shortcut options of the downsampling blocks (He et al. 2016, Sec. 3.3 / 4.2).
SHORTCUTS = ("A", "B")


def check_shortcut(owner: str, shortcut: object, binarize_shortcut: object) -> None:
    """Validate ``shortcut`` (one of :data:`SHORTCUTS`) and ``binarize_shortcut`` (a bool, only with B).

    Raises:
        ConfigError: an unknown option, a non-bool flag, or ``binarize_shortcut=True`` with
            option A (which has no conv to binarize).
    """
    if shortcut not in SHORTCUTS:
        raise ConfigError(f"{owner}: unknown shortcut {shortcut!r}; allowed: {', '.join(SHORTCUTS)}")
    if not isinstance(binarize_shortcut, bool):
        raise ConfigError(f"{owner}: binarize_shortcut must be true or false, got {binarize_shortcut!r}")
    if binarize_shortcut and shortcut == "A":
        raise ConfigError(f"{owner}: binarize_shortcut=true needs shortcut 'B' (option A has no conv)")


class ZeroPadShortcut(nn.Module):
    """Option A: ``[x[:, :, ::s, ::s], 0]`` -- subsample, then append zero channels. No parameters.

    Maps ``[B, C_in, H, W]`` to ``[B, C_out, ceil(H / s), ceil(W / s)]``, the shape of a
    3x3 stride-``s`` pad-1 conv's output.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out >= C_in``.
        stride: subsampling step ``s``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ConfigError(f"option A shortcut cannot shrink channels ({in_channels} -> {out_channels})")
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample by ``stride`` and zero-pad the channel dimension at its end."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra}, stride={self.stride}"


class ProjectionShortcut(nn.Module):
    """Option B: ``bn(conv1x1/s(x))``; the conv is ``conv`` (binarizable) or ``float_conv``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: the conv's stride.
        binarize: name the conv ``conv`` (True) or ``float_conv`` (False, kept float by
            ``RESNET_QUANT``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, binarize: bool) -> None:
        super().__init__()
        self.conv_name = "conv" if binarize else "float_conv"
        self.add_module(self.conv_name, nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``bn(conv(x))``; the conv is looked up by name, so a swapped-in binarized one is used."""
        return self.bn(getattr(self, self.conv_name)(x))


def make_shortcut(in_channels: int, out_channels: int, stride: int, kind: str, binarize: bool) -> nn.Module:
    """The identity where the shape is kept, else the option-``kind`` shortcut (module docstring)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return ProjectionShortcut(in_channels, out_channels, stride, binarize)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs and a shortcut: ``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))``.

    Args:
        in_channels: input channels.
        out_channels: output channels of both convs.
        stride: stride of ``conv1`` (and of the shortcut).
        activation: ``"relu"`` or ``"hardtanh"``.
        shortcut: ``"A"`` or ``"B"`` (used only where the shape changes).
        binarize_shortcut: name an option-B projection conv ``conv`` instead of ``float_conv``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, activation: str,
                 shortcut: str, binarize_shortcut: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = make_shortcut(in_channels, out_channels, stride, shortcut, binarize_shortcut)
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` -> ``[B, C_out, ceil(H / s), ceil(W / s)]``; the add is in float."""
        h = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNetBase(nn.Module):
    """``features`` (stem modules, then ``layer1..layerN``), global average pool, ``classifier``.

    Stage ``i`` is ``layer{i+1}``: ``blocks`` :class:`BasicBlock` s of ``widths[i]``
    channels, the first with stride ``strides[i]``. The classifier is
    ``Linear(widths[-1] -> num_classes)`` with bias.

    Args:
        stem: ``(name, module)`` pairs that open ``features`` (their conv is named ``stem``).
        stem_channels: output channels of the stem.
        widths: channels of each stage.
        strides: first-block stride of each stage.
        blocks: basic blocks per stage.
        num_classes: number of logits.
        activation, shortcut, binarize_shortcut: as :class:`BasicBlock`.
    """

    def __init__(self, stem: Sequence[tuple[str, nn.Module]], stem_channels: int, widths: Sequence[int],
                 strides: Sequence[int], blocks: int, *, num_classes: int, activation: str, shortcut: str,
                 binarize_shortcut: bool) -> None:
        super().__init__()
        layers = OrderedDict(stem)
        prev = stem_channels
        for i, (width, stride) in enumerate(zip(widths, strides)):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(prev, width, stride if b == 0 else 1, activation=activation,
                                        shortcut=shortcut, binarize_shortcut=binarize_shortcut))
                prev = width
            layers[f"layer{i + 1}"] = nn.Sequential(*stage)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(prev, num_classes, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images -> ``[B, num_classes]`` logits."""
        return self.classifier(self.flatten(self.pool(self.features(x))))
