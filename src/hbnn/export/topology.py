"""The graph of a packed file's layer records: who feeds whom, checked before anything runs.

A version-3 record names its inputs: ``"inputs": [name, ...]``, each the ``name`` of an
*earlier* record or ``"input"`` (the model input, :data:`hbnn.export.ops.INPUT`);
records are listed in topological order, names are unique, and the last record's
output is the model's output. A chain is the linear case (each record's input is the
previous one). Version-2 records have no ``inputs`` and form a chain.

:func:`input_indices` turns the names into record indices (``-1`` = the model input) and
refuses, in one :class:`hbnn.errors.FormatError` line naming the node: a missing node, a
reference to the node itself or a later one (a cycle, or not topologically ordered), a
wrong number of inputs for the op (:func:`hbnn.export.ops.arity`), a duplicate or reserved
name, and a node whose output nobody uses.
"""

from __future__ import annotations

from typing import Any

from hbnn.errors import FormatError
from hbnn.export.ops import INPUT, arity

__all__ = ["input_indices", "last_uses", "consumers"]


def _arity_text(op: str) -> str:
    lo, hi = arity(op)
    return f"{lo}" if lo == hi else f"{lo} or more"


def _chain(layers: list) -> list[list[int]]:
    return [[i - 1] for i in range(len(layers))]


def input_indices(layers: list, where: str) -> list[list[int]]:
    """Each record's inputs as indices of earlier records (``-1``: the model input).

    Args:
        layers: layer records whose ``name`` and ``op`` are valid (``inputs`` is checked here).
        where: the file, for messages (``"packed model m.hbnn"``).

    Raises:
        FormatError: see the module docstring.
    """
    if not any(isinstance(r, dict) and "inputs" in r for r in layers):
        return _chain(layers)
    index: dict[str, int] = {}
    for i, rec in enumerate(layers):
        at = f"{where}: layer {i} ({rec['name']})"
        if rec["name"] == INPUT:
            raise FormatError(f"{at}: name: invalid value {INPUT!r}; allowed: any other name ({INPUT!r} is the "
                              "model input)")
        if rec["name"] in index:
            raise FormatError(f"{at}: name: {rec['name']!r} is also layer {index[rec['name']]}'s; node names are unique")
        index[rec["name"]] = i
    out = []
    for i, rec in enumerate(layers):
        out.append(_inputs_of(i, rec, index, f"{where}: layer {i} ({rec['name']})"))
    _check_all_used(layers, out, where)
    return out


def _inputs_of(i: int, rec: dict, index: dict[str, int], at: str) -> list[int]:
    names: Any = rec.get("inputs")
    if not isinstance(names, list) or not all(isinstance(n, str) and n.isprintable() for n in names):
        raise FormatError(f"{at}: inputs: invalid value {names!r:.80}; allowed: a list of node names")
    lo, hi = arity(rec["op"])
    if len(names) < lo or (hi is not None and len(names) > hi):
        raise FormatError(f"{at}: inputs: {rec['op']} takes {_arity_text(rec['op'])} inputs, the record names "
                          f"{len(names)}")
    found = []
    for name in names:
        if name == INPUT:
            found.append(-1)
        elif name not in index:
            raise FormatError(f"{at}: inputs: node {name!r} does not exist (a missing node)")
        elif index[name] >= i:
            raise FormatError(f"{at}: inputs: node {name!r} is layer {index[name]}, not an earlier one (a cycle, "
                              "or records out of topological order)")
        else:
            found.append(index[name])
    return found


def _check_all_used(layers: list, inputs: list[list[int]], where: str) -> None:
    used = {j for ins in inputs for j in ins}
    for i, rec in enumerate(layers[:-1]):
        if i not in used:
            raise FormatError(f"{where}: layer {i} ({rec['name']}): its output is never used (only the last node's "
                              "output is the model's)")


def last_uses(inputs: list[list[int]]) -> list[list[int]]:
    """For each node, the values (indices, ``-1`` = the input) whose last consumer it is."""
    last: dict[int, int] = {}
    for i, ins in enumerate(inputs):
        for j in ins:
            last[j] = i
    out: list[list[int]] = [[] for _ in inputs]
    for j, i in last.items():
        out[i].append(j)
    return out


def consumers(inputs: list[list[int]]) -> dict[int, list[int]]:
    """For each value (node index, ``-1`` = the input), the nodes that read it, in order."""
    out: dict[int, list[int]] = {}
    for i, ins in enumerate(inputs):
        for j in ins:
            out.setdefault(j, []).append(i)
    return out
