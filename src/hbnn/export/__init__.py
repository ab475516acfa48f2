"""Packed deployment: the ``hbnn-packed`` file format, its inference engine, ONNX export.

``import hbnn`` never imports this package. Entry points:

- :func:`export_model` -- write a trained (binarized) model -- any graph of supported ops
  (:mod:`hbnn.export.capture`: residual adds, concatenation, functional activations) -- as
  real packed bits;
- :func:`load` -- read it back as a runnable :class:`PackedModel` whose binarized layers
  run the bit-serial kernels of :mod:`hbnn.kernels`;
- :func:`storage_report` / :func:`format_report` -- file size vs fp32, bits per parameter;
- :func:`to_onnx` -- a standard-ops ONNX model of a packed model (needs ``onnx``);
- :func:`evaluate_packed` -- accuracy of a packed file on its dataset's test split;
- :func:`model_from_packed` / :func:`packed_input_shape` -- the source architecture of a
  packed file and its input shape (what ``hbnn hw estimate --packed`` costs);
- :func:`predict` / :func:`load_predictor` -- top-k classes of your own images, folders or
  .npy arrays from a run, checkpoint or packed file, preprocessed as its test split.

Every read goes through :func:`read_packed`: both digests, then every header field and
tensor validated for type and range (:mod:`hbnn.export.validate`); any problem is one
:class:`hbnn.errors.FormatError` line naming the file, layer and field.

Example:
    >>> report = export_model(model, "model.hbnn", meta={"model": {"name": "cifar_fc4"}})  # doctest: +SKIP
    >>> engine = load("model.hbnn")                                                       # doctest: +SKIP
    >>> logits = engine(images)                                                           # doctest: +SKIP
"""

from hbnn.export.engine import PackedConv2d, PackedLayer, PackedLinear, PackedModel
from hbnn.export.format import (
    FORMAT,
    VERSION,
    export_model,
    format_report,
    load,
    pack_model,
    read_packed,
    storage_report,
)
from hbnn.export.ops import SUPPORTED_FUNCTIONS, SUPPORTED_LAYERS
from hbnn.export.prediction import Predictor, load_predictor, predict
from hbnn.export.source import model_from_packed, packed_input_shape

__all__ = [
    "FORMAT",
    "VERSION",
    "SUPPORTED_LAYERS",
    "SUPPORTED_FUNCTIONS",
    "PackedModel",
    "PackedLayer",
    "PackedConv2d",
    "PackedLinear",
    "export_model",
    "pack_model",
    "read_packed",
    "load",
    "storage_report",
    "format_report",
    "to_onnx",
    "evaluate_packed",
    "model_from_packed",
    "packed_input_shape",
    "Predictor",
    "load_predictor",
    "predict",
]


def to_onnx(*args, **kwargs):
    """See :func:`hbnn.export.onnx_export.to_onnx` (imported lazily: needs ``onnx``)."""
    from hbnn.export.onnx_export import to_onnx as impl

    return impl(*args, **kwargs)


def evaluate_packed(*args, **kwargs):
    """See :func:`hbnn.export.evaluate.evaluate_packed`."""
    from hbnn.export.evaluate import evaluate_packed as impl

    return impl(*args, **kwargs)
