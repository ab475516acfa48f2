"""Model zoo: a registry plus one architecture per file.

Importing this package registers every architecture:

- ``cifar_fc4`` -- the paper's hobbled 4-conv, fully convolutional CIFAR net
  (:mod:`hbnn.models.cifar_fc4`);
- ``alexnet_bn`` -- AlexNet with batch norm, ImageNet and small-input variants
  (:mod:`hbnn.models.alexnet_bn`);
- ``mobilenet_v1`` -- MobileNet v1 with width multiplier and named ``dw``/``pw`` convs,
  plus the pointwise-only quantization preset (:mod:`hbnn.models.mobilenet_v1`);
- ``vgg8_cnv`` -- FINN's CNV CIFAR-10 net of the paper's Table 2
  (:mod:`hbnn.models.vgg8_cnv`);
- ``resnet20`` -- the CIFAR ResNet-20 (shortcut option A by default) and ``resnet18`` --
  the ImageNet ResNet-18 with a small-input stem, both with float stem, classifier and
  (by default) projection shortcuts, plus their quantization layout
  :data:`RESNET_QUANT` (:mod:`hbnn.models.resnet`).

Your own architectures need no registration: a model name ``package.module:fn`` (or an
entry point of the group ``hbnn.models``) is resolved by :mod:`hbnn.models.registry`.

Example:
    >>> from hbnn.models import build_model, list_models
    >>> list_models()
    ['alexnet_bn', 'cifar_fc4', 'mobilenet_v1', 'resnet18', 'resnet20', 'vgg8_cnv']
    >>> model = build_model("cifar_fc4", in_channels=1, image_size=28, activation="hardtanh")
"""

from hbnn.models import alexnet_bn, cifar_fc4, mobilenet_v1, resnet, vgg8_cnv  # noqa: F401  (register)
from hbnn.models._layers import ACTIVATIONS
from hbnn.models.mobilenet_v1 import POINTWISE_ONLY_QUANT
from hbnn.models.registry import (ENTRY_POINT_GROUP, build_model, is_model_path, list_models, model_options,
                                  register_model)
from hbnn.models.resnet import RESNET_QUANT

__all__ = ["ACTIVATIONS", "ENTRY_POINT_GROUP", "POINTWISE_ONLY_QUANT", "RESNET_QUANT", "build_model", "is_model_path",
           "list_models", "model_options", "register_model"]
