"""The fuzzer's probes and classes (see ``scripts/fuzz_files.py`` for the rules).

:func:`probe` runs one case's probes (in-process loader, then the CLI), :func:`classify`
turns their results and the originals' reference results into one of :data:`CLASSES`.
"""

from __future__ import annotations

import hashlib
import json
import random

from fuzz_originals import LIMIT, run_cli

__all__ = ["CLASSES", "FAILURES", "ADVISORY", "is_advisory", "mutant_sha256", "probe", "classify"]

CLASSES = ("refused-clean", "loaded-identical", "valid-different", "SILENT", "TRACEBACK", "CRASH", "HANG")
FAILURES = ("SILENT", "TRACEBACK", "CRASH", "HANG")

#: Purely advisory header fields, per file kind: provenance a tool only reports, or (packed
#: ``meta.data``) which dataset ``hbnn infer`` reads by default. An accepted edit or removal of
#: one of these (or of anything under it) that leaves the in-process probe identical is
#: ``valid-different``, whatever CLI output it changes. Paths as :func:`fuzz_mutations.field_path`
#: writes them (``meta.source.step``).
ADVISORY = {
    "packed": ("meta", "hbnn_version", "torch_version", "source_params"),
    "checkpoint": ("wall_time_s", "hbnn_version", "torch_version"),
}


def is_advisory(kind: str, field) -> bool:
    """Whether ``field`` (a dotted path) is, or lies under, an advisory field of ``kind``."""
    text = str(field or "")
    return any(text == a or text.startswith((f"{a}.", f"{a}[")) for a in ADVISORY[kind])


def mutant_sha256(path: str) -> str:
    """SHA-256 over a mutant's bytes: the file, or every file of a run directory (sorted relative paths)."""
    from pathlib import Path

    root, h = Path(path), hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        h.update(f"{p.relative_to(root) if p != root else ''}\0{p.stat().st_size}\0".encode())
        h.update(p.read_bytes())
    return h.hexdigest()

def _digest(obj, h=None) -> str:
    """SHA-256 over nested tensors / JSON data (NaN-safe: tensors by bytes, floats by repr)."""
    import torch

    top = h is None
    h = h or hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _digest(obj[k], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _digest(v, h)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    return h.hexdigest() if top else ""


def _error(exc: BaseException) -> dict:
    from hbnn.errors import HbnnError

    text = str(exc).strip()
    return {"status": "refused" if isinstance(exc, HbnnError) and "\n" not in text and text else "error",
            "type": type(exc).__name__, "message": text[:300]}


#: metadata a resume or an evaluation uses (cosmetic fields and digests are not state)
_STATE_KEYS = ("model", "config", "epoch", "batch_in_epoch", "step", "best_metric", "best_epoch", "world_size",
               "ranks", "metrics", "optimizer", "scheduler")


def _probe_packed(path: str, shape) -> dict:
    import torch

    from hbnn.export import load

    try:
        engine = load(path)
    except Exception as exc:  # noqa: BLE001 - classified
        return _error(exc)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            return {"status": "loaded", "digest": _digest(engine(x))}
    except Exception as exc:  # noqa: BLE001 - loaded, but it is another model
        return {"status": "loaded", "digest": "forward failed", "type": type(exc).__name__, "message": str(exc)[:200]}


def _probe_checkpoint(run: str, original: dict) -> dict:
    from hbnn.train.checkpoint import load_checkpoint, restore_checkpoint
    from hbnn.train.config import config_from_dict
    from hbnn.train.loop import build_optimizer, build_scheduler
    from hbnn.train.rebuild import build_model_for, recorded_shape

    cfg = config_from_dict(original["config"])
    model, _ = build_model_for(cfg.model, recorded_shape(original["model"]), cfg.quant)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.sched, cfg.train.epochs, 4)
    try:
        ckpt = load_checkpoint(run)
        restore_checkpoint(ckpt, model, optimizer, scheduler)
    except Exception as exc:  # noqa: BLE001 - classified
        return _error(exc)
    meta = {k: ckpt.metadata.get(k, "<missing>") for k in _STATE_KEYS}
    return {"status": "loaded", "digest": _digest([model.state_dict(), optimizer.state_dict(),
                                                   scheduler.state_dict(), meta])}


def _cli_argv(probe_name: str, path: str) -> list[str]:
    return {"infer": ["infer", path, "--json", "--batch-size", "32", *LIMIT],
            "hw": ["hw", "estimate", "--packed", path, "--json"],
            "summary": ["summary", path, "--json"],
            "eval": ["eval", path, "--which", "last", "--json", "--batch-size", "32", *LIMIT]}[probe_name]


def _probe_cli(probe_name: str, path: str) -> dict:
    rc, out, err, exc = run_cli(_cli_argv(probe_name, path))
    if exc is not None:
        return {"status": "error", "type": type(exc).__name__, "rc": 1,
                "message": f"escaped hbnn.cli.main: {exc}"[:300]}
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if rc == 2 and len(lines) == 1:
        return {"status": "refused", "type": "exit 2", "message": lines[0][:300], "rc": rc}
    if rc != 0:
        return {"status": "error", "type": f"exit {rc}", "message": " | ".join(lines[-3:])[:300], "rc": rc}
    try:  # the mutant's own path and checksums are not part of the result
        result = json.loads(out.replace(path, "<PATH>"))
        if isinstance(result, dict):
            for key in ("checkpoint", "sha256", "file", "packed"):
                result.pop(key, None)
        digest = _digest(result)
    except ValueError:
        digest = hashlib.sha256(out.replace(path, "<PATH>").encode()).hexdigest()
    return {"status": "loaded", "digest": digest, "rc": rc}


def probe(case: dict, originals: dict, cli: bool | None = None) -> dict:
    """Run the probes of one case; ``cli`` None = the default policy (see the module docstring)."""
    orig = originals[case["original"]]
    path = case["path"]
    results = {"load": _probe_packed(path, orig["input_shape"]) if case["kind"] == "packed"
               else _probe_checkpoint(path, orig["meta"])}
    if cli is None:
        cli = (case["op"] == "edit_resealed" or results["load"]["status"] != "refused"
               or random.Random(f"cli/{case['i']}").random() < 0.1)
    if cli:
        for name in orig["cli"]:
            results[name] = _probe_cli(name, path)
    return results


def _class_of(res: dict, ref: dict, in_range: bool) -> str:
    if res["status"] == "refused":
        return "refused-clean"
    if res["status"] == "error":
        return "TRACEBACK"
    if res["digest"] == ref["digest"]:
        return "loaded-identical"
    return "valid-different" if in_range else "SILENT"


def classify(case: dict, results: dict, refs: dict) -> tuple[str, str | None]:
    """``(class, the probe that decided it)``: the worst over the case's probes.

    A loaded probe whose output differs is ``valid-different`` for an in-range resealed
    edit, else ``SILENT`` -- except that a CLI probe differing while the in-process probe
    (packed: the forward pass on the fixed input; checkpoint: the restored state) is
    identical is ``valid-different`` when the edited field is advisory (:data:`ADVISORY`).
    So for a packed file the forward pass is what decides whether the model is another.
    """
    ref = refs[case["original"]]
    load_same = results["load"]["status"] == "loaded" and results["load"]["digest"] == ref["load"]["digest"]
    advisory = load_same and is_advisory(case["kind"], case.get("field"))
    worst, which = -1, None
    for name, res in results.items():
        cls = _class_of(res, ref[name], case.get("in_range", False))
        if cls == "SILENT" and name != "load" and advisory:
            cls = "valid-different"
        if CLASSES.index(cls) > worst:
            worst, which = CLASSES.index(cls), name
    return CLASSES[worst], which
