"""lsgan.py: Eq. 2 for both codings on hand-computed values, the paper's network, the mixture
experiment, every dataset format (tiny files in the real formats, offline), and the contract."""
import copy
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import lsgan
from conftest import DdpLikeD, dies_at, make_cifar10, make_image_folder, make_lsun, make_mnist, signalled_at


def one_line_error(run, argv):
    code, _, err = run(lsgan.main, argv)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


# ---- Eq. 2 ----

REAL, FAKE = torch.tensor([0.5, 2.0]), torch.tensor([-1.0, 0.0])


def whole_d_loss(real, fake, coding, loss="ls"):  # train_step backpropagates the two terms in turn
    a, b, _ = lsgan.CODINGS[coding]
    return lsgan.d_loss(real, b, loss) + lsgan.d_loss(fake, a, loss)


def test_d_and_g_losses_with_the_0_1_1_coding():
    # a = 0, b = 1: 1/2 mean((0.5-1)^2, (2-1)^2) + 1/2 mean((-1-0)^2, (0-0)^2) = 1/2*0.625 + 1/2*0.5
    assert whole_d_loss(REAL, FAKE, "0-1-1").item() == pytest.approx(0.5625)
    # c = 1: 1/2 mean((-1-1)^2, (0-1)^2) = 1/2 * 2.5
    assert lsgan.g_loss(FAKE, 1.0).item() == pytest.approx(1.25)


def test_d_and_g_losses_with_the_pearson_coding():
    # a = -1, b = 1: 1/2*0.625 + 1/2 mean((-1+1)^2, (0+1)^2) = 0.3125 + 0.25
    assert whole_d_loss(REAL, FAKE, "pearson").item() == pytest.approx(0.5625)
    # c = 0: 1/2 mean(1, 0)
    assert lsgan.g_loss(FAKE, 0.0).item() == pytest.approx(0.25)
    a, b, c = lsgan.CODINGS["pearson"]
    assert (b - c, b - a) == (1, 2)  # the conditions of section 3.2


def test_the_mean_of_squares_not_the_square_of_the_mean():
    scores = torch.tensor([0.0, 2.0])  # mean 1 = b, yet each is 1 away from it
    assert lsgan.d_loss(scores, 1.0).item() == pytest.approx(0.5)


def test_the_regular_loss_on_the_same_scores():
    sig = lambda v: 1 / (1 + math.exp(-v))
    by_hand = -(math.log(sig(0.5)) + math.log(sig(2))) / 2 - (math.log(1 - sig(-1)) + math.log(1 - sig(0))) / 2
    assert whole_d_loss(REAL, FAKE, "0-1-1", "bce").item() == pytest.approx(by_hand, abs=1e-6)
    assert lsgan.g_loss(FAKE, 1.0, "bce").item() == pytest.approx(-(math.log(sig(-1)) + math.log(sig(0))) / 2, abs=1e-6)


# ---- the networks ----

def test_the_paper_network_at_112():
    G, D = lsgan.LSGANGenerator(1024, 3, 112), lsgan.LSGANDiscriminator(3, 112)
    assert G.fc[0].out_features == 7 * 7 * 256
    deconvs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.out_channels, m.kernel_size, m.stride) for m in deconvs] == [
        (256, (3, 3), (2, 2)), (256, (3, 3), (1, 1)), (256, (3, 3), (2, 2)), (256, (3, 3), (1, 1)),
        (128, (3, 3), (2, 2)), (64, (3, 3), (2, 2)), (3, (3, 3), (1, 1))]
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (64, (5, 5), (2, 2)), (128, (5, 5), (2, 2)), (256, (5, 5), (2, 2)), (512, (5, 5), (2, 2))]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D.modules()) == 3  # after the first convolution only
    assert isinstance(D.net[-1], nn.Linear) and not any(isinstance(m, nn.Sigmoid) for m in D.modules())
    images = G(torch.randn(2, 1024))
    assert images.shape == (2, 3, 112, 112) and D(images).shape == (2,)


def test_the_paper_network_at_64_starts_from_4x4():
    G = lsgan.LSGANGenerator(16, 1, 64)
    assert G.fc[0].out_features == 4 * 4 * 256 and G(torch.randn(2, 16)).shape == (2, 1, 64, 64)


# ---- the mixture experiment ----

def test_mixture_scores():
    centres = lsgan.mixture_centres()  # the authors' radius 1
    assert torch.allclose(centres.norm(dim=1), torch.full((8,), 1.0))
    points = torch.cat([centres[:3].repeat(30, 1), torch.zeros(10, 2)])  # 3 modes, 90 of 100 points on them
    scores = lsgan.mixture_scores(points)
    assert scores["modes"] == 3 and scores["share_within_3sigma"] == pytest.approx(0.9)
    assert scores["modes_reached"] == 3       # the 10 at the origin go to centre 0 (a tie)
    angles = torch.linspace(0, 2 * math.pi, 801)[:-1] + math.pi / 8   # a ring: between the modes too
    ring = lsgan.mixture_scores(torch.stack([angles.cos(), angles.sin()], 1))
    assert ring["modes"] == 0 and ring["modes_reached"] == 8 and ring["modes_10sigma"] == 8
    near = centres[:1] + torch.tensor([[0.02, 0.0]])  # 2 sigma from a centre at sigma 0.01, 1 at 0.02
    assert lsgan.mixture_scores(near)["modes"] == 1
    assert lsgan.mixture_scores(2 * near, radius=2.0, sigma=0.02)["modes"] == 1


def test_mixture_mlp_starts_orthogonal_with_gain_1_4_as_the_authors():
    D = lsgan.MLP(2, 1)
    W = D.net[2].weight  # 128 x 128
    assert torch.allclose(W @ W.T, 1.96 * torch.eye(128), atol=1e-4)
    assert all(not layer.bias.any() for layer in D.net[::2])


@pytest.mark.parametrize("inputs, outputs", [(256, 128), (128, 128), (128, 2), (2, 128), (128, 1)])
def test_tf_orthogonal_is_tensorflow_0_12s_svd_of_a_uniform_matrix(inputs, outputs):
    """Every layer of the mixture MLPs: orthogonal with gain 1.4 on the short side of TF's
    (inputs, outputs) matrix, and the U[0, 1) matrix's mark: its top singular vector is positive
    (Perron-Frobenius) up to a sign, where a column of torch's QR has one sign with odds 2^-127."""
    torch.manual_seed(0)
    weight = lsgan.tf_orthogonal_(torch.empty(outputs, inputs), gain=1.4)   # torch's (out, in)
    assert weight.shape == (outputs, inputs)
    tf = weight.T.double()                                                  # TF's (in, out)
    short = tf.T @ tf if inputs >= outputs else tf @ tf.T
    assert torch.allclose(short, 1.96 * torch.eye(min(inputs, outputs), dtype=torch.double), atol=1e-5)
    assert torch.linalg.matrix_norm(weight, ord=2) == pytest.approx(1.4, rel=1e-5)
    top = tf[:, 0] if inputs > outputs else tf[0]  # the top singular vector, times 1.4
    assert (top > 0).all() or (top < 0).all()
    score = lsgan.MLP(2, 1, orthogonal="tf").net[4].weight  # D's last layer: one column, one sign
    assert (score > 0).all() or (score < 0).all()


def test_views_figure_draws_a_collapsed_run_without_a_density(tmp_path):
    """A run collapsed onto one point has no 2-D density: its panel says so, the figure is written."""
    ring = lsgan.mixture_points(512, "cpu", torch.Generator().manual_seed(0)).numpy()
    lsgan.views_figure([("ring", ring), ("one point", np.ones((512, 2), np.float32))], tmp_path / "v.png")
    assert os.path.getsize(tmp_path / "v.png") > 0


def test_simultaneous_step_takes_both_gradients_before_either_update():
    torch.manual_seed(0)
    G, D = lsgan.MLP(4, 2), lsgan.MLP(2, 1)
    x, z = torch.randn(16, 2), torch.randn(16, 4)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    # expected: plain gradients at the starting parameters, each of its own loss (Eq. 2, 0-1-1)
    fake = G0(z)
    loss_d = 0.5 * (D0(x) - 1).pow(2).mean() + 0.5 * D0(fake.detach()).pow(2).mean()
    grads_d = torch.autograd.grad(loss_d, list(D0.parameters()))
    grads_g = torch.autograd.grad(0.5 * (D0(fake) - 1).pow(2).mean(), list(G0.parameters()))
    opt_G, opt_D = torch.optim.SGD(G.parameters(), lr=1.0), torch.optim.SGD(D.parameters(), lr=1.0)
    lsgan.simultaneous_step(G, D, opt_G, opt_D, x, z)
    for net, start, grads in ((D, D0, grads_d), (G, G0, grads_g)):
        for p, p0, g in zip(net.parameters(), start.parameters(), grads):
            assert torch.allclose(p, p0 - g, atol=1e-6)


@pytest.fixture
def short_mixture(monkeypatch):
    monkeypatch.setattr(lsgan, "MIXTURE_EPOCH", 64)  # 8 iterations of 8 points per epoch
    monkeypatch.setattr(lsgan, "VIEW_EVERY", 5)


@pytest.mark.parametrize("loss", ["ls", "bce"])
def test_mixture_run_writes_scatter_plots_and_metrics(run, short_mixture, loss):
    code, out, err = run(lsgan.main, ["--dataset", "mixture8", "--loss", loss, "--batch-size", 8, "--epochs", 2,
                                      "--output-dir", "m"])
    assert code == 0, err
    for name in ("real.png", "epoch_001.png", "epoch_002.png", "progress.gif", "loss.png", "log.csv",
                 "snapshots/epoch_001.pt", "snapshots/epoch_002.pt", "views.png", "views/step_00006.npy"):
        assert os.path.getsize(os.path.join("m", name)) > 0, name
    with open("m/metrics.json") as f:
        metrics = json.load(f)
    assert 0 <= metrics["modes"] <= 8 and 0 <= metrics["share_within_3sigma"] <= 1
    assert list(metrics["steps"]) == ["1", "5", "6", "10", "11", "15", "16"]  # the views, VIEW_EVERY 5
    assert "modes covered" in out
    assert run(lsgan.main, ["--generate", 300, "--output-dir", "m"])[0] == 0
    assert np.load("m/samples.npy").shape == (300, 2)
    assert run(lsgan.main, ["--generate", 30, "--epoch", 1, "--output-dir", "m"])[0] == 0
    assert "points" in one_line_error(run, ["--interpolate", "--output-dir", "m"])


def test_mixture_interrupted_and_resumed_equals_uninterrupted(run, short_mixture, monkeypatch):
    common = ["--dataset", "mixture8", "--batch-size", 8, "--epochs", 2, "--log-every", 3]
    assert run(lsgan.main, common + ["--output-dir", "whole"])[0] == 0
    step = "simultaneous_step"
    real_step = getattr(lsgan, step)
    monkeypatch.setattr(lsgan, step, signalled_at(real_step, 5, signal.SIGINT))
    code, out, _ = run(lsgan.main, common + ["--output-dir", "split"])
    assert code == 130 and "--resume" in out
    monkeypatch.setattr(lsgan, step, real_step)
    assert run(lsgan.main, ["--resume", "--output-dir", "split"])[0] == 0
    whole = torch.load("whole/checkpoint.pt", weights_only=True)
    split = torch.load("split/checkpoint.pt", weights_only=True)
    assert all(torch.equal(whole["G"][k], split["G"][k]) for k in whole["G"])
    assert split["args"]["lr_d"] == 1e-4 and split["args"]["nz"] == 256  # the mixture's defaults, kept


def test_mixture_killed_mid_epoch_resumes_from_its_last_timed_checkpoint(run, short_mixture, monkeypatch):
    common = ["--dataset", "mixture8", "--batch-size", 8, "--epochs", 1]
    assert run(lsgan.main, common + ["--output-dir", "whole"])[0] == 0
    real_step = lsgan.simultaneous_step
    monkeypatch.setattr(lsgan, "simultaneous_step", dies_at(real_step, 6))
    with pytest.raises(MemoryError):
        run(lsgan.main, common + ["--checkpoint-every", 0, "--output-dir", "split"])
    assert torch.load("split/checkpoint.pt", weights_only=True)["iteration"] == 5
    monkeypatch.setattr(lsgan, "simultaneous_step", real_step)
    assert run(lsgan.main, ["--resume", "--output-dir", "split"])[0] == 0
    whole = torch.load("whole/checkpoint.pt", weights_only=True)
    split = torch.load("split/checkpoint.pt", weights_only=True)
    assert all(torch.equal(whole["G"][k], split["G"][k]) for k in whole["G"])


# ---- images: every format, both networks and codings ----

@pytest.mark.parametrize("extra, std", [([], 0.002), (["--loss", "bce"], 0.02), (["--arch", "lsgan"], 0.02),
                                        (["--score-std", "0.02"], 0.02)])
def test_score_layer_init(extra, std):
    """Least squares on DCGAN's network starts D's score layer at a tenth of DCGAN's N(0, 0.02);
    everything else (and every other layer) keeps 0.02."""
    args, _ = lsgan.get_options(["--dataset", "fake", "--image-size", "64", "--output-dir", "none"] + extra)
    torch.manual_seed(0)
    _, D, _, _ = lsgan.build(args, 3, torch.device("cpu"))
    score, first = D.net[-1].weight, D.net[0].weight
    assert abs(score.std().item() - std) < 0.15 * std
    assert abs(first.std().item() - 0.02) < 0.003


@pytest.mark.parametrize("extra", [["--arch", "dcgan"], ["--arch", "lsgan", "--coding", "pearson"],
                                   ["--arch", "lsgan", "--image-size", "112", "--loss", "bce"]])
def test_fake_data_each_network(run, extra):
    code, out, err = run(lsgan.main, ["--dataset", "fake", "--dry-run", "--output-dir", "d", "--device", "cpu"] + extra)
    assert code == 0, err
    assert "'channels_last': True" in out  # the CPU default
    for name in ("checkpoint.pt", "log.csv", "loss.png", "real.png", "epoch_001.png", "progress.gif"):
        assert os.path.getsize(os.path.join("d", name)) > 0, name
    assert run(lsgan.main, ["--generate", 3, "--output-dir", "d"])[0] == 0
    assert len(os.listdir("d/samples")) == 3


def test_real_formats(run, tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    cases = [("mnist", make_mnist(tmp_path / "m")), ("cifar10", make_cifar10(tmp_path / "c")),
             ("lsun", make_lsun(tmp_path / "l")), ("celeba", make_image_folder(tmp_path / "i"))]
    for dataset, root in cases:
        code, _, err = run(lsgan.main, ["--dry-run", "--dataset", dataset, "--dataroot", root, "--workers", 0,
                                        "--image-size", 32, "--output-dir", dataset])
        assert code == 0, (dataset, err)


@pytest.mark.parametrize("argv,expect", [
    (["--coding", "1-2-3"], "--coding"), (["--arch", "lsgan", "--image-size", "48"], "--image-size"),
    (["--loss", "hinge"], "--loss"), (["--batch-size", "0"], "--batch-size"), (["--lr-d", "-1"], "--lr-d"),
    (["--score-std", "-1"], "--score-std"), (["--mixture-protocol", "alternating"], "unrecognized"),
    (["--label-smoothing", "0.1"], "--loss bce"),
])
def test_bad_options_get_one_line(run, argv, expect):
    assert expect in one_line_error(run, ["--dataset", "fake", "--output-dir", "d"] + argv)
    assert not os.path.exists("d")


def test_checkpoint_of_another_network_gets_one_line(run):
    assert run(lsgan.main, ["--dataset", "fake", "--dry-run", "--output-dir", "d", "--image-size", 32])[0] == 0
    assert "--arch" in one_line_error(run, ["--generate", 2, "--arch", "lsgan", "--output-dir", "d"])


def test_d_step_backpropagates_the_real_batch_first_and_reduces_once():
    """One graph of D at a time (real: forward, backward; then generated), as in the authors' code; under
    DDP the real batch's gradients stay local (no_sync) and are reduced with the generated batch's."""
    args, _ = lsgan.get_options(["--dataset", "fake", "--arch", "dcgan", "--image-size", "32", "--batch-size", "4",
                                 "--output-dir", "d"])
    G, D, opt_G, opt_D = lsgan.build(args, 3, torch.device("cpu"))
    ddp_D = DdpLikeD(D)
    lsgan.train_step(G, ddp_D, opt_G, opt_D, torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, args.nz))
    assert ddp_D.events == ["forward in no_sync", "backward in no_sync", "forward", "backward"]


def test_bce_smooths_real_targets_when_asked_and_stops_a_run_that_ends_in_noise(run):
    args, _ = lsgan.get_options(["--dataset", "fake", "--loss", "bce", "--output-dir", "d"])
    assert lsgan.eq2_targets(args) == (0.0, 1.0, 1.0)  # the paper's recipe
    smoothed, _ = lsgan.get_options(["--dataset", "fake", "--loss", "bce", "--label-smoothing", "0.1", "--output-dir", "d"])
    assert lsgan.eq2_targets(smoothed) == (0.0, 0.9, 1.0)
    mixture, _ = lsgan.get_options(["--dataset", "mixture8", "--loss", "bce", "--output-dir", "d"])
    assert lsgan.eq2_targets(mixture) == (0.0, 1.0, 1.0)  # the authors' protocol
    code, out, err = run(lsgan.main, ["--dataset", "fake", "--loss", "bce", "--image-size", 32, "--ngf", 4, "--ndf", 4,
                                      "--batch-size", 4, "--lr", "1e-9", "--lr-d", "0.01", "--output-dir", "d"])
    assert code == 1 and err.startswith("error: D(G(z)) averaged 0.00") and len(err.splitlines()) == 1, err
    assert "[iter 200/2500]" in out
