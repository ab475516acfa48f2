"""Shape propagation through a packed model's layer records, from its ``input_shape``.

Every op's output shape is computed from the (validated) records alone, before any
module is built, for a batch of ``N`` inputs of ``input_shape``::

    conv2d       [N, C, H, W] -> [N, O, H', W'],  C = in_channels,
                 H' = floor((H + 2 p - d (k - 1) - 1) / s) + 1 >= 1  ('same': H' = H)
    linear       [N, I] -> [N, O],                I = in_features
    batch_norm   [N, C, H, W] (dim 2) or [N, C] / [N, C, L] (dim 1), C = num_features
    max/avg pool [N, C, H, W] -> [N, C, H', W'],  the (dilated) window fits the padded input,
                 H' as for a conv (ceil_mode: rounded up, the last window starting inside)
    adaptive     [N, C, H, W] -> [N, C, oh, ow]           (avg and max)
    flatten      dims start..end merged; the batch dimension is never merged
    reshape      [N, *s] -> [N, *shape],                 prod(s) = prod(shape)
    relu, hardtanh, leaky_relu, silu, hardswish, sigmoid, hardsigmoid, tanh, identity: unchanged
    prelu        [N, C, ...] unchanged, C = num_parameters (or num_parameters = 1)
    softmax, log_softmax: unchanged; dim (negative: from the end) not the batch dimension
    add, sub     two inputs of one shape -> that shape
    mul          [N, *a], [N, *b] of one rank, one broadcast to the other -> the larger
    cat          [N, ...] equal but for dim d >= 1 -> that dim summed
    add_constant, mul_constant, div_constant: [N, *s] unchanged; the constant's shape
                 broadcasts to [1, *s] (trailing dims aligned, each 1 or equal)
    global_avg_pool [N, C, H, W] -> [N, C] (keepdim: [N, C, 1, 1])
    subsample    [N, C, H, W] -> [N, C, ceil(H / s_h), ceil(W / s_w)]
    pad_channels [N, C, H, W] -> [N, before + C + after, H, W]
    zero_pad     [N, C, H, W] -> [N, f + C + k, t + H + b, l + W + r],  padding (l, r, t, b, f, k)

Nodes take their inputs' shapes (:func:`hbnn.export.topology.input_indices`; a chain's
is the previous layer's), and the last output must be ``[N, K]`` (logits; ``K = model.num_classes`` when recorded).
A mismatch is a :class:`hbnn.errors.FormatError` in one line naming the layer, its
input shape and what it needs.
"""

from __future__ import annotations

import math
from typing import Callable

from hbnn.errors import FormatError
from hbnn.export.topology import input_indices

__all__ = ["output_shapes", "check_shapes"]

Shape = tuple[int, ...]  # one input's shape, the batch dimension left out


class _Mismatch(Exception):
    """What a layer needs from its input (turned into a FormatError naming the layer)."""


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise _Mismatch(what)


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, list) else [v, v]


def _window(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool, what: str) -> int:
    """Output side of a conv/pool window (torch's rule); the window must fit the padded input."""
    span = d * (k - 1) + 1
    _need(size + 2 * p >= span, f"its {what} window spans {span} but the padded input side is {size + 2 * p}")
    out = (-(-(size + 2 * p - span) // s) if ceil_mode else (size + 2 * p - span) // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _image(s: Shape, channels: int | None, what: str) -> None:
    _need(len(s) == 3, f"an [N, C, H, W] input for {what}")
    _need(channels is None or s[0] == channels, f"{channels} input channels")


def _conv(rec: dict, s: Shape) -> Shape:
    g = rec["geometry"]
    _image(s, g["in_channels"], "a conv2d")
    if g["padding"] == "same":
        return (g["out_channels"], *s[1:])
    pad = [0, 0] if g["padding"] == "valid" else g["padding"]
    if g["padding_mode"] in ("reflect", "circular"):
        strict = g["padding_mode"] == "reflect"
        _need(all(p < n if strict else p <= n for p, n in zip(pad, s[1:])),
              f"padding {pad} {'<' if strict else '<='} the input side for padding_mode {g['padding_mode']}")
    sides = [_window(n, k, st, p, d, False, "dilated kernel")
             for n, k, st, p, d in zip(s[1:], g["kernel_size"], g["stride"], pad, g["dilation"])]
    return (g["out_channels"], *sides)


def _linear(rec: dict, s: Shape) -> Shape:
    n = rec["geometry"]["in_features"]
    _need(len(s) == 1, f"an [N, {n}] input (flattened features)")
    _need(s[0] == n, f"{n} input features (in_features)")
    return (rec["geometry"]["out_features"],)


def _batch_norm(rec: dict, s: Shape) -> Shape:
    n = rec["num_features"]
    if rec["dim"] == 2:
        _image(s, n, "batch_norm dim 2")
    else:
        _need(len(s) in (1, 2), "an [N, C] or [N, C, L] input for batch_norm dim 1")
        _need(s[0] == n, f"{n} features (num_features)")
    return s


def _pool(rec: dict, s: Shape) -> Shape:
    a = rec["attrs"]
    _image(s, None, rec["op"])
    k, st, p = _pair(a["kernel_size"]), _pair(a["stride"]), _pair(a["padding"])
    d = _pair(a.get("dilation", 1))
    return (s[0], *(_window(n, *w, a["ceil_mode"], "pooling") for n, *w in zip(s[1:], k, st, p, d)))


def _adaptive(rec: dict, s: Shape) -> Shape:
    _image(s, None, rec["op"])
    size = _pair(rec["attrs"]["output_size"])
    return (s[0], *(n if o is None else o for o, n in zip(size, s[1:])))


def _flatten(rec: dict, s: Shape) -> Shape:
    ndim = len(s) + 1
    a = rec["attrs"]
    start, end = (v + ndim if v < 0 else v for v in (a["start_dim"], a["end_dim"]))
    _need(0 <= start < ndim and 0 <= end < ndim, f"start_dim {a['start_dim']} and end_dim {a['end_dim']} within "
                                                 f"the input's {ndim} dimensions")
    _need(start <= end, f"start_dim {a['start_dim']} not after end_dim {a['end_dim']}")
    _need(start >= 1, "start_dim >= 1 (it would merge the batch dimension)")
    full = (0, *s)  # index 0 is the batch dimension
    return (*full[1:start], math.prod(full[start:end + 1]), *full[end + 1:])


def _prelu(rec: dict, s: Shape) -> Shape:
    n = rec["num_parameters"]
    _need(n == 1 or (len(s) >= 1 and s[0] == n), f"{n} channels (num_parameters)")
    return s


def _add(rec: dict, a: Shape, b: Shape) -> Shape:
    _need(a == b, f"two inputs of one shape (the other input is {_fmt(b)})")
    return a


def _cat(rec: dict, *shapes: Shape) -> Shape:
    first, d = shapes[0], rec["attrs"]["dim"] - 1  # index without the batch dimension
    _need(len(first) > d, f"inputs with a dim {d + 1}")
    for other in shapes[1:]:
        _need(len(other) == len(first) and other[:d] == first[:d] and other[d + 1:] == first[d + 1:],
              f"inputs equal but for dim {d + 1} (another input is {_fmt(other)})")
    return (*first[:d], sum(t[d] for t in shapes), *first[d + 1:])


def _mul(rec: dict, a: Shape, b: Shape) -> Shape:
    fits = (lambda x, y: all(p in (1, q) for p, q in zip(x, y)))
    _need(len(a) == len(b) and (fits(b, a) or fits(a, b)),
          f"two inputs of one rank, one broadcasting to the other (the other input is {_fmt(b)})")
    return a if fits(b, a) else b


def _softmax(rec: dict, s: Shape) -> Shape:
    d = rec["attrs"]["dim"]
    _need(1 <= (d if d >= 0 else d + len(s) + 1) <= len(s), f"a dim {d} other than the batch dimension")
    return s


def _reshape(rec: dict, s: Shape) -> Shape:
    shape = tuple(rec["attrs"]["shape"])
    _need(math.prod(shape) == math.prod(s), f"{math.prod(shape)} elements per input for shape {list(shape)}")
    return shape


def _constant(rec: dict, s: Shape) -> Shape:
    c, full = rec["shape"], (1, *s)
    _need(len(c) <= len(full) and all(p in (1, q) for p, q in zip(reversed(c), reversed(full))),
          f"a shape the constant {list(c)} broadcasts to without growing it")
    return s


def _global(rec: dict, s: Shape) -> Shape:
    _image(s, None, "global_avg_pool")
    return (s[0], 1, 1) if rec["attrs"]["keepdim"] else (s[0],)


def _subsample(rec: dict, s: Shape) -> Shape:
    _image(s, None, "subsample")
    sh, sw = rec["attrs"]["stride"]
    return (s[0], -(-s[1] // sh), -(-s[2] // sw))


def _pad_channels(rec: dict, s: Shape) -> Shape:
    _image(s, None, "pad_channels")
    a = rec["attrs"]
    return (a["before"] + s[0] + a["after"], *s[1:])


def _zero_pad(rec: dict, s: Shape) -> Shape:
    _image(s, None, "zero_pad")
    l, r, t, b, f, k = rec["attrs"]["padding"]
    return (f + s[0] + k, t + s[1] + b, l + s[2] + r)


def _same(rec: dict, s: Shape) -> Shape:
    return s


_OUT: dict[str, Callable[..., Shape]] = {
    "conv2d": _conv, "linear": _linear, "batch_norm": _batch_norm, "prelu": _prelu,
    "max_pool2d": _pool, "avg_pool2d": _pool, "adaptive_avg_pool2d": _adaptive, "adaptive_max_pool2d": _adaptive,
    "flatten": _flatten, "reshape": _reshape,
    "relu": _same, "hardtanh": _same, "identity": _same, "leaky_relu": _same, "silu": _same, "hardswish": _same,
    "sigmoid": _same, "hardsigmoid": _same, "tanh": _same, "softmax": _softmax, "log_softmax": _softmax,
    "add": _add, "sub": _add, "mul": _mul, "cat": _cat, "global_avg_pool": _global, "subsample": _subsample,
    "pad_channels": _pad_channels, "zero_pad": _zero_pad, "add_constant": _constant,
    "mul_constant": _constant, "div_constant": _constant,
}


def _fmt(s: Shape) -> str:
    return "[" + ", ".join(["N", *map(str, s)]) + "]"


def output_shapes(layers: list[dict], input_shape: list[int], where: str) -> list[Shape]:
    """Each layer's output shape (without the batch dimension) for inputs of ``input_shape``.

    Args:
        layers: validated layer records.
        input_shape: one input's shape.
        where: the file, for messages (``"packed model m.hbnn"``).

    Raises:
        FormatError: a layer whose input does not fit it (names the layer, its input and what it needs).
    """
    first: Shape = tuple(input_shape)
    out: list[Shape] = []
    for i, (rec, ins) in enumerate(zip(layers, input_indices(layers, where))):
        args = [first if j < 0 else out[j] for j in ins]
        try:
            s = _OUT[rec["op"]](rec, *args)
        except _Mismatch as exc:
            raise FormatError(f"{where}: layer {i} ({rec['name']}): shapes do not chain on input_shape "
                              f"{list(input_shape)}: its input is {_fmt(args[0])}, it needs {exc}") from None
        _need_positive(s, i, rec, where)
        out.append(s)
    return out


def _need_positive(s: Shape, i: int, rec: dict, where: str) -> None:
    if any(n < 1 for n in s):
        raise FormatError(f"{where}: layer {i} ({rec['name']}): output {_fmt(s)} is empty")


def check_shapes(header: dict, where: str) -> Shape:
    """Propagate ``input_shape`` through the validated header's layers; the output must be ``[N, K]``.

    Returns:
        ``(K,)``, the shape of one output.

    Raises:
        FormatError: a layer that does not fit its input, or a final output other than
            ``[N, K]`` (``K = model.num_classes`` when the header records it).
    """
    shapes = output_shapes(header["layers"], header["input_shape"], where)
    last, n = shapes[-1], len(shapes) - 1
    name = header["layers"][-1]["name"]
    if len(last) != 1:
        raise FormatError(f"{where}: layer {n} ({name}): the output is {_fmt(last)}; a packed model outputs "
                          "[N, K] logits")
    classes = (header.get("model") or {}).get("num_classes")
    if classes is not None and last[0] != classes:
        raise FormatError(f"{where}: layer {n} ({name}): the output is {_fmt(last)}; the model records "
                          f"num_classes {classes}")
    return last
