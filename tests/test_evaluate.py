"""evaluate.py: the Frechet distance on hand-computable inputs, the shipped classifiers (their fingerprints,
loaded without pickle), a run on a tiny MNIST in its real format, a classifier trained only when asked,
samples as PNGs of any size or .npy, and one-line errors."""
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


SHIPPED = {"mnist": "ca7b05d9f389", "fashion-mnist": "a2e199acf49b"}  # README and RESULTS quote these


@pytest.mark.parametrize("dataset", list(SHIPPED))
def test_the_shipped_classifier_loads_without_pickle_and_has_its_fingerprint(dataset):
    path = os.path.join(os.path.dirname(evaluate.__file__), f"evaluate_{dataset}.pt")
    assert os.path.getsize(path) < 500_000
    saved = torch.load(path, weights_only=True)  # plain tensors, numbers and strings
    net = evaluate.Classifier()
    net.load_state_dict(saved["classifier"])
    assert saved["dataset"] == dataset and evaluate.fingerprint(net) == SHIPPED[dataset]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for doc in ("README.md", "docs/RESULTS.md"):
        assert SHIPPED[dataset] in open(os.path.join(here, doc)).read(), doc


def test_scores_with_the_shipped_classifier_in_float64_the_same_on_any_thread_count(data, capsys):
    rng = np.random.default_rng(0)
    np.save("s.npy", rng.integers(0, 256, (1000, 28, 28), dtype=np.uint8))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = evaluate.main(["s.npy", "--dataset", "mnist", "--dataroot", data])
        torch.set_num_threads(2)
        second = evaluate.main(["s.npy", "--dataroot", data])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.count(f"mnist classifier {SHIPPED['mnist']}, test accuracy 0.9901") == 2
    assert second["classifier_fid"] == pytest.approx(first["classifier_fid"], rel=1e-8)
    assert 1 <= first["classes_covered"] <= 10 and 0.1 <= first["confidence"] <= 1
    floor = evaluate.main(["--real", "--dataroot", data])
    assert floor["samples"] == 64 and floor["classifier_fid"] >= 0
    assert os.listdir(os.path.join(data, "MNIST")) == ["raw"]  # nothing trained, nothing written


def test_train_classifier_is_explicit_writes_a_new_file_only_and_its_scores_say_so(data, capsys, monkeypatch):
    monkeypatch.setattr(evaluate, "EPOCHS", 1)
    np.save("s.npy", np.random.default_rng(0).integers(0, 256, (1000, 28, 28), dtype=np.uint8))
    assert "no classifier at mine.pt: --train-classifier" in one_line_error(
        capsys, ["s.npy", "--dataroot", data, "--classifier", "mine.pt"])
    evaluate.main(["--train-classifier", "--classifier", "mine.pt", "--dataroot", data])
    out = capsys.readouterr().out
    net = evaluate.Classifier()
    net.load_state_dict(torch.load("mine.pt", weights_only=True)["classifier"])
    assert f"mnist classifier {evaluate.fingerprint(net)}, trained" in out
    evaluate.main(["s.npy", "--dataroot", data, "--classifier", "mine.pt"])
    assert f"classifier {evaluate.fingerprint(net)}, test accuracy" in capsys.readouterr().out
    before = open("mine.pt", "rb").read()
    assert "mine.pt exists" in one_line_error(capsys, ["--train-classifier", "--classifier", "mine.pt",
                                                       "--dataroot", data])
    assert open("mine.pt", "rb").read() == before
    make_mnist(data, folder="FashionMNIST", n=64)
    assert "classifies mnist, not fashion-mnist" in one_line_error(
        capsys, ["s.npy", "--dataroot", data, "--dataset", "fashion-mnist", "--classifier", "mine.pt"])
    open("junk.pt", "wb").write(b"not a checkpoint")
    assert "cannot read junk.pt" in one_line_error(capsys, ["s.npy", "--dataroot", data, "--classifier", "junk.pt"])


def test_png_folders_of_any_size_are_grey_28x28(data, monkeypatch):
    monkeypatch.setattr(evaluate, "MIN_SAMPLES", 5)
    os.makedirs("rgb64")
    rng = np.random.default_rng(1)
    for i in range(6):
        iio.imwrite(f"rgb64/{i:06d}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    x = evaluate.load_samples("rgb64", 5)
    assert x.shape == (6, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert evaluate.main(["rgb64", "--dataroot", data])["samples"] == 6


def test_bad_input_gets_one_line_and_trains_nothing(data, capsys):
    np.save("few.npy", np.zeros((10, 28, 28), np.uint8))
    assert "at least 1,000" in one_line_error(capsys, ["few.npy", "--dataroot", data])
    np.save("points.npy", np.zeros((2000, 2), np.float32))
    assert "expected images" in one_line_error(capsys, ["points.npy", "--dataroot", data])
    os.makedirs("empty")
    assert "no .png" in one_line_error(capsys, ["empty", "--dataroot", data])
    assert "not a folder" in one_line_error(capsys, ["missing.npy", "--dataroot", data])
    assert "not both" in one_line_error(capsys, ["--dataroot", data])


def test_parzen_log_likelihood_in_closed_form():
    """One centre: log N(x; c, s^2 I) = -|x - c|^2 / (2 s^2) - d log(s sqrt(2 pi)). Two centres, one of
    them at x and the other far away: log(1/2) + log N(x; x, s^2 I) = -log 2 - d log(s sqrt(2 pi))."""
    torch.manual_seed(0)
    x, c = torch.rand(3, 784), torch.rand(1, 784)
    by_hand = -(x - c).double().square().sum(1) / (2 * 0.2 ** 2) - 784 * np.log(0.2 * np.sqrt(2 * np.pi))
    assert torch.allclose(evaluate.parzen_log_likelihood(x, c, 0.2)[:, 0], by_hand, rtol=1e-9)
    centres = torch.cat([x[:1], x[:1] + 10])
    two = evaluate.parzen_log_likelihood(x[:1], centres, [0.1, 1.0])
    assert torch.allclose(two[0], -np.log(2) - 784 * torch.log(torch.tensor([0.1, 1.0], dtype=torch.float64)
                                                              * np.sqrt(2 * np.pi)), rtol=1e-9)


def test_parzen_protocol_picks_sigma_on_images_50000_to_50999(monkeypatch):
    """Samples = the validation images themselves: the smallest sigma of the grid wins; the test score is the
    closed form of the mean over the test images."""
    monkeypatch.setattr(evaluate, "PARZEN_VALID", slice(2, 4))
    train = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    samples = evaluate.to_input(train[2:4])
    test = train[2:3]  # at one sample, far from the other: log(1/2) + log N(0; 0, 0.1^2 I)
    mean, error, sigma = evaluate.parzen(samples, train, test)
    assert sigma == pytest.approx(0.1)
    far = (train[2].double() - train[3].double()).div(255).square().sum() / (2 * 0.01)
    assert mean == pytest.approx((-np.log(2) - 784 * np.log(0.1 * np.sqrt(2 * np.pi))
                                  + np.log1p(np.exp(-far.item()))), rel=1e-9) and error == 0


def test_parzen_needs_10000_samples(data, capsys):
    np.save("s.npy", np.zeros((9999, 28, 28), dtype=np.uint8))
    err = one_line_error(capsys, ["s.npy", "--parzen", "--dataroot", data])
    assert "9,999 samples" in err and "10,000" in err
