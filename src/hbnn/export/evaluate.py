"""Accuracy of a packed model on its dataset's test split, optionally against its source model.

``evaluate_packed`` is what ``hbnn infer`` runs. With ``compare=RUN_DIR|CHECKPOINT`` the
training-time model (eval mode, simulated quantization in float) sees the same batches,
and the result counts the test images whose predicted class differs and the largest
logit difference.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from hbnn.errors import ConfigError

__all__ = ["LOGIT_TOL", "evaluate_packed", "test_loader_for"]

#: Logit tolerance for "agree": differences beyond it come from an activation bit that
#: flipped because a pre-binarization value sat within float rounding of a threshold.
LOGIT_TOL = 1e-4


def test_loader_for(header: dict, *, dataset: str | None = None, data_dir: str | None = None,
                    batch_size: int = 256, limit: int | None = None):
    """``(dataset name, loader)`` of the test split the packed model was trained for.

    The dataset and folder default to those recorded at export (``meta.data``).

    Raises:
        ConfigError: no dataset recorded and none given, or a bad batch size.
        DatasetError: the data is missing.
    """
    from hbnn.data import build_dataset, build_loader

    data = (header.get("meta") or {}).get("data") or {}
    name = dataset or data.get("name")
    if not name:
        raise ConfigError("--dataset: the packed model records no dataset; pass --dataset NAME")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size: {batch_size!r} is invalid; expected an integer >= 1")
    folder = data_dir if data_dir is not None else (data.get("data_dir") if name == data.get("name") else None)
    size = data.get("image_size") if name == data.get("name") else None
    test = build_dataset(name, "test", folder, size, limit=limit)
    return name, build_loader(test, batch_size=batch_size, train=False, seed=0, epoch=0, augment=False)


class _Sums:
    def __init__(self) -> None:
        self.loss = self.top1 = self.top5 = 0.0
        self.count = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        self.loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        self.top1 += float(hits[:, 0].sum())
        self.top5 += float(hits.any(1).sum())
        self.count += labels.shape[0]

    def result(self) -> dict:
        n = max(self.count, 1)
        return {"loss": self.loss / n, "top1": self.top1 / n, "top5": self.top5 / n, "count": self.count}


def _check_images(shape: tuple[int, ...] | None, images: torch.Tensor, dataset: str) -> None:
    """ConfigError (one line) unless ``images`` is a batch of the packed model's ``input_shape``."""
    if shape is not None and tuple(images.shape[1:]) != shape:
        raise ConfigError(f"--dataset: {dataset} gives images of shape {list(images.shape[1:])}; the packed model "
                          f"takes {list(shape)} (its input_shape); pass the dataset it was trained on "
                          "(--dataset, --data-dir)")


def evaluate_packed(path: str | os.PathLike, *, dataset: str | None = None, data_dir: str | None = None,
                    batch_size: int = 256, limit: int | None = None, backend: str = "auto",
                    compare: str | os.PathLike | None = None, which: str = "best",
                    progress: bool = False) -> dict[str, Any]:
    """Top-1/top-5 and loss of a packed file on the test split (and parity with its source).

    Args:
        path: the packed file.
        dataset: dataset name (default: the one recorded at export).
        data_dir: dataset folder (default: the recorded one, else the dataset's default).
        batch_size: evaluation batch size.
        limit: evaluate a fixed subset of this many test samples.
        backend: kernel backend (``auto``, ``c``, ``torch``).
        compare: a run directory or checkpoint whose model is evaluated on the same batches.
        which: ``best`` or ``last`` checkpoint inside a ``compare`` run directory.
        progress: report progress over the batches on stderr (:func:`hbnn.progress.make_progress`).

    Raises:
        ConfigError: no dataset known, a bad batch size, or a dataset whose images are not
            of the file's ``input_shape``.
        FormatError: an invalid packed file (:func:`hbnn.export.load`).

    Returns:
        ``{"checkpoint" (the packed file), "model", "dataset", "epoch", "step", "loss", "top1",
        "top5", "count", "backend"}``, plus with ``compare``: ``"compare": {"checkpoint", "top1",
        "mismatches", "max_abs_logit_diff"}``.
    """
    from hbnn.export.format import load
    from hbnn.kernels import available_backends
    from hbnn.progress import make_progress

    packed = load(path, backend=backend)
    header = packed.header
    name, loader = test_loader_for(header, dataset=dataset, data_dir=data_dir, batch_size=batch_size, limit=limit)
    reference = None
    if compare is not None:
        from hbnn.train.rebuild import model_from_checkpoint

        reference, _ = model_from_checkpoint(compare, which)
    sums, ref_sums = _Sums(), _Sums()
    mismatches, max_diff, loose = 0, 0.0, 0
    with torch.no_grad(), make_progress(len(loader), f"infer {name}", enabled=progress) as bar:
        for images, labels in loader:
            _check_images(packed.input_shape, images, name)
            logits = packed(images)
            sums.add(logits, labels)
            if reference is not None:
                ref = reference(images)
                ref_sums.add(ref, labels)
                mismatches += int((ref.argmax(1) != logits.argmax(1)).sum())
                per_image = (ref - logits).abs().amax(1)
                max_diff = max(max_diff, float(per_image.max()))
                loose += int((per_image > LOGIT_TOL).sum())
            bar.update(1)
    source = (header.get("meta") or {}).get("source") or {}
    used = backend if backend != "auto" else available_backends()[0]
    out = {"checkpoint": str(path), "model": (header.get("model") or {}).get("name"), "dataset": name,
           "epoch": source.get("epoch"), "step": source.get("step"), **sums.result(), "backend": used}
    if reference is not None:
        out["compare"] = {"checkpoint": str(compare), "top1": ref_sums.result()["top1"], "mismatches": mismatches,
                          "max_abs_logit_diff": max_diff, "images_beyond_tol": loose, "tol": LOGIT_TOL}
    return out
