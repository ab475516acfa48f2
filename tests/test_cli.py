"""``hbnn.cli.exit_process``: how an ``hbnn`` process ends (torchrun workers skip teardown)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import atexit, sys
from hbnn.cli import exit_process
atexit.register(lambda: print("atexit ran", flush=True))
print("buffered line", end="")
sys.stderr.write("err line")
exit_process(3)
"""


@pytest.mark.parametrize("world, teardown", [(None, True), ("1", True), ("2", False), ("two", True)])
def test_exit_process_flushes_and_skips_teardown_only_in_workers(world, teardown):
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    if world is not None:
        env["WORLD_SIZE"] = world
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert done.stdout.startswith("buffered line") and done.stderr == "err line"
    assert ("atexit ran" in done.stdout) is teardown


# --- every error caused by a user file: one line on stderr, exit 2, no traceback -------------

def _write_idx(path: Path, array) -> None:
    import numpy as np

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.asarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 1-epoch run of a narrow cifar_fc4 on fabricated 28x28 data: ``(data_dir, run_dir)``."""
    import numpy as np

    from hbnn.cli import main

    root = tmp_path_factory.mktemp("cli_files")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for stem, n in (("train", 64), ("t10k", 32)):
        _write_idx(data / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(data / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10)
    run = root / "run"
    code = main(["train", "--data-dir", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "32", "-q",
                 "--set", "model.kwargs={widths: [8, 16, 16]}", "--set", "run.tensorboard=false"])
    assert code == 0
    return data, run


def _broken_inputs(base: Path, data: Path, run: Path) -> dict[str, tuple[list[str], Path]]:
    """``{case: (hbnn arguments, the broken file)}``, each broken file fabricated under ``base``."""
    import shutil

    def run_copy(name: str) -> Path:
        out = base / name
        shutil.copytree(run, out)
        return out

    truncated = run_copy("truncated")
    for name in ("last", "best"):
        path = truncated / f"{name}.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = base / "garbage.hbnn"
    garbage.write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    configs = {"yaml": "model: [1, 2\n", "list": "- 1\n- 2\n", "empty": "", "key": "trian: {epochs: 3}\n",
               "nan": "optim: {lr: .nan}\n"}
    broken_idx = base / "idx"
    shutil.copytree(data, broken_idx)
    images = broken_idx / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    cases = {
        "eval truncated checkpoint": (["eval", str(truncated)], truncated / "best.safetensors"),
        "summary truncated checkpoint": (["summary", str(truncated)], truncated / "best.safetensors"),
        "eval truncated checkpoint file": (["eval", str(truncated / "last.safetensors")],
                                           truncated / "last.safetensors"),
        "infer garbage packed file": (["infer", str(garbage)], garbage),
        "summary garbage packed file": (["summary", str(garbage)], garbage),
        "train broken IDX dir": (["train", "--out", str(base / "new"), "--set", f"data.data_dir={broken_idx}",
                                  "--set", "model.kwargs={widths: [8, 16, 16]}", "--set", "run.tensorboard=false"],
                                 images),
        "eval broken IDX dir": (["eval", str(run), "--data-dir", str(broken_idx)], images),
    }
    for name, text in configs.items():
        folder = run_copy(f"config_{name}")
        (folder / "config.yaml").write_text(text)
        where = folder / "config.yaml"
        resume = ["train", "--resume", str(folder), "--epochs", "2", "-q"]
        cases[f"train --resume, config.yaml {name}"] = (resume, where)
        cases[f"eval, config.yaml {name}"] = (["eval", str(folder)], where)
        cases[f"summary, config.yaml {name}"] = (["summary", str(folder)], where)
    return cases


def test_broken_user_files_print_one_line_and_exit_2(tmp_path, trained, capsys, monkeypatch):
    from hbnn.cli import main

    monkeypatch.delenv("HBNN_DEBUG", raising=False)
    data, run = trained
    failures = []
    for case, (argv, broken) in _broken_inputs(tmp_path, data, run).items():
        capsys.readouterr()
        try:
            code = main(argv)
        except BaseException as exc:  # a traceback through the CLI: what this test is about
            failures.append(f"{case}: {type(exc).__name__}: {exc}")
            continue
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        if code != 2 or len(lines) != 1 or not lines[0].startswith("hbnn: error: ") or "Traceback" in err:
            failures.append(f"{case}: exit {code}, stderr {err!r}")
        elif str(broken) not in lines[0]:
            failures.append(f"{case}: the message does not name {broken}: {lines[0]!r}")
    assert not failures, "\n".join(failures)


def test_a_bug_is_not_hidden(monkeypatch, capsys):
    """An internal error (not a user mistake) keeps its traceback: main() does not catch it."""
    import argparse

    from hbnn.cli import main
    from hbnn.errors import DatasetError

    parser = argparse.ArgumentParser(prog="t")
    parser.set_defaults(func=lambda args: {}["missing"])
    with pytest.raises(KeyError):
        main([], parser=parser)
    parser.set_defaults(func=lambda args: (_ for _ in ()).throw(DatasetError("d: bad\nsecond line")))
    assert main([], parser=parser) == 2 and capsys.readouterr().err == "t: error: d: bad\n"


def test_a_closed_pipe_is_not_an_error():
    """`hbnn recipes | head -1`: the reader closing the pipe early prints no error and exits 0."""
    import subprocess

    hbnn = Path(sys.executable).with_name("hbnn")
    proc = subprocess.run(f"'{hbnn}' recipes | head -1; exit ${{PIPESTATUS[0]}}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.count("\n") == 1
