"""dcgan_analysis.py: sections 5 and 6 of the DCGAN paper on a tiny dcgan.py run (guided
backpropagation and z arithmetic by hand; every sub-command's outputs; one-line errors)."""
import json
import os
import shutil

import imageio.v3 as iio
import pytest
import torch

import dcgan
import dcgan_analysis as analysis
import utils
from conftest import make_image_folder, make_mnist


def one_line_error(run, argv):
    code, _, err = run(analysis.main, argv)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_guided_backprop_by_hand():
    """y = w2 . leaky(W1 x): guided, the gradient reaching x is W1^T (max(w2, 0) * slope(W1 x))."""
    W1, w2 = torch.tensor([[1.0, 2.0], [-1.0, 1.0], [3.0, -1.0]]), torch.tensor([-2.0, 4.0, 5.0])
    x = torch.tensor([1.0, -1.0], requires_grad=True)       # W1 x = [-1, -2, 4]: slopes 0.2, 0.2, 1
    (w2 * analysis.GuidedLeakyReLU.apply(W1 @ x, 0.2)).sum().backward()
    upstream = torch.tensor([0.0, 4.0 * 0.2, 5.0 * 1])      # w2's -2 is cut; 4 and 5 pass, times the slope
    assert torch.allclose(x.grad, W1.T @ upstream)
    assert torch.allclose(x.grad, torch.tensor([-0.8 + 15, 0.8 - 5]))


def test_svm_loss_by_hand_and_a_separable_fit():
    scores, W = torch.tensor([[2.0, 0.5, -1.0], [0.0, -2.0, 3.0]]), torch.tensor([[1.0, -1.0, 2.0]])
    # sample 0 is class 0: margins 1-2<0, 1+0.5, 1-1<=0 -> 1.5^2; sample 1 is class 2: 1+0, 1-2<0, 1-3<0 -> 1
    assert analysis.svm_loss(scores, W.square().sum(), torch.tensor([0, 2]), C=0.5).item() == pytest.approx(
        0.5 * 6 + 0.5 * (2.25 + 1))
    torch.manual_seed(0)
    x, labels = torch.randn(30, 50), torch.arange(30) % 3  # more features than rows: separable
    W = analysis.linear_fit(x, labels, C=1.0)
    assert W.shape == (51, 3) and analysis.accuracy_of(W, x, labels) == 1.0


def test_z_arithmetic_and_its_terms():
    bank = torch.arange(30.0).view(10, 3)
    terms = analysis.parse_terms("1,2,3 - 4,5 + 9", 10)
    assert terms == [(1, [1, 2, 3]), (-1, [4, 5]), (1, [9])]
    expected = bank[[1, 2, 3]].mean(0) - bank[[4, 5]].mean(0) + bank[9]  # [6, 7, 8] - [13.5, ...] + [27, ...]
    assert torch.equal(analysis.latent_sum(bank, terms), expected)
    assert torch.equal(expected, torch.tensor([19.5, 20.5, 21.5]))


def test_d_blocks_are_each_block_after_its_leaky_relu():
    D = dcgan.Discriminator(4, 1, 32)
    blocks = analysis.d_blocks(D, torch.randn(2, 1, 32, 32))
    assert [tuple(b.shape) for b in blocks] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run (trained once for the module) and its z bank of 20 samples."""
    folder = tmp_path_factory.mktemp("tiny")
    data = make_mnist(folder / "data", n=200)
    dcgan.main(["--dataset", "mnist", "--dataroot", data, "--image-size", "32", "--ngf", "8", "--ndf", "8",
                "--batch-size", "16", "--epochs", "1", "--output-dir", str(folder / "d")])
    dcgan.main(["--generate", "20", "--output-dir", str(folder / "d")])
    return folder


@pytest.fixture
def tiny_run(trained):
    """A copy of the tiny run in this test's folder, as d/; returns its data folder."""
    shutil.copytree(trained / "d", "d")
    return str(trained / "data")


def test_the_z_bank_drew_the_samples_and_index_numbers_them(run, tiny_run):
    bank = torch.load("d/samples/z.pt", weights_only=True)["z"]
    assert bank.shape == (20, 100)
    G = analysis.generator(dcgan.get_options(["--generate", "1", "--output-dir", "d"])[0],
                           torch.load("d/checkpoint.pt", weights_only=True), torch.device("cpu"))
    again = utils.to_uint8(dcgan.sample(G, bank[7:8]))[0]
    assert (iio.imread("d/samples/000007.png") == again[..., 0]).all()  # row 7 drew sample 7
    assert run(analysis.main, ["index", "--output-dir", "d"])[0] == 0
    assert iio.imread("d/index.png").shape == (2 * (32 + 12 + 2) + 2, 16 * 34 + 2, 3)  # 20: 2 rows of 16


def test_classify_writes_three_rows(run, tiny_run):
    code, out, err = run(analysis.main, ["classify", "--labels", 20, "--draws", 2, "--output-dir", "d",
                                         "--dataroot", tiny_run])
    assert code == 0, err
    report = json.load(open("d/classify.json"))
    assert list(report["rows"]) == ["trained D", "random D", "pixels"] and report["labels"] == 20
    # every block max-pooled to 4x4: (8 + 16 + 32) channels x 16 at 32x32; pixels: 32 x 32
    assert [row["features"] for row in report["rows"].values()] == [56 * 16, 56 * 16, 1024]
    assert all(len(row["accuracy"]) == 2 and 0 <= row["mean"] <= 1 for row in report["rows"].values())
    assert "trained D" in out and "pixels" in out


def test_visualize_forget_and_arithmetic_pictures(run, tiny_run):
    assert run(analysis.main, ["visualize-d", "--output-dir", "d", "--dataroot", tiny_run])[0] == 0
    assert iio.imread("d/d_features.png").shape[:2] == (8 * 34 + 2, 17 * 34 + 2)  # 8 units x (8 | 8)
    with open("boxes.json", "w") as f:
        json.dump({"3": [[4, 4, 20, 20]], "7": [[0, 0, 16, 32], [20, 20, 32, 32]]}, f)
    code, out, err = run(analysis.main, ["forget", "boxes.json", "--output-dir", "d"])
    assert code == 0, err
    assert iio.imread("d/forget.png").shape[:2] == (2 * 34 + 2, 10 * 34 + 2) and "maps of G's 8x8 block" in out
    code, out, err = run(analysis.main, ["arithmetic", "1,2,3 - 4,5 + 6", "--output-dir", "d"])
    assert code == 0, err
    assert iio.imread("d/arithmetic.png").shape[:2] == (5 * 34 + 2, 9 * 34 + 2)  # 3 terms, result, pixels


@pytest.mark.parametrize("argv,expect", [
    (["arithmetic", "1,2 - 99"], "'99' is not a sample of the z bank"),
    (["arithmetic", "1 * 2"], "expected terms"),
    (["forget", "missing.json"], "forget missing.json"),
    (["forget", "bad.json"], "lists of [x0, y0, x1, y1] boxes"),
    (["forget", "outside.json"], "lists of [x0, y0, x1, y1] boxes"),
    (["forget", "everywhere.json"], "cover every position"),
    (["classify", "--labels", 5], "--labels 5"),
    (["classify", "--epoch", 1], "unrecognized arguments"),
    (["sections"], "invalid choice"),
])
def test_bad_input_is_one_line_and_writes_nothing(run, tiny_run, argv, expect):
    for name, text in [("bad.json", "{\"3\": [[1, 2, 3]]}"), ("outside.json", "{\"3\": [[0, 0, 40, 8]]}"),
                       ("everywhere.json", "{\"3\": [[0, 0, 32, 32]]}")]:
        with open(name, "w") as f:
            f.write(text)
    before = sorted(os.listdir("d"))
    assert expect in one_line_error(run, argv + ["--output-dir", "d"])
    assert sorted(os.listdir("d")) == before


def test_sub_commands_without_what_they_need(run):
    assert "no checkpoint" in one_line_error(run, ["visualize-d", "--output-dir", "none"])
    assert run(dcgan.main, ["--dataset", "fake", "--dry-run", "--output-dir", "d", "--image-size", 32])[0] == 0
    assert "classify needs labels" in one_line_error(run, ["classify", "--output-dir", "d"])
    assert "--generate N first" in one_line_error(run, ["nearest", "--output-dir", "d"])
    assert "--generate N first" in one_line_error(run, ["arithmetic", "1 - 2", "--output-dir", "d"])
    assert "--generate N first" in one_line_error(run, ["index", "--output-dir", "d"])


def test_classify_a_folder_of_classes_and_refuse_one_class(run, tmp_path):
    data = make_image_folder(make_image_folder(tmp_path / "data", "cats", n=30, seed=1), "dogs", n=30, seed=2)
    base = ["--dataroot", data, "--image-size", 32, "--ngf", 8, "--ndf", 8, "--workers", 0]
    assert run(dcgan.main, ["--dataset", "folder", "--batch-size", 8, "--epochs", 1, "--output-dir", "d"] + base)[0] == 0
    code, out, err = run(analysis.main, ["classify", "--labels", 10, "--draws", 1, "--output-dir", "d"])
    assert code == 0, err
    assert json.load(open("d/classify.json"))["test_images"] == 12  # 20% of 60 held out as the test split
    one = make_image_folder(tmp_path / "one", "cats", n=30)
    assert run(dcgan.main, ["--dataset", "folder", "--batch-size", 8, "--epochs", 1, "--output-dir", "e",
                            "--dataroot", one] + base[2:])[0] == 0
    assert "holds one class" in one_line_error(run, ["classify", "--output-dir", "e", "--dataroot", one])


def test_nearest_finds_a_planted_copy_of_a_sample(run, tiny_run, monkeypatch):
    """Training image 57 is sample 3 of the z bank (rounded to uint8): nearest names it, at a distance of the
    rounding alone, and draws 20 pairs; the mean distances of the samples and the held-out images are said."""
    G = analysis.generator(dcgan.get_options(["--generate", "1", "--output-dir", "d"])[0],
                           torch.load("d/checkpoint.pt", weights_only=True), torch.device("cpu"))
    bank = torch.load("d/samples/z.pt", weights_only=True)["z"]
    copy = torch.as_tensor(utils.to_uint8(dcgan.sample(G, bank[3:4]))).permute(0, 3, 1, 2)  # (1, 1, 32, 32)
    train = torch.randint(0, 256, (300, 1, 32, 32), dtype=torch.uint8)
    train[57] = copy[0]
    test = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    monkeypatch.setattr(analysis, "labelled", lambda run: (train, None, test, None))
    seen = []
    real_nearest = utils.nearest
    monkeypatch.setattr(utils, "nearest", lambda *a: seen.append(real_nearest(*a)) or seen[-1])
    code, out, err = run(analysis.main, ["nearest", "--output-dir", "d"])
    assert code == 0, err
    distance, which = (torch.stack([s[i] for s in seen]) for i in (0, 1))  # (batches, 28 points)
    best = distance.argmin(0)
    assert best[3] * 256 + which[best[3], 3] == 57 and distance[:, 3].min() < 0.2  # others: ~18
    assert "20 samples" in out and "8 held-out images" in out
    assert iio.imread("d/nearest.png").shape[:2] == (5 * 34 + 2, 8 * 34 + 2)  # 40 images, 8 a row
