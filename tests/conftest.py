"""Suite-wide pytest configuration: hypothesis settings profiles, and the ``load_script`` fixture.

``ci`` (default) keeps ``tests/quant/test_properties.py`` under 20 s on one core and is
derandomized, so a failure reproduces; ``big`` (``HYPOTHESIS_PROFILE=big``) runs 1000 random
examples per property (> 10,000 cases over the file). Neither writes an example database.
"""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a dev extra; the property tests skip without it
    settings = None

if settings is not None:
    _COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
    settings.register_profile("big", max_examples=1000, **_COMMON)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def load_script():
    """``load_script(name)`` imports ``scripts/<name>.py`` as a module (the scripts are files, not a package)."""
    return _load_script


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"hbnn_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
