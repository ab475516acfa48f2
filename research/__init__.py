"""The repository's research harness around the ``hbnn`` library (not shipped in its wheel).

Everything here reads or drives the library; nothing in ``hbnn`` imports it:

- :mod:`research.showcase` -- the README's main job (FP vs 1/2/1.4-bit on Fashion-MNIST);
- :mod:`research.stats` -- result lines aggregated over seeds, markdown tables;
- :mod:`research.plots` -- figures from result files;
- :mod:`research.verdicts` -- the five claim checks;
- :mod:`research.report` -- refill a document's ``<!-- hbnn plot ... -->`` regions;
- :mod:`research.cli` -- ``python -m research showcase`` / ``python -m research plot``.

Run from the repository root (``make run`` does), so that ``research`` is importable.
"""

__all__: list[str] = []
