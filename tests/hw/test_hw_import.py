"""``import hbnn.hw`` stays light: no plotting library, no model registry, no YAML parsing."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_light():
    code = (
        "import sys, hbnn; before = set(sys.modules); import hbnn.hw; "
        "added = set(sys.modules) - before; "
        "print(sorted(m for m in added if m.split('.')[0] in ('matplotlib', 'yaml') "
        "or m in ('hbnn.models', 'hbnn.convert', 'hbnn.hw.plot', 'hbnn.hw.commands')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
