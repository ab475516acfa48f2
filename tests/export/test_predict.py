"""``hbnn predict`` / :func:`hbnn.export.predict`: your own images and arrays, preprocessed as the test split.

Nothing trains here beyond the session's ``trained_run`` fixture (shared with the other
export tests). The reference is always the model's own eval output on the test loader's
batch of the same pixels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hbnn.cli import main
from hbnn.data import build_dataset, build_loader
from hbnn.data.info import FASHION_MNIST_CLASSES
from hbnn.data.transforms import image_to_uint8, resize_center_crop_image
from hbnn.errors import ConfigError
from hbnn.export import load_predictor, predict
from hbnn.export.evaluate import LOGIT_TOL
from hbnn.export.prediction import Preprocessing, collect_inputs, format_predictions, input_batches

Image = pytest.importorskip("PIL.Image")

N = 6  # test images used


@pytest.fixture(scope="module")
def reference(trained_run):
    """``(uint8 pixels [N, 1, 28, 28], loader batch [N, 1, 28, 28], softmax of the model's logits [N, 10])``."""
    from hbnn.train.rebuild import model_from_checkpoint

    test = build_dataset("fashion_mnist", "test", trained_run.parent / "fmnist")
    x, _ = next(iter(build_loader(test, batch_size=N, train=False, seed=0, epoch=0, augment=False)))
    model, _ = model_from_checkpoint(trained_run)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
    return test.images[:N].numpy(), x, probs


@pytest.fixture
def png_dir(tmp_path, reference) -> Path:
    """The ``N`` test images as 8-bit grayscale PNGs ``img00.png ...``."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, pixels in enumerate(reference[0]):
        Image.fromarray(pixels[0], mode="L").save(folder / f"img{i:02d}.png")
    return folder


def _expected_top(probs: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    values, classes = probs.sort(dim=1, descending=True, stable=True)
    return [list(zip(c[:k], v[:k])) for c, v in zip(classes.tolist(), values.tolist())]


def _top(result: dict) -> list[tuple[int, float]]:
    return [(t["class"], t["prob"]) for t in result["top_k"]]


def test_images_equal_the_test_loader_and_the_model(trained_run, reference, png_dir):
    _, x, probs = reference
    predictor = load_predictor(trained_run)
    assert predictor.kind == "checkpoint" and predictor.classes == list(FASHION_MNIST_CLASSES)
    files = collect_inputs([png_dir])
    assert [f.name for f in files] == [f"img{i:02d}.png" for i in range(N)]
    (_, batch), = input_batches(files, predictor.preprocessing, N)
    assert torch.equal(batch, x)  # the loader's (x / 255 - mean) / std, bit for bit
    results = predict(predictor, [png_dir], top_k=3, batch_size=N)
    assert [r["path"] for r in results] == [str(f) for f in files]
    assert all(r["index"] is None for r in results)
    assert [_top(r) for r in results] == _expected_top(probs, 3)  # exact
    for r in results:
        assert [t["name"] for t in r["top_k"]] == [FASHION_MNIST_CLASSES[t["class"]] for t in r["top_k"]]
        assert [t["prob"] for t in r["top_k"]] == sorted((t["prob"] for t in r["top_k"]), reverse=True)


@pytest.mark.parametrize("layout", ["NCHW", "NHW", "float"])
def test_npy_arrays_equal_the_model(trained_run, reference, tmp_path, layout):
    pixels, _, probs = reference
    array = {"NCHW": pixels, "NHW": pixels[:, 0], "float": pixels.astype(np.float32) / 255}[layout]
    np.save(tmp_path / "batch.npy", array)
    results = predict(trained_run, [tmp_path / "batch.npy"], top_k=10, batch_size=N)
    assert [(r["path"], r["index"]) for r in results] == [(str(tmp_path / "batch.npy"), i) for i in range(N)]
    assert [_top(r) for r in results] == _expected_top(probs, 10)


def test_single_arrays_and_batching(trained_run, reference, tmp_path):
    """[H, W] and [1, H, W] arrays are one image; batch size does not change the classes."""
    pixels, _, probs = reference
    np.save(tmp_path / "a.npy", pixels[0, 0])
    np.save(tmp_path / "b.npy", pixels[1])
    results = predict(trained_run, [tmp_path / "a.npy", tmp_path / "b.npy"], top_k=1, batch_size=1)
    assert [r["index"] for r in results] == [0, 0]
    assert [r["top_k"][0]["class"] for r in results] == probs[:2].argmax(1).tolist()
    assert [r["top_k"][0]["prob"] for r in results] == pytest.approx(probs[:2].max(1).values.tolist(), abs=1e-6)


def test_packed_engine_agrees_with_the_model(packed_run, reference, png_dir):
    _, _, probs = reference
    predictor = load_predictor(packed_run)
    assert predictor.kind == "packed" and predictor.classes == list(FASHION_MNIST_CLASSES)
    results = predict(predictor, [png_dir], top_k=10, batch_size=N)
    got = torch.zeros_like(probs)
    for i, r in enumerate(results):
        for t in r["top_k"]:
            got[i, t["class"]] = t["prob"]
    assert torch.equal(got.argmax(1), probs.argmax(1))
    # logits within LOGIT_TOL (hbnn infer's agreement) move each softmax probability by less than that
    torch.testing.assert_close(got, probs, atol=LOGIT_TOL, rtol=0)


def test_other_sizes_and_modes_follow_the_test_transform(trained_run):
    prep = load_predictor(trained_run).preprocessing
    assert (prep.channels, prep.image_size, prep.resize) == (1, 28, 28)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (42, 56, 3), dtype=np.uint8), mode="RGB")
    out = prep.image(rgb, "rgb.png")
    assert out.dtype == torch.uint8 and out.shape == (1, 28, 28)
    assert torch.equal(out, image_to_uint8(resize_center_crop_image(rgb.convert("L"), 28, 28))[:1])


def test_preprocessing_of_other_datasets():
    cifar = Preprocessing.for_dataset("cifar10", 3, 32)
    assert (cifar.resize, cifar.mean) == (32, (0.4914, 0.4822, 0.4465))
    gray = Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32), mode="L")
    out = cifar.image(gray, "gray.png")
    assert out.shape == (3, 32, 32) and torch.equal(out[0], out[2])  # L -> RGB repeats the channel
    assert Preprocessing.for_dataset("imagenet", 3, 224).resize == 256  # the image folders' evaluation resize
    with pytest.raises(ConfigError, match="normalises 3"):
        Preprocessing.for_dataset("cifar10", 1, 32)
    with pytest.raises(ConfigError, match="'my_data'"):
        Preprocessing.for_dataset("my_data", 1, 28)
    with pytest.raises(ConfigError, match="2-channel"):
        Preprocessing("x", 2, 8, 8, (0.0, 0.0), (1.0, 1.0)).image(gray, "g.png")


def test_folders_sorted_recursive_and_hidden(tmp_path, png_dir):
    (png_dir / "sub").mkdir()
    (png_dir / ".hidden.png").write_bytes((png_dir / "img00.png").read_bytes())
    (png_dir / "sub" / "a.png").write_bytes((png_dir / "img01.png").read_bytes())
    (png_dir / "notes.txt").write_text("not an image")
    flat = collect_inputs([png_dir])
    assert [f.name for f in flat] == [f"img{i:02d}.png" for i in range(N)]
    deep = collect_inputs([png_dir], recursive=True)
    assert [f.relative_to(png_dir).as_posix() for f in deep] == [f"img{i:02d}.png" for i in range(N)] + ["sub/a.png"]


def test_cli_json_and_table(trained_run, png_dir, tmp_path, reference, capsys):
    np.save(tmp_path / "two.npy", reference[0][:2])
    assert main(["predict", str(trained_run), str(png_dir), str(tmp_path / "two.npy"), "--json", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == N + 2
    for entry in out:
        assert set(entry) == {"path", "index", "top_k"} and len(entry["top_k"]) == 2
        assert all(set(t) == {"class", "name", "prob"} for t in entry["top_k"])
    assert [e["index"] for e in out] == [None] * N + [0, 1]
    assert out[N]["top_k"] == out[0]["top_k"]  # the same pixels as a PNG and as a uint8 array
    assert main(["predict", str(trained_run), str(png_dir / "img00.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["input", "top-1", "top-2", "top-3", "top-4", "top-5"]
    assert len(lines) == 2 and lines[1].startswith(str(png_dir / "img00.png"))
    assert lines[1] == format_predictions(predict(trained_run, [png_dir / "img00.png"])).splitlines()[1]


def _bad_inputs(folder: Path, pixels: np.ndarray) -> dict:
    """name -> (input path, expected message fragment) of every bad-input case."""
    good = folder / "good.png"
    Image.fromarray(pixels[0, 0], mode="L").save(good)
    cases = {}

    def case(name, fragment, write):
        path = folder / name
        write(path)
        cases[name] = (path, fragment)

    case("notes.txt", "not an image", lambda p: p.write_text("hello"))
    case("garbage.png", "not an image", lambda p: p.write_bytes(b"\x89PNG but not really" * 10))
    case("truncated.png", "unreadable image", lambda p: p.write_bytes(good.read_bytes()[:60]))
    case("deep.png", "16-bit or float", lambda p: Image.fromarray(np.zeros((28, 28), np.uint16)).save(p))
    case("lab.tif", "cannot convert image mode LAB to L", lambda p: Image.new("LAB", (28, 28)).save(p))
    case("shape.npy", "does not fit the model", lambda p: np.save(p, pixels[0, 0, :, :27]))
    case("five_d.npy", "does not fit the model", lambda p: np.save(p, pixels[None]))
    case("rgb.npy", "does not fit the model", lambda p: np.save(p, np.repeat(pixels[:2], 3, axis=1)))
    case("empty.npy", "does not fit the model", lambda p: np.save(p, pixels[:0]))
    case("int64.npy", "dtype int64", lambda p: np.save(p, pixels.astype(np.int64)))
    case("range.npy", "outside [0, 1]", lambda p: np.save(p, pixels.astype(np.float32)))
    case("nan.npy", "NaN or infinite", lambda p: np.save(p, np.full((28, 28), np.nan, np.float32)))
    case("pickle.npy", "not a .npy array", lambda p: np.save(p, np.array([{}], dtype=object)))
    case("text.npy", "not a .npy array", lambda p: p.write_text("hello"))
    case("empty_dir", "no image files", lambda p: p.mkdir())
    case("nested_dir", "add --recursive", lambda p: (p / "sub").mkdir(parents=True))
    cases["missing.png"] = (folder / "missing.png", "no such file or folder")
    return cases


def _one_line_error(capsys, fragment: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hbnn: error: "), captured.err
    assert fragment in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def test_every_bad_input_is_one_line_and_nothing_is_printed(trained_run, reference, tmp_path, capsys):
    for name, (path, fragment) in _bad_inputs(tmp_path, reference[0]).items():
        # the good image comes first: still nothing is printed
        assert main(["predict", str(trained_run), str(tmp_path / "good.png"), str(path)]) == 2, name
        assert str(path) in _one_line_error(capsys, fragment)  # names the file


@pytest.mark.parametrize("model, fragment", [
    ("model.bin", "is not a run directory, checkpoint"),
    ("missing", "does not exist"),
    ("broken.hbnn", "packed model"),
    ("empty_run", "no checkpoint"),
])
def test_bad_models_are_one_line(tmp_path, reference, capsys, model, fragment):
    (tmp_path / "model.bin").write_bytes(b"\x00" * 64)
    (tmp_path / "broken.hbnn").write_bytes(b"\x01" * 64)
    (tmp_path / "empty_run").mkdir()
    np.save(tmp_path / "x.npy", reference[0][:1])
    assert main(["predict", str(tmp_path / model), str(tmp_path / "x.npy")]) == 2
    _one_line_error(capsys, fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--top-k", "0"], "--top-k: 0"),
    (["--top-k", "11"], "[1, 10]"),
    (["--batch-size", "0"], "--batch-size: 0"),
])
def test_bad_options_are_one_line(trained_run, reference, tmp_path, capsys, args, fragment):
    np.save(tmp_path / "x.npy", reference[0][:1])
    assert main(["predict", str(trained_run), str(tmp_path / "x.npy"), *args]) == 2
    _one_line_error(capsys, fragment)


def test_without_pillow_images_say_how_to_install(trained_run, png_dir, tmp_path, reference, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "PIL", None)
    np.save(tmp_path / "x.npy", reference[0][:1])
    assert main(["predict", str(trained_run), str(tmp_path / "x.npy")]) == 0  # arrays need no Pillow
    capsys.readouterr()
    assert main(["predict", str(trained_run), str(png_dir)]) == 2
    _one_line_error(capsys, "pip install 'hbnn[image]'")


def test_packed_file_without_a_dataset_is_one_line(make_fc4, meta, tmp_path, capsys):
    from hbnn.export import export_model

    export_model(make_fc4({"weight": {"bits": 1}, "act": {"bits": 1}}), tmp_path / "bare.bin", meta=meta)
    np.save(tmp_path / "x.npy", np.zeros((12, 12), np.uint8))
    assert main(["predict", str(tmp_path / "bare.bin"), str(tmp_path / "x.npy")]) == 2  # found by content
    _one_line_error(capsys, "records no dataset")
