#!/usr/bin/env python
"""Mutation fuzzer for the files hbnn reads: packed models and checkpoints (run directories).

``python scripts/fuzz_files.py N [--seed S] [--kinds packed,checkpoint] [--out FILE.json]``

1. Builds small valid originals in a scratch folder (``scripts/fuzz_originals.py``): two
   packed files (exported from a tiny run; a hand-built chain of every layer kind) and a
   checkpointed run directory with an older step, another run and a float run beside it.
2. Makes ``N`` mutants (``scripts/fuzz_mutations.py``), deterministic: case ``i`` uses
   ``Random(f"{seed}/{i}")``, so the same originals and seed give byte-identical mutants
   (``cases`` in ``--out`` lists each case's ``mutant_sha256`` and class; ``fingerprint``
   hashes them all). The originals carry a random ``run_id``, so the bytes of checkpoint
   mutants match within one build (``--work`` with ``--reuse``), the classes across builds.
3. Probes every mutant (``scripts/fuzz_probes.py``) in worker processes (``--jobs``) under
   a per-case time limit: packed -- :func:`hbnn.export.load` plus a forward pass on a
   fixed input, and through :func:`hbnn.cli.main` ``infer`` and ``hw estimate --packed``;
   checkpoint -- :func:`hbnn.train.checkpoint.load_checkpoint` plus a restore into the
   model, optimizer and scheduler built from the original config, and ``summary`` /
   ``eval``. CLI probes run for resealed mutants, for mutants the in-process loader did
   not refuse, and for a 10% sample of the rest.

Each case gets the worst class of its probes (``CLASSES``, best first): ``refused-clean``
(an hbnn error, or exit 2 with one stderr line), ``loaded-identical`` (output, or restored
state and metadata, bit-identical to the original's), ``valid-different`` (a resealed
in-range edit accepted: a valid different file; or an advisory field changed, see
below), ``SILENT`` (loaded, different, not a valid edit), ``TRACEBACK`` (another
exception type, a multi-line message, an exit code outside {0, 2}), ``CRASH`` / ``HANG``
(the worker died / ran past ``--timeout``).

Advisory fields (``fuzz_probes.ADVISORY``): packed ``meta`` (``meta.source.*`` provenance
that ``infer`` reports, ``meta.data.*`` the dataset ``infer`` reads by default),
``hbnn_version``, ``torch_version``, ``source_params``; checkpoint ``wall_time_s``,
``hbnn_version``, ``torch_version``. Editing or removing one (or anything under it)
legitimately changes only what a tool reports or which data it reads: when the
in-process probe is identical (packed: the forward pass on the fixed input; checkpoint:
the restored state and the state metadata), a different CLI output is
``valid-different``. So for a packed file the forward pass decides ``SILENT``; a CLI
output that differs after an edit of a non-advisory field with an identical forward pass
(e.g. a cost estimate) is still ``SILENT``.

``accepted_invalid`` counts identical loads of values the format forbids (bool for int,
NaN, ...): not a failure, a hint. Prints a JSON summary (``counts``, ``by_kind``,
``by_operator``, ``failure_groups``, up to 5 ``examples`` per class and file kind);
exits 1 on any SILENT, TRACEBACK, CRASH or HANG (3 if an original fails its own probes).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "src"))

from fuzz_mutations import make_mutant  # noqa: E402 - the scripts folder is on the path now
from fuzz_originals import REPO, build_originals, fabricate_dataset  # noqa: E402
from fuzz_probes import ADVISORY, CLASSES, FAILURES, classify, mutant_sha256, probe  # noqa: E402

__all__ = ["CLASSES", "FAILURES", "ADVISORY", "fabricate_dataset", "build_originals", "make_mutant",
           "mutant_sha256", "probe", "classify", "summarise", "run_fuzz", "main"]


# ----------------------------------------------------------------------------- workers

def _load_originals(work: Path) -> dict:
    from hbnn.export import read_packed
    from hbnn.train.checkpoint import load_checkpoint

    originals = json.loads((work / "originals.json").read_text())
    for orig in originals.values():
        if orig["kind"] == "packed":
            orig["input_shape"] = read_packed(orig["path"])[0]["input_shape"]
        else:
            orig["meta"] = load_checkpoint(orig["path"]).metadata
    return originals


def _quiet_process() -> None:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)


def worker(work: Path, seed: int, kinds: list[str]) -> None:
    """Serve cases: read ``i`` per line on stdin, answer one JSON line (library output goes to stderr)."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _quiet_process()
    originals = _load_originals(work)
    scratch = Path(tempfile.mkdtemp(prefix="mutant-", dir=work))
    for line in sys.stdin:
        channel.write(json.dumps(_run_case(originals, kinds, seed, int(line), scratch), default=str) + "\n")
        channel.flush()


def _run_case(originals: dict, kinds: list[str], seed: int, i: int, scratch: Path) -> dict:
    """Write mutant ``i`` under ``scratch``, hash it and probe it: the case with its ``results``."""
    case = make_mutant(originals, kinds, seed, i, scratch / "m")
    t0 = time.monotonic()
    case["mutant_sha256"] = mutant_sha256(case["path"])
    case["results"] = probe(case, originals)
    case["seconds"] = round(time.monotonic() - t0, 3)
    return json.loads(json.dumps(case, default=str))  # the same JSON a worker answers


def _inline(work: Path, originals: dict, kinds: list[str], seed: int, indices: list[int]):
    """``--jobs 0``: the cases in this process, one after another (no time limit, no crash isolation)."""
    scratch = Path(tempfile.mkdtemp(prefix="mutant-", dir=work))
    for i in indices:
        yield i, _run_case(originals, kinds, seed, i, scratch), None


class _Pool:
    """Worker subprocesses with a per-case deadline; a dead or late worker is replaced."""

    def __init__(self, jobs: int, argv: list[str], timeout: float) -> None:
        self.argv, self.timeout, self.sel = argv, timeout, selectors.DefaultSelector()
        self.slots: list[dict] = [self._spawn() for _ in range(jobs)]

    def _spawn(self) -> dict:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
        slot = {"proc": proc, "case": None, "since": 0.0, "started": time.monotonic()}
        self.sel.register(proc.stdout, selectors.EVENT_READ, slot)
        return slot

    def _replace(self, slot: dict) -> None:
        self.sel.unregister(slot["proc"].stdout)
        with contextlib.suppress(ProcessLookupError):
            slot["proc"].kill()
        slot["proc"].wait()
        self.slots[self.slots.index(slot)] = self._spawn()

    def run(self, indices: list[int]):
        """Yield ``(i, case or None, failure class or None)`` as cases finish."""
        todo = list(reversed(indices))
        while todo or any(s["case"] is not None for s in self.slots):
            for slot in self.slots:
                if slot["case"] is None and todo:
                    slot["case"], slot["since"] = todo.pop(), time.monotonic()
                    slot["proc"].stdin.write(f"{slot['case']}\n")
                    slot["proc"].stdin.flush()
            for key, _ in self.sel.select(timeout=0.5):
                slot = key.data
                line = slot["proc"].stdout.readline()
                i, slot["case"] = slot["case"], None
                if line:
                    yield i, json.loads(line), None
                else:
                    self._replace(slot)
                    yield i, None, "CRASH"
            now = time.monotonic()
            for slot in list(self.slots):  # startup (imports) gets extra time once
                extra = 60 if slot["since"] - slot["started"] < 1 else 0
                if slot["case"] is not None and now - slot["since"] > self.timeout + extra:
                    i = slot["case"]
                    self._replace(slot)
                    yield i, None, "HANG"

    def close(self) -> None:
        for slot in self.slots:
            slot["proc"].stdin.close()
            slot["proc"].wait(timeout=30)


# ----------------------------------------------------------------------------- driver

def _example(case: dict, which: str | None) -> dict:
    res = case.get("results", {}).get(which, {}) if which else {}
    return {"i": case["i"], "kind": case["kind"], "original": case["original"], "op": case["op"],
            "field": case.get("field"), "edit": case.get("edit"), "probe": which,
            "exception": res.get("type"), "message": res.get("message")}


def summarise(cases: list[dict], seed: int, n: int, kinds: list[str], elapsed: float) -> dict:
    """The JSON summary of classified cases (``cases``: ``[i, kind, mutant_sha256, class]`` rows)."""
    counts, by_op, by_kind = Counter(), defaultdict(Counter), defaultdict(Counter)
    examples: dict[str, list] = defaultdict(list)
    seen = set()
    accepted_invalid, groups = Counter(), defaultdict(Counter)
    for case in sorted(cases, key=lambda c: c["i"]):
        cls = case["class"]
        counts[cls] += 1
        by_op[case["op"]][cls] += 1
        by_kind[case["kind"]][cls] += 1
        if cls == "loaded-identical" and case["op"] == "edit_resealed" and not str(case.get("edit")).startswith(
                ("in_range", "extra_key", "missing_key")):
            accepted_invalid[f"{case['kind']} {str(case.get('edit')).split('+')[0]} at {case.get('field')}"] += 1
        if cls in (*FAILURES, "valid-different"):
            ex = _example(case, case.get("decided_by"))
            where = ".".join(str(ex["field"]).split("[")[0].split(".")[:2])
            groups[cls][f"{ex['kind']} {ex['op']} {where} via {ex['probe']}: {ex['exception'] or 'loaded'}"] += 1
            key = (cls, ex["kind"], ex["op"], ex["probe"], ex["exception"], where)
            if key not in seen and sum(e["kind"] == ex["kind"] for e in examples[cls]) < 5:
                seen.add(key)
                examples[cls].append(ex)
    rows = [[c["i"], c["kind"], c.get("mutant_sha256"), c["class"]] for c in sorted(cases, key=lambda c: c["i"])]
    return {"seed": seed, "n": n, "kinds": kinds, "elapsed_s": round(elapsed, 1),
            "fingerprint": hashlib.sha256(json.dumps(rows).encode()).hexdigest(),
            "counts": {c: counts.get(c, 0) for c in CLASSES},
            "by_operator": {op: dict(c) for op, c in sorted(by_op.items())},
            "by_kind": {k: dict(c) for k, c in sorted(by_kind.items())},
            "accepted_invalid": sum(accepted_invalid.values()),
            "accepted_invalid_top": dict(accepted_invalid.most_common(10)),
            "failure_groups": {c: dict(g.most_common(25)) for c, g in groups.items()},
            "examples": dict(examples), "cases": rows}


_SCRATCH = ("data", "run_a", "run_a_step1", "run_b", "run_fp", "fc4.hbnn", "chain.hbnn", "originals.json")


def _scratch(work: Path | None, reuse: bool) -> tuple[Path, bool]:
    """The scratch folder (a new temporary one when ``work`` is None) and whether to build the originals."""
    if work is None:
        return Path(tempfile.mkdtemp(prefix="hbnn-fuzz-")), True
    work = Path(work)
    if reuse and (work / "originals.json").exists():
        return work, False
    if work.exists():  # a reused scratch folder: drop what an earlier run left
        if any(p.name not in _SCRATCH and not p.name.startswith("mutant-") for p in work.iterdir()):
            raise SystemExit(f"--work {work} holds files this script did not write; give an empty folder")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work, True


def run_fuzz(n: int, seed: int = 0, kinds=("packed", "checkpoint"), jobs: int = 2, timeout: float = 60.0,
             work: Path | None = None, progress: bool = False, reuse: bool = False) -> dict:
    """Build the originals (or, with ``reuse``, keep those in ``work``), fuzz ``n`` mutants, return the summary."""
    kinds = list(kinds)
    t0 = time.monotonic()
    owned = work is None
    work, build = _scratch(work, reuse)
    try:
        _quiet_process()
        originals = build_originals(work) if build else json.loads((work / "originals.json").read_text())
        full = _load_originals(work)
        refs = {}
        for name, orig in full.items():
            case = {"i": -1, "original": name, "kind": orig["kind"], "path": orig["path"], "op": "none"}
            refs[name] = probe(case, full, cli=True)
            bad = {k: v for k, v in refs[name].items() if v["status"] != "loaded" or v["digest"] == "forward failed"}
            if bad:
                return {"error": f"original {name} fails its own probes: {bad}", "exit": 3}
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", str(work), "--seed", str(seed),
                "--kinds", ",".join(kinds)]
        pool, cases = (_Pool(min(jobs, n), argv, timeout) if jobs > 0 and n > 0 else None), []
        stream = pool.run(list(range(n))) if pool else _inline(work, full, kinds, seed, list(range(n)))
        for done, (i, case, failure) in enumerate(stream, start=1):
            if case is None:
                case = {"i": i, "class": failure, "decided_by": None, **_describe(originals, kinds, seed, i)}
            else:
                case["class"], case["decided_by"] = classify(case, case["results"], refs)
            cases.append(case)
            if progress and done % 100 == 0:
                print(f"{done}/{n} {dict(Counter(c['class'] for c in cases))}", file=sys.stderr, flush=True)
        if pool:
            pool.close()
        summary = summarise(cases, seed, n, kinds, time.monotonic() - t0)
        summary["exit"] = 1 if any(summary["counts"][c] for c in FAILURES) else 0
        return summary
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def _describe(originals: dict, kinds: list[str], seed: int, i: int) -> dict:
    """The description of case ``i`` (rebuilt in a scratch folder) when its worker died."""
    with tempfile.TemporaryDirectory() as tmp:
        case = make_mutant(originals, kinds, seed, i, Path(tmp) / "m")
        case["mutant_sha256"] = mutant_sha256(case["path"])
    return {k: case[k] for k in ("kind", "original", "op", "field", "edit", "in_range", "mutant_sha256")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, nargs="?", default=200, help="number of mutants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="packed,checkpoint", help="comma list: packed, checkpoint")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes (0: run the cases in this process, without time limit)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as HANG")
    ap.add_argument("--out", help="also write the JSON summary here")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--reuse", action="store_true", help="keep the originals already in --work")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - {"packed", "checkpoint"} or not kinds:
        ap.error(f"--kinds: {args.kinds!r}; allowed: packed, checkpoint")
    if args.worker:
        worker(Path(args.worker), args.seed, kinds)
        return 0
    summary = run_fuzz(args.n, args.seed, kinds, args.jobs, args.timeout, args.work, progress=True,
                       reuse=args.reuse)
    print(json.dumps({k: v for k, v in summary.items() if k != "cases"}, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary["exit"]


if __name__ == "__main__":
    sys.exit(main())
