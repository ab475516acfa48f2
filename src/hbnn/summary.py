"""Model summary: per layer and for the model, parameters, realized bits and stored size.

Stored size of a binarized weight of ``N`` entries with map ``M`` (``K`` bitwidths in its
mix, ``B`` map units: ``N`` per entry, else the number of units of its structure --
blocks, channels; :mod:`hbnn.quant.structure`)::

    planes  = sum_j M_j                  (= average bits * N)
    map     = B * ceil(log2 K)           (0 for a homogeneous mix)
    scales  = 32 * max_bits * (O if per-channel else 1)
    stored  = planes + map + scales + 32 * (bias entries + output scale)

Float layers and every other parameter (batch norm, ...) count 32 bits per entry.
The model's average weight bits is the parameter-weighted mean over binarized layers
(the paper's model-level average, our reading); its average activation bits is the
plain mean over layers with binarized inputs.

Activation bits are a measurement only once the layer's activation quantizer has seen
data (training-mode batches or :func:`hbnn.calibrate`: ``num_batches_tracked > 0``);
before that they are the mix's target average. Each layer says which in ``act_bits_kind``
(``realized``, ``target``, or ``float`` for 32-bit inputs), the model in
``act_bits_kind`` (``target`` when any binarized input is), and the table marks target
values with ``*``.

Each layer also names its map structures (``weight_structure``, ``act_structure``: e.g.
``block64``, ``pixel``; ``entry`` per entry, None for float; ``+error`` marks error
allocation); the table shows them in a ``maps`` column when any layer is not per entry.
"""

from __future__ import annotations

import math

from torch import nn

from hbnn.nn import HBLayerMixin

__all__ = ["summarize", "format_summary"]

FLOAT_BITS = 32


def _weight_storage(layer: HBLayerMixin) -> dict:
    wq = layer.weight_quantizer
    n = layer.weight.numel()
    bias = 0 if layer.bias is None else layer.bias.numel()
    extra = FLOAT_BITS * (bias + (0 if layer.output_scale is None else 1))
    if wq is None:
        return {"weight_bits": float(FLOAT_BITS), "stored_bits": FLOAT_BITS * n + extra, "map_bits": 0}
    mix, spec = wq.mix, wq.spec
    avg = wq.realized_bits(layer.weight)
    units = wq.structure.n_units(layer.weight.shape)
    map_bits = 0 if mix.is_homogeneous else units * math.ceil(math.log2(len(mix.bits)))
    scale_count = mix.max_bits * (layer.weight.shape[0] if spec.per_channel else 1)
    planes = round(avg * n)
    return {
        "weight_bits": avg,
        "stored_bits": planes + map_bits + FLOAT_BITS * scale_count + extra,
        "map_bits": map_bits,
    }


def _act_bits_kind(aq) -> str:
    """``float`` (no quantizer), ``realized`` (its estimates saw data) or ``target`` (initial value)."""
    if aq is None:
        return "float"
    return "realized" if int(aq.num_batches_tracked) > 0 else "target"


def _structure_name(quantizer) -> str | None:
    """``block64``, ``pixel``, ``entry`` (``+error`` for error allocation); None without a quantizer."""
    if quantizer is None:
        return None
    return quantizer.structure.name + ("+error" if quantizer.spec.allocate == "error" else "")


def _layer_record(name: str, layer: nn.Module) -> dict:
    params = sum(p.numel() for p in layer.parameters(recurse=False))
    record = {"name": name, "type": type(layer).__name__, "params": params}
    if isinstance(layer, HBLayerMixin):
        record.update(_weight_storage(layer))
        aq = layer.act_quantizer
        record["act_bits"] = float(FLOAT_BITS) if aq is None else aq.realized_bits()
        record["act_bits_kind"] = _act_bits_kind(aq)
        record["weight_mix"] = None if layer.weight_quantizer is None else str(layer.weight_quantizer.mix)
        record["act_mix"] = None if aq is None else str(aq.mix)
        record["weight_structure"] = _structure_name(layer.weight_quantizer)
        record["act_structure"] = _structure_name(aq)
    else:
        record.update(weight_bits=float(FLOAT_BITS), act_bits=float(FLOAT_BITS), act_bits_kind="float", map_bits=0)
        record.update(stored_bits=FLOAT_BITS * params, weight_mix=None, act_mix=None)
        record.update(weight_structure=None, act_structure=None)
    return record


def summarize(model: nn.Module) -> dict:
    """Per-layer records for every conv/linear layer and model totals.

    Returns:
        ``{"layers": [ {name, type, params, weight_bits, act_bits, act_bits_kind, weight_mix,
        act_mix, weight_structure, act_structure, map_bits, stored_bits} ... ], "model": {params, binarized_params,
        avg_weight_bits, avg_act_bits, act_bits_kind, stored_bits, stored_bytes, fp32_bytes,
        compression}}``; ``act_bits_kind`` is ``realized``, ``target`` or ``float`` (see the
        module docstring).
    """
    layers = [
        _layer_record(n, m)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    total = sum(p.numel() for p in model.parameters())
    covered = sum(r["params"] for r in layers)
    stored = sum(r["stored_bits"] for r in layers) + FLOAT_BITS * (total - covered)
    binarized = [r for r in layers if r["weight_mix"] is not None]
    bin_params = sum(r["params"] for r in binarized)
    weighted = sum(r["weight_bits"] * r["params"] for r in binarized)
    act = [r["act_bits"] for r in layers if r["act_mix"] is not None]
    kinds = {r["act_bits_kind"] for r in layers if r["act_mix"] is not None}
    model_kind = "float" if not kinds else ("target" if "target" in kinds else "realized")
    return {
        "layers": layers,
        "model": {
            "params": total,
            "binarized_params": bin_params,
            "avg_weight_bits": weighted / bin_params if bin_params else float(FLOAT_BITS),
            "avg_act_bits": sum(act) / len(act) if act else float(FLOAT_BITS),
            "act_bits_kind": model_kind,
            "stored_bits": stored,
            "stored_bytes": math.ceil(stored / 8),
            "fp32_bytes": total * 4,
            "compression": (total * FLOAT_BITS) / stored if stored else 1.0,
        },
    }


def _act_cell(record: dict) -> str:
    """The ``a bits`` cell: 7 wide, then ``*`` for a target (not measured) value, else a space."""
    mark = "*" if record.get("act_bits_kind") == "target" else " "
    return f"{record['act_bits']:>7.3f}{mark}"


def _maps_cell(record: dict) -> str:
    """``block64/pixel``: the weight and activation map structures (``-`` for float)."""
    return f"{record.get('weight_structure') or '-'}/{record.get('act_structure') or '-'}"


def format_summary(summary: dict) -> str:
    """A fixed-width text table of :func:`summarize`'s result (``*``: target act bits, not measured;
    a ``maps`` column of weight/activation map structures when any is not per entry)."""
    maps = any(r.get(k) not in (None, "entry") for r in summary["layers"]
               for k in ("weight_structure", "act_structure"))
    head = f"{'layer':<28} {'type':<9} {'params':>9} {'w bits':>7} {'a bits':>7}  {'stored KiB':>11}"
    head += "  maps (w/a)" if maps else ""
    lines = [head, "-" * len(head)]
    for r in summary["layers"]:
        lines.append(
            f"{r['name'][:28]:<28} {r['type'][:9]:<9} {r['params']:>9} {r['weight_bits']:>7.3f} "
            f"{_act_cell(r)} {r['stored_bits'] / 8192:>11.2f}" + (f"  {_maps_cell(r)}" if maps else "")
        )
    m = summary["model"]
    lines.append("-" * len(head))
    lines.append(
        f"model: {m['params']} params ({m['binarized_params']} binarized), avg weight bits "
        f"{m['avg_weight_bits']:.3f}, avg act bits {m['avg_act_bits']:.3f}"
        f"{' (target)' if m.get('act_bits_kind') == 'target' else ''}, stored {m['stored_bytes'] / 1024:.1f} KiB "
        f"vs fp32 {m['fp32_bytes'] / 1024:.1f} KiB ({m['compression']:.1f}x smaller)"
    )
    if any(r.get("act_bits_kind") == "target" for r in summary["layers"]):
        lines.append("* target act bits: the activation quantizer never saw data (calibrate it: "
                     "hbnn.calibrate or hbnn calibrate RUN)")
    return "\n".join(lines)
