"""Lazy JIT build: importing compiles nothing; a fresh build says so once on stderr; no compiler ->
torch fallback with one warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE_IMPORT = """
import hbnn, hbnn.kernels
from hbnn.kernels import binary_linear, binary_conv2d, pack_planes
import os, json
root = os.environ["HBNN_CACHE_DIR"]
print(json.dumps({"exists": os.path.exists(root)}))
"""

PROBE_FALLBACK = """
import json, warnings, torch
from hbnn.kernels import available_backends, binary_linear, cpu_features, pack_planes
from hbnn.kernels import reference as ref
g = torch.Generator().manual_seed(0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x = pack_planes(torch.rand(2, 5, 70, generator=g) > 0.5, torch.rand(2, 5, 70, generator=g) > 0.3, torch.ones(2))
    w = pack_planes(torch.rand(1, 3, 70, generator=g) > 0.5, None, torch.ones(1))
    y1 = binary_linear(x, w)
    y2 = binary_linear(x, w)
try:
    binary_linear(x, w, backend="c")
    forced = "no error"
except RuntimeError as exc:
    forced = str(exc)
print(json.dumps({
    "warnings": [str(c.message) for c in caught],
    "equal": bool(torch.equal(y1, ref.binary_linear_ref(x, w))) and bool(torch.equal(y1, y2)),
    "backends": list(available_backends()),
    "selected": cpu_features()["selected"],
    "forced": forced,
}))
"""


def _run(code: str, env_extra: dict, stderr: list | None = None) -> dict:
    env = {**os.environ, **env_extra}
    env.pop("HBNN_KERNEL_VARIANT", None)
    env.pop("HBNN_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    if stderr is not None:
        stderr.append(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_compiles_nothing(tmp_path):
    cache = tmp_path / "cache"
    assert _run(PROBE_IMPORT, {"HBNN_CACHE_DIR": str(cache)}) == {"exists": False}


def test_missing_compiler_falls_back_to_torch_with_one_warning(tmp_path):
    res = _run(PROBE_FALLBACK, {"HBNN_CACHE_DIR": str(tmp_path / "cache"), "HBNN_CC": "/nonexistent/cc"})
    assert len(res["warnings"]) == 1 and "pure-torch fallback" in res["warnings"][0]
    assert res["equal"] and res["backends"] == ["torch"] and res["selected"] is None
    assert "unavailable" in res["forced"]


def test_first_call_builds_into_the_cache_dir(tmp_path, c_variants):
    code = PROBE_IMPORT.replace('print(json.dumps({"exists": os.path.exists(root)}))', "") + (
        "import torch\n"
        "p = pack_planes(torch.ones(1, 2, 3, dtype=torch.bool), None, torch.ones(1))\n"
        "binary_linear(p, p)\n"
        "libs = [f for d, _, fs in os.walk(root) for f in fs]\n"
        "print(json.dumps({'libs': libs}))\n"
    )
    cache, err = tmp_path / "cache", []
    res = _run(code, {"HBNN_CACHE_DIR": str(cache)}, err)
    assert res["libs"] == ["libhbnn_kernels.so"]  # no temporary files left behind
    assert err[0].splitlines().count(f"hbnn: compiling C kernels (one time, cached in {cache}) ...") == 1
    # A second process loads the cached build: no notice; build() says it was cached.
    code = "import json, hbnn.kernels as k; print(json.dumps(k.build()))"
    res = _run(code, {"HBNN_CACHE_DIR": str(cache)}, err)
    assert "compiling" not in err[1] and res["compiled"] is False and res["library"].startswith(str(cache))


def test_c_backend_reports_features(c_variants):
    from hbnn.kernels import cpu_features

    info = cpu_features()
    assert info["variants"][0] == "portable" and info["selected"] in info["variants"]
    if info["features"]["avx512vpopcntdq"] and info["features"]["avx512bw"]:
        assert info["selected"] == "avx512"
    elif not info["features"]["avx2"]:
        pytest.skip("no SIMD variant on this CPU")
