"""hbnn.progress: bars on a terminal, timed/counted lines off one, nothing when quiet; wired
into ``hbnn train`` without changing a single bit of the result."""

from __future__ import annotations

import importlib.util
import io
import re
from pathlib import Path

import pytest

from hbnn.errors import ConfigError
from hbnn.progress import Progress, eta_seconds, format_duration, format_rate, make_progress, progress_settings

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_formats():
    assert format_duration(0) == "0:00:00" and format_duration(105.9) == "0:01:45"
    assert format_duration(36000 + 61) == "10:01:01" and format_duration(float("nan")) == "?"
    assert format_rate(304, 2.0, "batch") == "152 batch/s" and format_rate(15.23, 1, "batch") == "15.2 batch/s"
    assert format_rate(5000, 2, "image") == "2500 image/s" and format_rate(1, 4, "run") == "4.00 s/run"
    assert format_rate(0, 1, "batch") == "? batch/s"
    assert eta_seconds(200, 468, 100.0) == pytest.approx(134.0) and eta_seconds(0, 5, 1.0) == float("inf")


def test_lines_every_n_steps_with_rate_eta_and_a_final_line():
    out, clock = io.StringIO(), FakeClock()
    p = make_progress(468, "train epoch 2/15", stream=out, every_n=200, every_s=1e9, clock=clock)
    assert p.mode == "lines"
    for _ in range(468):
        clock.now += 0.5
        p.update(1)
    p.close()
    p.close()  # once only
    lines = _lines(out)
    assert lines == [
        "train epoch 2/15: 200/468 batches (43%), 2 batch/s, ETA 0:02:14",
        "train epoch 2/15: 400/468 batches (85%), 2 batch/s, ETA 0:00:34",
        "train epoch 2/15: done, 468/468 batches in 0:03:54 (2 batch/s)",
    ]


def test_lines_on_the_time_trigger_with_a_lazy_postfix():
    out, clock = io.StringIO(), FakeClock()
    calls = []

    def postfix():
        calls.append(1)
        return {"loss": "0.4100"}

    p = make_progress(10000, "eval", stream=out, every_n=0, every_s=30, clock=clock)
    for _ in range(60):  # 152 batch/s for 39.5 s: one line, at 30 s
        clock.now += 100 / 152
        p.update(100, postfix=postfix)
    lines = _lines(out)
    assert len(lines) == 1 and len(calls) == 1  # the postfix is computed only when shown
    assert re.fullmatch(r"eval: 4[67]00/10000 batches \(4[67]%\), 152 batch/s, ETA 0:00:3\d, loss 0\.4100",
                        lines[0]), lines


def test_resumed_work_rates_only_this_calls_updates_and_unknown_totals():
    out, clock = io.StringIO(), FakeClock()
    p = make_progress(100, "train epoch 1/1", initial=60, stream=out, every_n=10, every_s=1e9, clock=clock)
    for _ in range(10):
        clock.now += 2
        p.update(1)
    assert _lines(out) == ["train epoch 1/1: 70/100 batches (70%), 2.00 s/batch, ETA 0:01:00"]
    out = io.StringIO()
    with make_progress(None, "scan", unit="file", stream=out, every_n=2, every_s=1e9, clock=clock) as q:
        q.update(2)
    assert _lines(out)[0].startswith("scan: 2 files, ") and "ETA" not in out.getvalue()


def test_quiet_prints_nothing_and_an_error_skips_the_done_line(capsys):
    out = io.StringIO()
    with make_progress(5, "x", enabled=False, stream=out, every_n=1) as p:
        for _ in range(5):
            p.update(1, postfix=lambda: pytest.fail("postfix computed while quiet"))
        p.set_postfix(a=1)
    assert out.getvalue() == "" and not p.enabled
    with pytest.raises(RuntimeError), make_progress(5, "x", stream=out) as p:
        p.update(1)
        raise RuntimeError("boom")
    assert out.getvalue() == ""
    assert capsys.readouterr() == ("", "")


def test_terminal_gets_a_tqdm_bar(monkeypatch):
    import tqdm

    made = []

    class FakeBar:
        def __init__(self, **kwargs):
            made.append(kwargs)
            self.n, self.postfix, self.closed = kwargs["initial"], None, False

        def update(self, n):
            self.n += n

        def set_postfix(self, values, refresh=False):
            self.postfix = dict(values)

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm, "tqdm", FakeBar)
    out = io.StringIO()
    monkeypatch.setattr(out, "isatty", lambda: True)
    with make_progress(30, "train epoch 1/2", initial=5, stream=out) as p:
        for _ in range(10):
            p.update(1, postfix=lambda: {"loss": "1.0"})
    assert p.mode == "bar" and made[0]["total"] == 30 and made[0]["initial"] == 5 and made[0]["file"] is out
    assert p._bar.n == 15 and p._bar.postfix == {"loss": "1.0"} and p._bar.closed
    assert out.getvalue() == ""  # the (fake) bar drew everything; no lines


def test_environment_settings(monkeypatch):
    monkeypatch.delenv("HBNN_PROGRESS_EVERY_S", raising=False)
    monkeypatch.delenv("HBNN_PROGRESS_EVERY_N", raising=False)
    assert progress_settings() == (0, 30.0)
    monkeypatch.setenv("HBNN_PROGRESS_EVERY_S", "5")
    monkeypatch.setenv("HBNN_PROGRESS_EVERY_N", "100")
    p = make_progress(10, "x", stream=io.StringIO())
    assert (p.every_n, p.every_s) == (100, 5.0)
    for name, bad in (("HBNN_PROGRESS_EVERY_S", "soon"), ("HBNN_PROGRESS_EVERY_S", "0"),
                      ("HBNN_PROGRESS_EVERY_N", "-1"), ("HBNN_PROGRESS_EVERY_N", "2.5")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ConfigError, match=f"^{name}: '{re.escape(bad)}' is invalid"):
            progress_settings()
        monkeypatch.setenv(name, "5")
    with pytest.raises(ValueError):
        Progress(1, "x", mode="fancy")


# --------------------------------------------------------------------------- hbnn train, end to end

@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    """The training tests' miniature Fashion-MNIST (their fabricator, reused)."""
    spec = importlib.util.spec_from_file_location("_hbnn_train_conftest", REPO / "tests" / "train" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fabricate_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def _train(fmnist: Path, out: Path, *extra: str) -> None:
    import torch

    from hbnn.cli import main

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--data-dir", str(fmnist), "--out", str(out), "--epochs", "2", "--batch-size", "32",
                     "--set", "model.kwargs={widths: [8, 16, 16]}", "--set", "run.tensorboard=false",
                     "--set", "quant={default: {weight: {bits: 1.4}, act: {bits: 1.4}}}",
                     "--set", "train.checkpoint_every_steps=4", *extra]) == 0
    finally:
        torch.set_num_threads(previous)


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_train_off_a_terminal_logs_progress_and_changes_no_bit(fmnist, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HBNN_PROGRESS_EVERY_N", "1")  # as many lines (and postfix syncs) as possible
    _train(fmnist, tmp_path / "on")
    err = capsys.readouterr().err.splitlines()
    for epoch in (1, 2):
        steps = [x for x in err if x.startswith(f"train epoch {epoch}/2: ") and "ETA" in x]
        assert len(steps) == 5, err  # 6 batches: a line after each of the first 5, then "done"
        assert re.search(r"\d+/6 batches \(\d+%\), [\d.]+ (batch/s|s/batch), ETA \d:\d\d:\d\d, loss [\d.]+, "
                         r"acc [\d.]+, img_s \d+$", steps[0]), steps[0]
        assert sum(x.startswith(f"train epoch {epoch}/2: done, 6/6 batches in ") for x in err) == 1
        assert any(x.startswith(f"eval epoch {epoch}/2: ") for x in err)
    monkeypatch.delenv("HBNN_PROGRESS_EVERY_N")
    _train(fmnist, tmp_path / "off", "--quiet")
    assert capsys.readouterr() == ("", "")
    for name in ("last.safetensors", "best.safetensors"):
        on, off = _tensors(tmp_path / "on" / name), _tensors(tmp_path / "off" / name)
        assert on.keys() == off.keys() and all(on[k].equal(off[k]) for k in on), name


def test_train_default_prints_one_done_line_per_epoch(fmnist, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HBNN_PROGRESS_EVERY_N", raising=False)
    monkeypatch.delenv("HBNN_PROGRESS_EVERY_S", raising=False)
    _train(fmnist, tmp_path / "run")
    err = capsys.readouterr().err.splitlines()
    assert [x.split(",")[0] for x in err if x.startswith("train epoch")] == [
        "train epoch 1/2: done", "train epoch 2/2: done"]
    assert not any(x.startswith("eval epoch") for x in err)  # fast: no line before the epoch line


def test_bad_progress_setting_fails_before_the_run_dir_is_written(fmnist, tmp_path, capsys, monkeypatch):
    from hbnn.cli import main

    monkeypatch.setenv("HBNN_PROGRESS_EVERY_S", "never")
    assert main(["train", "--data-dir", str(fmnist), "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert capsys.readouterr().err.strip() == ("hbnn: error: HBNN_PROGRESS_EVERY_S: 'never' is invalid; "
                                               "expected a number >= 0.001")
    assert not (tmp_path / "run").exists()
