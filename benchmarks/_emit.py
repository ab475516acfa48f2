"""Shared output of the benchmarks: the JSON on stdout, and atomically in a file if asked."""

from __future__ import annotations

import json

from hbnn.io import atomic_write_text

__all__ = ["emit"]


def emit(result: dict, out: str | None = None) -> dict:
    """Print ``result`` as indented JSON; also write it to ``out`` (atomically) when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        atomic_write_text(out, text + "\n")
    return result
