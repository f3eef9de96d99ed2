"""evaluate.py: the Frechet distance on hand-computable inputs, a run on a tiny MNIST in its real format
(classifier trained, saved, reused), samples as PNGs of any size or .npy, and one-line errors."""
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import evaluate
from conftest import make_mnist


def test_frechet_distance_in_closed_form():
    """b = 2a + 1: mean 2 mu + 1, covariance 4 S. Then (S 4S)^(1/2) = 2S and the distance is
    ||mu + 1||^2 + tr(S) + 4 tr(S) - 4 tr(S) = ||mu + 1||^2 + tr(S)."""
    torch.manual_seed(0)
    a = torch.randn(500, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    expected = (a.mean(0) + 1).square().sum().item() + torch.cov(a.T).trace().item()
    assert evaluate.frechet(a, 2 * a + 1) == pytest.approx(expected, rel=1e-6)
    assert evaluate.frechet(a, a) == pytest.approx(0, abs=1e-6)


@pytest.fixture
def data(tmp_path):
    return make_mnist(tmp_path / "data", n=64)


def one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        evaluate.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_scores_a_npy_trains_the_classifier_once_and_reuses_it(data, capsys):
    rng = np.random.default_rng(0)
    np.save("s.npy", rng.integers(0, 256, (1000, 28, 28), dtype=np.uint8))
    first = evaluate.main(["s.npy", "--dataset", "mnist", "--dataroot", data])
    assert "trained the mnist classifier" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(data, "MNIST", "raw", "..", "evaluate_classifier.pt"))
    second = evaluate.main(["s.npy", "--dataroot", data])
    out = capsys.readouterr().out
    assert "trained" not in out and "classifier FID" in out and second == first
    assert 1 <= first["classes_covered"] <= 10 and 0.1 <= first["confidence"] <= 1
    floor = evaluate.main(["--real", "--dataroot", data])
    assert floor["samples"] == 64 and floor["classifier_fid"] >= 0


def test_png_folders_of_any_size_are_grey_28x28(data, monkeypatch):
    monkeypatch.setattr(evaluate, "MIN_SAMPLES", 5)
    os.makedirs("rgb64")
    rng = np.random.default_rng(1)
    for i in range(6):
        iio.imwrite(f"rgb64/{i:06d}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    x = evaluate.load_samples("rgb64")
    assert x.shape == (6, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert evaluate.main(["rgb64", "--dataroot", data])["samples"] == 6


def test_bad_input_gets_one_line_and_trains_nothing(data, capsys):
    np.save("few.npy", np.zeros((10, 28, 28), np.uint8))
    assert "at least 1000" in one_line_error(capsys, ["few.npy", "--dataroot", data])
    np.save("points.npy", np.zeros((2000, 2), np.float32))
    assert "expected images" in one_line_error(capsys, ["points.npy", "--dataroot", data])
    os.makedirs("empty")
    assert "no .png" in one_line_error(capsys, ["empty", "--dataroot", data])
    assert "not a folder" in one_line_error(capsys, ["missing.npy", "--dataroot", data])
    assert "not both" in one_line_error(capsys, ["--dataroot", data])
    assert not os.path.exists(os.path.join(data, "MNIST", "evaluate_classifier.pt"))
