"""Static facts about each supported dataset: shape, classes, statistics, default augmentation.

``DATASETS[name]`` is a :class:`DatasetInfo`. Mean and std are the per-channel pixel
statistics (in ``[0, 1]`` units) of the training split, used by the loader's
normalisation ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetInfo", "DATASETS", "FASHION_MNIST_CLASSES", "MNIST_CLASSES", "FASHION_MNIST_DEFAULT_DIR"]

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MNIST_CLASSES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class DatasetInfo:
    """Description of one dataset and its default training augmentation.

    Attributes:
        name: registry name.
        num_classes: number of classes, or None when read from the class folders.
        in_channels: image channels.
        image_size: native side in pixels, or the default output side (image folders).
        mean, std: per-channel normalisation constants in ``[0, 1]`` pixel units.
        pad: training augmentation "pad ``pad`` with zeros, random crop back to the
            native size"; 0 disables it.
        flip: training augmentation "random horizontal flip, p = 0.5".
        random_resized_crop: training augmentation "random-resized crop to
            ``image_size``, scale (0.08, 1), ratio (3/4, 4/3)" (image folders); evaluation
            then resizes the shorter side to ``int(image_size * 256 / 224)`` and centre-crops.
        default_dir: folder used when no ``data_dir`` is given, or None (required).
        install_hint: how to obtain the data, quoted in "missing" errors.
        layout: the expected files, quoted in "missing" errors.
    """

    name: str
    num_classes: int | None
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 0
    flip: bool = False
    random_resized_crop: bool = False
    default_dir: str | None = None
    install_hint: str = ""
    layout: str = ""

    def describe_augmentation(self) -> str:
        """One line naming the default training augmentation, e.g. ``"pad 4 + random crop 32, hflip"``."""
        parts = []
        if self.pad:
            parts.append(f"pad {self.pad} + random crop {self.image_size}")
        if self.random_resized_crop:
            parts.append(f"random-resized crop {self.image_size}")
        if self.flip:
            parts.append("hflip")
        return ", ".join(parts) or "none"


_IDX_LAYOUT = "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"

DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        pad=2,
        flip=True,
        default_dir=FASHION_MNIST_DEFAULT_DIR,
        install_hint="install it with 'apt-get install dataset-fashion-mnist' or pass --data-dir DIR",
        layout=_IDX_LAYOUT,
    ),
    "mnist": DatasetInfo(
        name="mnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=(0.1307,),
        std=(0.3081,),
        pad=2,
        flip=False,  # digits are not mirror-symmetric
        install_hint="download it from http://yann.lecun.com/exdb/mnist/ and pass --data-dir DIR",
        layout=_IDX_LAYOUT,
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        pad=4,
        flip=True,
        install_hint="download it from https://www.cs.toronto.edu/~kriz/cifar.html and pass --data-dir DIR",
        layout="cifar-10-batches-py/, cifar-10-python.tar.gz, cifar-10-batches-bin/ or cifar-10-binary.tar.gz",
    ),
    "imagenet": DatasetInfo(
        name="imagenet",
        num_classes=None,
        in_channels=3,
        image_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        flip=True,
        random_resized_crop=True,
        install_hint="pass --data-dir DIR pointing to an ImageNet-style folder",
        layout="train/<class>/<image> and val/<class>/<image>",
    ),
}
