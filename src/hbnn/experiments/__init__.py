"""Experiments: sweeps that write result files.

- :mod:`hbnn.experiments.spec` -- experiment YAML (``configs/experiments``) -> named runs;
- :mod:`hbnn.experiments.kinds` -- what each experiment kind does (expand, execute);
- :mod:`hbnn.experiments.runner` -- :func:`sweep` (skip done, resume interrupted, append lines);
- :mod:`hbnn.experiments.results` -- the JSON-lines result schema, atomic appends;
- :mod:`hbnn.experiments.fig2a` -- the approximation-error study (no training);
- :mod:`hbnn.experiments.layerwise` -- layer-level mixing solver (Fig. 3a baseline);
- :mod:`hbnn.experiments.paper` -- the paper's Fig. 2a reference numbers.

Tables, figures and claim checks that only read the result files are the repository's
research harness (``research.stats``, ``research.plots``, ``research.verdicts``,
``python -m research plot``), not part of the library.

Example:
    >>> from hbnn.experiments import load_experiment, expand
    >>> runs = expand(load_experiment("fig2b"))          # doctest: +SKIP
    >>> runs[0].name                                      # doctest: +SKIP
    'fig2b/w1/seed0'
"""

from hbnn.experiments.layerwise import LayerPlan, solve_layer_bits
from hbnn.experiments.results import append_result, read_results
from hbnn.experiments.runner import rerun, sweep
from hbnn.experiments.kinds import expand
from hbnn.experiments.spec import Experiment, RunSpec, load_experiment

__all__ = [
    "Experiment",
    "LayerPlan",
    "RunSpec",
    "append_result",
    "expand",
    "load_experiment",
    "read_results",
    "rerun",
    "solve_layer_bits",
    "sweep",
]
