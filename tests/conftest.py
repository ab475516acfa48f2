"""Suite-wide pytest configuration: hypothesis settings profiles (property tests only).

``ci`` (default) keeps ``tests/quant/test_properties.py`` under 20 s on one core and is
derandomized, so a failure reproduces; ``big`` (``HYPOTHESIS_PROFILE=big``) runs 1000 random
examples per property (> 10,000 cases over the file). Neither writes an example database.
"""

import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a dev extra; the property tests skip without it
    settings = None

if settings is not None:
    _COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
    settings.register_profile("big", max_examples=1000, **_COMMON)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
