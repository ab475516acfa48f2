"""The mutation fuzzer in CI: mutated packed files and checkpoints (``scripts/fuzz_files.py``).

Targets (issue 12): no silent load whose output or restored state differs from the
original, no traceback (in-process or through the CLI), no crash or hang; the same seed
gives byte-identical mutants and the same classes.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_mutants_no_silent_load_traceback_crash_or_hang_and_deterministic(tmp_path, load_script):
    fuzz = load_script("fuzz_files")
    work = tmp_path / "fuzz"
    summary = fuzz.run_fuzz(40, seed=0, jobs=2, timeout=60, work=work)
    assert "error" not in summary, summary.get("error")
    counts = summary["counts"]
    assert sum(counts.values()) == 40
    assert set(summary["by_kind"]) == {"packed", "checkpoint"}
    failures = {c: counts[c] for c in fuzz.FAILURES if counts[c]}
    shown = {c: summary["examples"].get(c) for c in failures}
    assert not failures, f"{failures}: {json.dumps(shown, indent=1)[:6000]}"
    assert counts["refused-clean"] > 0  # the mutants do reach the loaders' checks

    # Deterministic given the seed: the same originals give the same mutant bytes (hashed) and
    # classes, here probed in this process (jobs=0) instead of the workers.
    again = fuzz.run_fuzz(12, seed=0, jobs=0, work=work, reuse=True)
    assert again["cases"] == summary["cases"][:12]
    assert all(len(row[2]) == 64 for row in again["cases"])
    originals = json.loads((work / "originals.json").read_text())
    other = [fuzz.mutant_sha256(fuzz.make_mutant(originals, ["packed", "checkpoint"], 1, i, tmp_path / f"o{i}")["path"])
             for i in range(6)]
    assert other != [row[2] for row in summary["cases"][:6]]  # another seed, other mutants


def _case(kind, field, in_range=False):
    return {"original": "o", "kind": kind, "field": field, "in_range": in_range}


def test_advisory_fields_are_valid_different_only_when_the_forward_pass_is_identical(load_script):
    fuzz = load_script("fuzz_files")
    same, other = {"status": "loaded", "digest": "a"}, {"status": "loaded", "digest": "b"}
    refs = {"o": {"load": same, "infer": same}}
    classify = fuzz.classify
    # packed meta.source.step removed: infer reports another step, the forward pass is the same
    assert classify(_case("packed", "meta.source.step"), {"load": same, "infer": other}, refs) == (
        "valid-different", "infer")
    assert classify(_case("packed", "meta.data"), {"load": same, "infer": other}, refs)[0] == "valid-different"
    # the forward pass decides: an advisory edit that changes it is SILENT
    assert classify(_case("packed", "meta.data.data_dir"), {"load": other, "infer": other}, refs) == (
        "SILENT", "load")
    # a non-advisory field whose CLI output changes is SILENT even with an identical forward pass
    assert classify(_case("packed", "layers[0].geometry"), {"load": same, "infer": other}, refs) == (
        "SILENT", "infer")
    assert classify(_case("packed", "metadata"), {"load": same, "infer": other}, refs)[0] == "SILENT"
    assert classify(_case("checkpoint", "wall_time_s"), {"load": same, "infer": other}, refs)[0] == "valid-different"
    assert classify(_case("packed", "layers[0].bias", True), {"load": other, "infer": other}, refs)[0] == (
        "valid-different")
    assert classify(_case("packed", "meta"), {"load": same, "infer": {"status": "error"}}, refs)[0] == "TRACEBACK"
