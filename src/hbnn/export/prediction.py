"""Predictions on your own images and arrays: what ``hbnn predict MODEL INPUTS...`` runs.

The model is a run directory (its ``best`` checkpoint, else ``last``; ``which`` picks
``last`` or ``calibrated``), a checkpoint file (both rebuilt exactly by
:func:`hbnn.train.rebuild.model_from_checkpoint`, the training-time model in eval mode),
or a packed file (:func:`hbnn.export.load`, the bit-serial engine; its logits agree with
the training-time model's to float rounding, :data:`hbnn.export.evaluate.LOGIT_TOL`,
except where an activation bit flips at a threshold -- ``docs/deploy.md``, "The engine").

Inputs are preprocessed exactly as the model's test split is (the dataset recorded with
the model: config ``data.name``, packed ``meta.data.name``), reusing
:mod:`hbnn.data.transforms`:

* **image files** (any format Pillow reads; 8-bit modes only) are converted to the
  model's channels (``L`` for 1, ``RGB`` for 3), resized so the shorter side is ``R``
  (bilinear, aspect kept) and centre-cropped to ``S x S``, with ``S`` the model's image
  size and ``R = S`` for fixed-size datasets (an ``S x S`` image is used as is, a square
  one is resized to ``S x S``) or ``R = int(S * 256 / 224)`` for image folders (their
  evaluation transform); then ``x / 255``;
* **folders**: every image file inside (extensions of
  :data:`hbnn.data.folder.IMAGE_EXTENSIONS`), sorted by name; sub-folders too with
  ``recursive``;
* **.npy arrays** are not resized: ``[H, W]`` or ``[N, H, W]`` (1-channel models),
  ``[C, H, W]`` or ``[N, C, H, W]`` with ``C`` the model's channels and ``H = W = S``;
  ``uint8`` pixels ``0..255`` (divided by 255, as the loader does) or floats already in
  ``[0, 1]`` (used as they are); each row ``n`` is one input.

Then ``(x - mean) / std`` per channel (:func:`hbnn.data.transforms.normalize` with the
dataset's statistics), the model, and ``softmax`` of the logits. The top ``k``
probabilities are sorted descending (ties: the lower class first) and named with the
dataset's class names (image folders: the sub-folders of the recorded ``data_dir/train``
when it still exists; otherwise names are None).

Any bad input is one :class:`hbnn.errors.ConfigError` line naming the file (a file that
is not an image, a 16-bit or float image, a mode that cannot be converted, a .npy of the
wrong shape, dtype or value range, an empty folder, a path that does not exist), and
nothing is predicted: all results are returned (and printed) only after every input has
been read.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from hbnn.data.transforms import image_to_uint8, normalize, resize_center_crop_image, to_float
from hbnn.errors import ConfigError

__all__ = ["EIGHT_BIT_MODES", "Preprocessing", "Predictor", "load_predictor", "collect_inputs", "input_batches",
           "predict", "format_predictions"]

#: Pillow modes with 8-bit samples (what the datasets' images are); 16-bit and float
#: images (``I``, ``I;16``, ``F``) have no known range and are refused.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
                             "HSV"})

_PIL_MODE = {1: "L", 3: "RGB"}
_FLOAT_DTYPES = ("float16", "float32", "float64")


def _pillow():
    """The ``PIL.Image`` module, or a ConfigError saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("predict: reading images needs Pillow: pip install 'hbnn[image]'") from None
    return Image


@dataclass(frozen=True)
class Preprocessing:
    """The test-time preprocessing of a model's dataset (module docstring: the rules).

    Attributes:
        dataset: registry name of the dataset (:func:`hbnn.data.dataset_info`).
        channels: the model's input channels ``C``.
        image_size: the model's input side ``S``.
        resize: the shorter side ``R`` before the centre crop.
        mean, std: per-channel normalisation constants (``[0, 1]`` pixel units).
    """

    dataset: str
    channels: int
    image_size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def for_dataset(cls, name: str, channels: int, image_size: int) -> "Preprocessing":
        """The preprocessing of dataset ``name`` for a ``[channels, image_size, image_size]`` model.

        Raises:
            ConfigError: an unknown dataset, or one whose statistics have another channel count.
        """
        from hbnn.data import dataset_info

        try:
            info = dataset_info(name)
        except ConfigError:
            raise ConfigError(f"predict: the model records dataset {name!r}, whose test-time preprocessing hbnn.data "
                              "does not know; predict needs one of its datasets") from None
        if len(info.mean) != channels:
            raise ConfigError(f"predict: the model takes {channels} channels but {info.name} normalises "
                              f"{len(info.mean)}; the recorded dataset does not fit the model")
        # image folders evaluate on a centre crop of the shorter side resized to S * 256 / 224 (hbnn.data.folder)
        resize = int(image_size * 256 / 224) if info.random_resized_crop else image_size
        return cls(info.name, channels, image_size, resize, tuple(info.mean), tuple(info.std))

    def image(self, image, where: str | os.PathLike) -> torch.Tensor:
        """A decoded ``PIL.Image`` as uint8 ``[C, S, S]``: converted, resized, centre-cropped.

        Raises:
            ConfigError: a 16-bit/float mode, or one Pillow cannot convert to ``L``/``RGB``.
        """
        target = _PIL_MODE.get(self.channels)
        if target is None:
            raise ConfigError(f"{where}: the model takes {self.channels}-channel inputs; images give 1 (L) or 3 "
                              "(RGB); pass a .npy array")
        if image.mode not in EIGHT_BIT_MODES:
            raise ConfigError(f"{where}: image mode {image.mode} has 16-bit or float pixels of unknown range; save "
                              "it as an 8-bit image or pass a .npy array of floats in [0, 1]")
        try:
            image = image.convert(target)
        except ValueError as exc:
            raise ConfigError(f"{where}: cannot convert image mode {image.mode} to {target} ({exc})") from None
        image = resize_center_crop_image(image, self.resize, self.image_size)
        pixels = image_to_uint8(image)  # RGB [3, S, S]; an L image's three channels are all equal
        return pixels[: self.channels].contiguous()

    def array(self, array, where: str | os.PathLike) -> torch.Tensor:
        """A loaded .npy array as float32 ``[N, C, S, S]`` in ``[0, 1]`` (not yet normalised).

        Raises:
            ConfigError: a shape, dtype or value range the module docstring does not allow.
        """
        import numpy as np

        c, s = self.channels, self.image_size
        shapes = ("[H, W], [N, H, W], [1, H, W] or [N, 1, H, W]" if c == 1 else f"[{c}, H, W] or [N, {c}, H, W]")
        if array.ndim == 2 and c == 1:
            array = array[None, None]
        elif array.ndim == 3:
            array = array[:, None] if c == 1 else array[None]
        if array.ndim != 4 or tuple(array.shape[1:]) != (c, s, s) or array.shape[0] == 0:
            raise ConfigError(f"{where}: array of shape {list(np.shape(array))} does not fit the model; expected "
                              f"{shapes} with H = W = {s} and N >= 1 (arrays are not resized)")
        if array.dtype == np.uint8:
            return to_float(torch.from_numpy(np.ascontiguousarray(array)))
        if array.dtype.name not in _FLOAT_DTYPES:
            raise ConfigError(f"{where}: array of dtype {array.dtype.name}; expected uint8 pixels 0..255 or "
                              f"floats ({', '.join(_FLOAT_DTYPES)}) in [0, 1]")
        if not np.isfinite(array).all():
            raise ConfigError(f"{where}: float array with NaN or infinite values; expected pixels in [0, 1]")
        if array.min() < 0 or array.max() > 1:
            raise ConfigError(f"{where}: float array with values in [{float(array.min()):g}, {float(array.max()):g}], "
                              "outside [0, 1]; scale pixels to [0, 1] or save them as uint8 0..255")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel of a float ``[N, C, S, S]`` batch in ``[0, 1]`` (in place)."""
        return normalize(batch, self.mean, self.std)


@dataclass
class Predictor:
    """A model ready to predict: the model (eval mode), how to preprocess, what to call the classes.

    Attributes:
        model: the training-time model or a :class:`hbnn.export.PackedModel`.
        kind: ``"checkpoint"`` or ``"packed"``.
        source: the file the weights came from.
        preprocessing: the model's :class:`Preprocessing`.
        num_classes: logits per input.
        classes: class names (index = class), or None when unknown.
    """

    model: torch.nn.Module
    kind: str
    source: str
    preprocessing: Preprocessing
    num_classes: int
    classes: list[str] | None

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's logits ``[N, K]`` for a normalised batch (no autograd)."""
        with torch.no_grad():
            return self.model(batch)


def _class_names(dataset: str, data_dir: str | None, num_classes: int) -> list[str] | None:
    """The dataset's class names if there are exactly ``num_classes`` of them, else None."""
    from hbnn.data.cifar import CIFAR10_CLASSES
    from hbnn.data.info import FASHION_MNIST_CLASSES, MNIST_CLASSES

    names = {"fashion_mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES, "cifar10": CIFAR10_CLASSES}.get(dataset)
    if names is None and data_dir:  # image folders: the class sub-folders, if the data is still there
        from hbnn.data.folder import list_classes
        from hbnn.errors import DatasetError

        try:
            names = list_classes(Path(data_dir) / "train")
        except DatasetError:
            names = None
    return list(names) if names is not None and len(names) == num_classes else None


def _is_packed_file(path: Path) -> bool:
    """True when ``path`` is a safetensors file whose metadata holds a packed header (not validated)."""
    from hbnn.export.format import META_KEY

    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                return False
            (size,) = struct.unpack("<Q", head)
            if size > 100_000_000:
                return False
            metadata = json.loads(fh.read(size)).get("__metadata__")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(metadata, dict) and META_KEY in metadata


def _model_kind(path: Path) -> str:
    """``"checkpoint"`` (run directory, checkpoint file or stem) or ``"packed"``; ConfigError otherwise."""
    if path.is_dir() or path.suffix in (".safetensors", ".json"):
        return "checkpoint"
    if path.suffix == ".hbnn" or (path.is_file() and _is_packed_file(path)):
        return "packed"
    if not path.exists() and path.with_name(path.name + ".safetensors").exists():
        return "checkpoint"
    what = "is not a run directory, checkpoint (.safetensors/.json) or packed model (.hbnn)" if path.exists() \
        else "does not exist; expected a run directory, checkpoint (.safetensors/.json) or packed model (.hbnn)"
    raise ConfigError(f"predict: MODEL {path} {what}")


def _from_packed(path: Path, backend: str) -> tuple[torch.nn.Module, str, list[int], int, Any]:
    """``(engine, file, input shape, classes, meta.data)`` of a packed file."""
    from hbnn.export.format import load
    from hbnn.export.shapes import check_shapes

    model = load(path, backend=backend)
    header = model.header
    num_classes = int(check_shapes(header, f"packed model {path}")[-1])
    return model, str(path), list(header["input_shape"]), num_classes, (header.get("meta") or {}).get("data")


def _from_checkpoint(path: Path, which: str) -> tuple[torch.nn.Module, str, list[int], int, Any]:
    """``(model, checkpoint file, input shape, classes, config data section)`` of a run or checkpoint."""
    from hbnn.train.rebuild import model_from_checkpoint, recorded_shape

    model, ckpt = model_from_checkpoint(path, which)
    shape = recorded_shape(ckpt.metadata["model"])
    size = [shape["in_channels"], shape["image_size"], shape["image_size"]]
    return model, str(ckpt.path), size, shape["num_classes"], ckpt.metadata["config"].get("data")


def load_predictor(target: str | os.PathLike, which: str = "best", *, backend: str = "auto") -> Predictor:
    """A :class:`Predictor` for a run directory, checkpoint or packed file (module docstring).

    Args:
        target: the model.
        which: ``best`` (else ``last``), ``last`` or ``calibrated`` checkpoint inside a run directory.
        backend: kernel backend of a packed model (``auto``, ``c``, ``torch``).

    Raises:
        ConfigError: a path that is none of these, a model that records no known dataset, or
            one whose input is not a square ``[C, S, S]`` image.
        CheckpointError, FormatError: an unusable checkpoint or packed file.
    """
    path = Path(target)
    kind = _model_kind(path)
    model, source, shape, num_classes, data = (_from_packed(path, backend) if kind == "packed"
                                               else _from_checkpoint(path, which))
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(f"predict: {source} takes inputs of shape {shape}; predict feeds it square images "
                          "[C, S, S]")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ConfigError(f"predict: {source} records no dataset, so its preprocessing is unknown; export the model "
                          "from a run with hbnn export")
    prep = Preprocessing.for_dataset(data["name"], shape[0], shape[1])
    names = _class_names(prep.dataset, data.get("data_dir"), num_classes)
    return Predictor(model.eval(), kind, source, prep, num_classes, names)


# ------------------------------------------------------------------------------ inputs


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    """The image files in ``folder``, sorted by path; sub-folders too with ``recursive`` (hidden ones skipped)."""
    from hbnn.data.folder import IMAGE_EXTENSIONS

    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = sorted(p for p in candidates if p.name.lower().endswith(IMAGE_EXTENSIONS) and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not found:
        nested = not recursive and any(p.is_dir() for p in folder.iterdir())
        hint = "; add --recursive to read its sub-folders" if nested else ""
        raise ConfigError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}){hint}")
    return found


def collect_inputs(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """The input files, in order: files as given, each folder replaced by its sorted image files.

    Raises:
        ConfigError: no inputs, a path that does not exist, or a folder without images.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ConfigError("predict: no INPUTS; pass image files, folders or .npy arrays")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(_folder_images(path, recursive))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder (INPUTS are image files, folders or .npy arrays)")
    return files


def _unreadable(path: Path, what: str, exc: BaseException) -> ConfigError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
    return ConfigError(f"{path}: {what} ({type(exc).__name__}: {first})")


def _read_image(path: Path, prep: Preprocessing) -> torch.Tensor:
    """An image file as uint8 ``[C, S, S]`` (:meth:`Preprocessing.image`)."""
    image_module = _pillow()
    try:
        image = image_module.open(path)
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...: all the file's fault
        raise _unreadable(path, "not an image Pillow can read", exc) from None
    with image:
        try:
            image.load()
        except Exception as exc:  # truncated or corrupt data
            raise _unreadable(path, "unreadable image", exc) from None
        return prep.image(image, path)


def _read_npy(path: Path, prep: Preprocessing) -> torch.Tensor:
    """A .npy file as float32 ``[N, C, S, S]`` in ``[0, 1]`` (:meth:`Preprocessing.array`)."""
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _unreadable(path, "not a .npy array numpy can read (no pickles)", exc) from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise ConfigError(f"{path}: an .npz archive; save each array with numpy.save as its own .npy file")
    return prep.array(array, path)


def _samples(files: Sequence[Path], prep: Preprocessing) -> Iterator[tuple[dict, torch.Tensor]]:
    """``({"path", "index"}, float [C, S, S] in [0, 1])`` per input: one per image, one per .npy row."""
    for path in files:
        if path.suffix.lower() == ".npy":
            rows = _read_npy(path, prep)
            for i in range(rows.shape[0]):
                yield {"path": str(path), "index": i}, rows[i]
        else:
            yield {"path": str(path), "index": None}, to_float(_read_image(path, prep))


def input_batches(files: Sequence[Path], prep: Preprocessing,
                  batch_size: int) -> Iterator[tuple[list[dict], torch.Tensor]]:
    """Normalised float32 batches ``[B, C, S, S]`` (at most ``batch_size``) of the inputs, with their records."""
    records: list[dict] = []
    rows: list[torch.Tensor] = []
    for record, row in _samples(files, prep):
        records.append(record)
        rows.append(row)
        if len(rows) == batch_size:
            yield records, prep.normalize(torch.stack(rows))
            records, rows = [], []
    if rows:
        yield records, prep.normalize(torch.stack(rows))


# ---------------------------------------------------------------------------- predict


def _positive_int(flag: str, value, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (maximum is not None and value > maximum):
        allowed = f"an integer in [1, {maximum}]" if maximum is not None else "an integer >= 1"
        raise ConfigError(f"{flag}: {value!r} is not allowed; expected {allowed}")
    return value


def predict(model: str | os.PathLike | Predictor, inputs: Sequence[str | os.PathLike], *, top_k: int | None = None,
            batch_size: int = 64, recursive: bool = False, which: str = "best",
            backend: str = "auto") -> list[dict[str, Any]]:
    """The top-``k`` classes of every input (module docstring: models, inputs, preprocessing).

    Args:
        model: a run directory, checkpoint or packed file, or a :class:`Predictor`.
        inputs: image files, folders and .npy arrays.
        top_k: classes per input, ``1..K`` (default ``min(5, K)``).
        batch_size: inputs per forward pass.
        recursive: also read the sub-folders of folders.
        which: ``best`` (else ``last``), ``last`` or ``calibrated`` checkpoint inside a run directory.
        backend: kernel backend of a packed model.

    Returns:
        One entry per input, in order: ``{"path", "index" (the row of a .npy array, else
        None), "top_k": [{"class", "name" (None when unknown), "prob"}, ...]}`` with
        ``prob = softmax(logits)[class]``, descending.

    Raises:
        ConfigError: a bad argument or input (nothing is returned then);
        CheckpointError, FormatError: an unusable model file.
    """
    predictor = model if isinstance(model, Predictor) else load_predictor(model, which, backend=backend)
    k = _positive_int("--top-k", min(5, predictor.num_classes) if top_k is None else top_k, predictor.num_classes)
    batch_size = _positive_int("--batch-size", batch_size)
    results = []
    for records, batch in input_batches(collect_inputs(inputs, recursive), predictor.preprocessing, batch_size):
        probs = torch.softmax(predictor.logits(batch).float(), dim=1)
        values, classes = probs.sort(dim=1, descending=True, stable=True)
        for record, p, c in zip(records, values[:, :k].tolist(), classes[:, :k].tolist()):
            names = predictor.classes
            top = [{"class": ci, "name": None if names is None else names[ci], "prob": pi} for ci, pi in zip(c, p)]
            results.append({**record, "top_k": top})
    return results


def format_predictions(results: Sequence[dict]) -> str:
    """A text table of :func:`predict`'s results: one row per input, one ``name (class) prob%`` column per rank."""
    def label(entry: dict) -> str:
        return entry["path"] if entry["index"] is None else f"{entry['path']}[{entry['index']}]"

    def cell(top: dict) -> str:
        name = f"{top['name']} ({top['class']})" if top["name"] is not None else f"class {top['class']}"
        return f"{name} {100 * top['prob']:.2f}%"

    rows = [[label(r)] + [cell(t) for t in r["top_k"]] for r in results]
    ranks = max((len(r["top_k"]) for r in results), default=0)
    table = [["input"] + [f"top-{i + 1}" for i in range(ranks)]] + rows
    widths = [max(len(row[j]) for row in table if j < len(row)) for j in range(ranks + 1)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table)
