"""gan_mnist.py: the equations on hand-computed values, dropout in eval mode, and the contract
on a tiny MNIST written in the real idx format (torchvision's MNIST class reads it, offline)."""
import math
import os
import signal

import imageio.v3 as iio
import pytest
import torch
import torchvision

import gan_mnist as gm
from conftest import dies_at, make_mnist, signalled_at

HEADER = "epoch,iteration,loss_d,loss_g,d_x,d_g_z,samples_per_s,elapsed_s"


@pytest.fixture
def data(tmp_path):
    return make_mnist(tmp_path / "far" / "data")  # not ./data, the default


def small(data, out, *extra):
    """A fast run: 40 images, batch 8 -> 5 iterations per epoch."""
    return ["--dataroot", data, "--output-dir", out, "--batch-size", 8, "--log-every", 2, *extra]


def weights(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["G"]


# ---- the equations ----

def test_d_loss_is_eq1_negated():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    by_hand = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(1))))
    assert (gm.d_loss(real, 1.0) + gm.d_loss(fake, 0.0)).item() == pytest.approx(by_hand, abs=1e-6)


def test_g_loss_variants():
    logit = torch.tensor([-1.0])  # D(G(z)) = sigmoid(-1) = 0.2689
    # non-saturating: -log D(G(z)) = log(1 + e)
    assert gm.g_loss(logit).item() == pytest.approx(math.log(1 + math.e), abs=1e-6)
    # minimax: log(1 - D(G(z))) = log(sigmoid(1)) = -log(1 + e^-1)
    assert gm.g_loss(logit, "minimax").item() == pytest.approx(-math.log(1 + math.exp(-1)), abs=1e-6)


def test_r1_penalty_of_a_linear_d_is_its_squared_weight():
    w = torch.tensor([1.0, 2.0, 2.0])
    x = torch.randn(4, 3, requires_grad=True)
    assert gm.r1_penalty(x @ w, x).item() == pytest.approx(9.0)


def test_dropout_is_off_in_eval_mode_and_on_in_training():
    D = gm.Discriminator(dropout=0.5)
    x = torch.randn(16, 1, 28, 28)
    D.eval()
    assert torch.equal(D(x), D(x))
    D.train()
    assert not torch.equal(D(x), D(x))


def test_shapes():
    G = gm.Generator(nz=7)
    images = G(torch.randn(5, 7))
    assert images.shape == (5, 1, 28, 28) and images.abs().max() <= 1
    assert gm.Discriminator()(images).shape == (5,)


# ---- the contract ----

def test_dry_run_writes_every_output(run, data):
    code, out, err = run(gm.main, ["--dry-run", "--dataroot", data, "--output-dir", "d"])
    assert code == 0, err
    for name in ("checkpoint.pt", "log.csv", "loss.png", "real.png", "epoch_001.png", "progress.gif"):
        assert os.path.getsize(os.path.join("d", name)) > 0, name
    with open("d/log.csv") as f:
        lines = f.read().splitlines()
    assert lines[0] == HEADER and len(lines) == 3
    assert "loss_D" in out and "D(G(z))" in out and "img/s" in out and "ETA" in out
    assert torch.load("d/checkpoint.pt", weights_only=True)["iteration"] == 2


def test_same_seed_same_run(run, data):
    for out in ("a", "b"):
        assert run(gm.main, small(data, out, "--epochs", 1))[0] == 0
    a, b = weights("a"), weights("b")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra", [[], ["--d-steps", "2", "--g-loss", "minimax", "--r1", "0"]])
def test_interrupted_mid_epoch_and_resumed_equals_uninterrupted(run, data, monkeypatch, extra):
    common = ["--epochs", 2, *extra]
    assert run(gm.main, small(data, "whole", *common))[0] == 0

    real_step = gm.train_step
    monkeypatch.setattr(gm, "train_step", signalled_at(real_step, 3, signal.SIGTERM))
    code, out, _ = run(gm.main, small(data, "split", *common))
    assert code == 130 and torch.load("split/checkpoint.pt", weights_only=True)["iteration"] == 3
    monkeypatch.setattr(gm, "train_step", real_step)
    assert out.split("Resume with:\n")[1].split() == ["python", "gan_mnist.py", "--resume", "--output-dir", "split"]
    assert run(gm.main, ["--resume", "--output-dir", "split"])[0] == 0  # the command, as printed

    whole, split = weights("whole"), weights("split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert os.path.exists("split/epoch_002.png") and os.path.exists("split/progress.gif")


def test_a_run_killed_mid_epoch_resumes_from_its_last_timed_checkpoint(run, data, monkeypatch):
    assert run(gm.main, small(data, "whole", "--epochs", 1))[0] == 0
    real_step = gm.train_step
    monkeypatch.setattr(gm, "train_step", dies_at(real_step, 4))
    with pytest.raises(MemoryError):
        run(gm.main, small(data, "split", "--epochs", 1, "--checkpoint-every", 0))
    assert torch.load("split/checkpoint.pt", weights_only=True)["iteration"] == 3
    monkeypatch.setattr(gm, "train_step", real_step)
    assert run(gm.main, ["--resume", "--output-dir", "split"])[0] == 0
    whole, split = weights("whole"), weights("split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_generate_writes_one_png_per_image_in_eval_mode(run, data, monkeypatch):
    assert run(gm.main, ["--dry-run", "--dataroot", data, "--output-dir", "d"])[0] == 0
    modes = []
    real_forward = gm.Generator.forward

    def recording(self, z):
        modes.append(self.training)
        return real_forward(self, z)
    monkeypatch.setattr(gm.Generator, "forward", recording)
    assert run(gm.main, ["--generate", 1003, "--output-dir", "d"])[0] == 0
    files = sorted(os.listdir("d/samples"))
    assert len(files) == 1003 and files[0] == "000000.png" and files[-1] == "001002.png"
    assert iio.imread("d/samples/000007.png").shape == (28, 28)
    assert modes and not any(modes)
    assert run(gm.main, ["--generate", 5, "--output-dir", "d"])[0] == 0
    assert len(os.listdir("d/samples")) == 5  # no stale images from the larger set


def test_fashion_mnist(run, tmp_path):
    root = make_mnist(tmp_path / "fashion", folder="FashionMNIST")
    assert run(gm.main, ["--dry-run", "--dataset", "fashion-mnist", "--dataroot", root, "--output-dir", "d"])[0] == 0


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(run, data, monkeypatch):
    real_loss, calls = gm.d_loss, []

    def loss_that_breaks(*a):
        calls.append(1)
        return real_loss(*a) * (float("nan") if len(calls) > 12 else 1.0)  # 2 calls a step

    monkeypatch.setattr(gm, "d_loss", loss_that_breaks)
    code, _, err = run(gm.main, small(data, "d", "--epochs", 3))
    assert code == 1 and err.startswith("error: training diverged") and len(err.splitlines()) == 1
    ckpt = torch.load("d/checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 5  # the end of epoch 1, before the loss went bad
    assert all(torch.isfinite(v).all() for v in ckpt["G"].values())


def one_line_error(run, argv):
    code, _, err = run(gm.main, argv)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv", [
    ["--batch-size", "0"], ["--dataset", "cifar"], ["--dropout", "1.5"], ["--lr", "-1"], ["--lr-d", "-1"],
    ["--noise-size", "8"], ["--learning-rate", "0"], ["--epoch", "3"], ["--beta1", "1"],
    ["--g-loss", "wasserstein"], ["--epochs", "0"], ["--generate", "-1"],
])
def test_bad_options_get_one_line(run, data, argv):
    one_line_error(run, ["--dataroot", data, "--output-dir", "d"] + argv)
    assert not os.path.exists("d")


def test_missing_data_gets_one_line(run, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [])  # no download, even with a network
    err = one_line_error(run, ["--dataroot", "nowhere", "--output-dir", "d"])
    assert "cannot load mnist" in err and "train-images-idx3-ubyte" in err


def test_damaged_data_gets_one_line(run, data):
    with open(os.path.join(data, "MNIST", "raw", "train-images-idx3-ubyte"), "wb") as f:
        f.write(b"\x00\x00\x08\x03garbage")
    one_line_error(run, ["--dry-run", "--dataroot", data, "--output-dir", "d"])


def test_batch_larger_than_the_data(run, data):
    assert "fewer" in one_line_error(run, ["--dataroot", data, "--output-dir", "d", "--batch-size", 64])


def test_bad_checkpoints_get_one_line_and_are_kept(run, data):
    assert run(gm.main, ["--dry-run", "--dataroot", data, "--output-dir", "d"])[0] == 0
    before = open("d/checkpoint.pt", "rb").read()
    assert "exists" in one_line_error(run, ["--dry-run", "--dataroot", data, "--output-dir", "d"])
    assert "--nz" in one_line_error(run, ["--generate", 3, "--nz", 10, "--output-dir", "d"])
    assert "--dataset" in one_line_error(run, ["--resume", "--dataset", "fashion-mnist", "--output-dir", "d"])
    assert open("d/checkpoint.pt", "rb").read() == before
    os.makedirs("corrupt")
    with open("corrupt/checkpoint.pt", "wb") as f:
        f.write(before[:1000])
    assert "cannot read" in one_line_error(run, ["--resume", "--output-dir", "corrupt"])
    os.makedirs("other")
    torch.save(dict(torch.load("d/checkpoint.pt", weights_only=True), script="gan_gaussian"), "other/checkpoint.pt")
    assert "not a checkpoint of gan_mnist.py" in one_line_error(run, ["--generate", 3, "--output-dir", "other"])


def test_resuming_with_another_ema_keeps_g_itself(run, data, monkeypatch):
    """With --ema 0 the averaged G is G itself: a resume must load G's own weights into it, never
    the checkpoint's average (which would silently replace the trained G)."""
    assert run(gm.main, small(data, "d", "--epochs", 1, "--ema", 0.5))[0] == 0
    saved = torch.load("d/checkpoint.pt", weights_only=True)
    assert not all(torch.equal(saved["G"][k], saved["G_ema"][k]) for k in saved["G"])
    seen = []
    real_step = gm.train_step
    monkeypatch.setattr(gm, "train_step", lambda G, *a, **k: seen.append(
        {k_: v.clone() for k_, v in G.state_dict().items()}) or real_step(G, *a, **k))
    assert run(gm.main, ["--resume", "--dataroot", data, "--output-dir", "d", "--epochs", 2, "--ema", 0])[0] == 0
    assert all(torch.equal(seen[0][k], saved["G"][k]) for k in saved["G"])


def test_the_average_gets_batchnorm_statistics_of_its_own_weights():
    """refresh_statistics: each BatchNorm's running mean is the mean of its input over the refresh batches
    of the averaged G (not G's statistics), its variance the mean of their unbiased variances; training's
    random stream is not touched, and the momentum is back at 0.1."""
    torch.manual_seed(0)
    G_ema = gm.Generator(nz=8)
    state = torch.get_rng_state()
    gm.refresh_statistics(G_ema, nz=8, batch_size=32, batches=4)
    assert torch.equal(torch.get_rng_state(), state)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        h = torch.stack([G_ema.net[0](torch.randn(32, 8, generator=g)) for _ in range(4)])  # (4, 32, 256)
    norm = G_ema.net[1]
    assert torch.allclose(norm.running_mean, h.mean((0, 1)), atol=1e-5)
    assert torch.allclose(norm.running_var, h.var(1).mean(0), atol=1e-4)
    assert norm.momentum == 0.1 and int(norm.num_batches_tracked) == 4


def test_snapshots_keep_g_and_its_average_per_epoch(run, data):
    assert run(gm.main, small(data, "d", "--epochs", 2))[0] == 0
    assert sorted(os.listdir("d/snapshots")) == ["epoch_001.pt", "epoch_002.pt"]
    snapshot = torch.load("d/snapshots/epoch_001.pt", weights_only=True)
    assert set(snapshot) == {"script", "epoch", "G", "G_ema"}
    assert run(gm.main, ["--generate", 5, "--epoch", 1, "--dataroot", data, "--output-dir", "d"])[0] == 0
    assert len(os.listdir("d/samples")) == 5


# ---- the recipes (#39): ours, the tutorial's, the paper's ----

def test_each_recipe_sets_its_defaults_and_explicit_options_win():
    ours = gm.get_options(["--output-dir", "a"])[0]
    assert (ours.batch_size, ours.lr, ours.lr_d, ours.beta1, ours.dropout, ours.r1, ours.ema) == (
        128, 1e-3, 4e-4, 0.0, 0.1, 10.0, 0.999)
    tutorial = gm.get_options(["--recipe", "tutorial", "--output-dir", "a"])[0]
    assert (tutorial.batch_size, tutorial.lr, tutorial.lr_d, tutorial.beta1, tutorial.dropout, tutorial.r1,
            tutorial.ema) == (64, 2e-4, 2e-4, 0.5, 0.5, 0.0, 0.0)
    paper = gm.get_options(["--recipe", "paper", "--batch-size", "50", "--output-dir", "a"])[0]
    assert (paper.batch_size, paper.lr, paper.lr_d, paper.dropout, paper.r1, paper.ema) == (50, 0.1, 0.1, 0.5, 0, 0)
    G, D = gm.networks(tutorial)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in G.modules())
    assert [m.p for m in D.modules() if isinstance(m, torch.nn.Dropout)] == [0.5] * 3
    G, D = gm.networks(ours)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in G.modules()) == 3


def test_the_papers_networks_as_mnist_yaml():
    """G 100-1200-1200-784, rectifiers then sigmoid pixels whose biases are the logits of the pixel means;
    weights in U(-0.05, 0.05) (G) and U(-0.005, 0.005) (D); D's maxout takes the largest of 5 pieces per unit
    and sees pixels in [0, 1]; dropout 0.2 on its input, 0.5 on its hidden units."""
    torch.manual_seed(0)
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    images[:2, 0, 0] = 255  # pixel 0: mean 0.5 -> logit 0; pixel 1: mean 0 -> logit(1e-7)
    G = gm.PaperGenerator(pixel_mean=images.flatten(1).float().mean(0) / 255)
    assert [layer.weight.shape for layer in G.net[::2]] == [(1200, 100), (1200, 1200), (784, 1200)]
    assert all(layer.weight.abs().max() <= 0.05 for layer in G.net[::2])
    assert G.net[4].bias[0] == 0 and G.net[4].bias[1].item() == pytest.approx(math.log(1e-7 / (1 - 1e-7)), rel=1e-4)
    assert G(torch.randn(3, 100)).shape == (3, 1, 28, 28)
    with torch.no_grad():  # all weights 0: the pixels are sigmoid(bias), made [-1, 1]
        for layer in G.net[::2]:
            layer.weight.zero_()
        assert G(torch.randn(1, 100))[0, 0, 0, 0] == 0  # sigmoid(0) = 0.5 -> 0
    D = gm.PaperDiscriminator().eval()
    assert all(layer.weight.abs().max() <= 0.005 for layer in (D.h0, D.h1, D.y))
    assert (D.drop_input.p, D.drop.p, D.h0.out_features, D.h1.in_features) == (0.2, 0.5, 1200, 240)
    h = torch.arange(10.0).view(1, 10) * torch.tensor([[1.0] * 5 + [-1.0] * 5])  # pieces 0..4 and -5..-9
    D.units = 2
    assert D.maxout(h).tolist() == [[4.0, -5.0]]
    D.units = 240
    with torch.no_grad():
        D.h0.weight.zero_()
        D.h0.weight[0, 0] = 1.0  # unit 0, piece 0 reads pixel 0
        D.h0.bias.fill_(-100)
        D.h0.bias[0] = 0
    x = torch.full((1, 1, 28, 28), -1.0)
    x[0, 0, 0, 0] = 1.0  # white: 1 in [0, 1]
    assert D.maxout(D.h0(x.flatten(1).add(1).div(2)))[0, 0] == 1.0


def test_paper_schedule_decays_the_rate_each_step_and_ramps_the_momentum_by_epoch():
    args = gm.get_options(["--recipe", "paper", "--output-dir", "a"])[0]
    nets = [torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)]
    opt_G, opt_D = (torch.optim.SGD(n.parameters(), lr=1.0, momentum=0.0) for n in nets)
    gm.paper_schedule(opt_G, opt_D, args, 0, 0)
    assert opt_G.param_groups[0]["lr"] == 0.1 and opt_D.param_groups[0]["momentum"] == 0.5
    gm.paper_schedule(opt_G, opt_D, args, 100_000, 1)
    assert opt_D.param_groups[0]["lr"] == pytest.approx(0.1 / 1.000004 ** 100_000)  # 0.067
    assert opt_G.param_groups[0]["momentum"] == pytest.approx(0.5 + 0.2 / 249)
    gm.paper_schedule(opt_G, opt_D, args, 10_000_000, 249)
    assert opt_G.param_groups[0]["lr"] == 1e-6 and opt_G.param_groups[0]["momentum"] == pytest.approx(0.7)
    gm.paper_schedule(opt_G, opt_D, args, 0, 400)
    assert opt_G.param_groups[0]["momentum"] == pytest.approx(0.7)


def test_simultaneous_step_takes_both_gradients_from_one_pass():
    """Both players step from the weights before the step: D on (BCE(D(x), 1) + BCE(D(G(z)), 0)) / 2, G on
    BCE(D(G(z)), 1) through the D of before its update (Algorithm 1 would use the updated D)."""
    torch.manual_seed(0)
    G, D = gm.PaperGenerator(nz=4, pixel_mean=torch.full((784,), 0.3)), gm.PaperDiscriminator(dropout=0.0)
    D.drop_input.p = 0.0
    x, z = torch.rand(6, 1, 28, 28) * 2 - 1, torch.randn(6, 4)
    G0, D0 = [p.detach().clone() for p in G.parameters()], [p.detach().clone() for p in D.parameters()]
    loss_d = (gm.d_loss(D(x), 1.0) + gm.d_loss(D(G(z).detach()), 0.0)) / 2
    grads_d = torch.autograd.grad(loss_d, list(D.parameters()))
    grads_g = torch.autograd.grad(gm.g_loss(D(G(z))), list(G.parameters()))
    opt_G, opt_D = (torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.5) for n in (G, D))
    stats = gm.simultaneous_step(G, D, opt_G, opt_D, x, z)
    assert stats[0] == pytest.approx(loss_d.item(), rel=1e-6)
    for before, grad, after in zip(D0 + G0, grads_d + grads_g, list(D.parameters()) + list(G.parameters())):
        assert torch.allclose(after, before - 0.1 * grad, atol=1e-7)


def test_the_paper_recipe_trains_on_the_first_50000_images_resumes_exactly_and_refuses_k(run, data, monkeypatch):
    assert run(gm.main, small(data, "whole", "--recipe", "paper", "--epochs", 2))[0] == 0
    real_step = gm.simultaneous_step
    monkeypatch.setattr(gm, "simultaneous_step", signalled_at(real_step, 3, signal.SIGTERM))
    assert run(gm.main, small(data, "split", "--recipe", "paper", "--epochs", 2))[0] == 130
    monkeypatch.setattr(gm, "simultaneous_step", real_step)
    assert run(gm.main, ["--resume", "--output-dir", "split"])[0] == 0
    whole, split = weights("whole"), weights("split")
    assert all(torch.equal(whole[k], split[k]) for k in whole) and "net.4.bias" in whole
    assert "--recipe paper, not ours" in one_line_error(run, ["--resume", "--recipe", "ours", "--output-dir", "split"])
    assert "no --d-steps" in one_line_error(run, small(data, "k", "--recipe", "paper", "--d-steps", 2))
    assert "no --d-steps" in one_line_error(run, small(data, "k", "--recipe", "paper", "--r1", 1))
    one_line_error(run, small(data, "k", "--recipe", "goodfellow"))

    class Mnist50008(torchvision.datasets.MNIST):  # 50,008 training images, 10 test images
        def __init__(self, root, train, download):
            self.data = torch.zeros(50_008 if train else 10, 28, 28, dtype=torch.uint8)
    monkeypatch.setattr(torchvision.datasets, "MNIST", Mnist50008)
    code, out, _ = run(gm.main, small(data, "fifty", "--recipe", "paper", "--dry-run"))
    assert code == 0 and "50000 images" in out


def test_the_average_weighs_g_of_k_steps_ago_by_ema_to_the_k_from_the_first_step():
    G, G_ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    history = [3.0, -1.0, 2.0, 5.0]
    for t, w in enumerate(history):
        G.weight.data.fill_(w)
        gm.update_average(G_ema, G, 0.9, t)
    shares = [0.9 ** (len(history) - 1 - t) for t in range(len(history))]
    expected = sum(s * w for s, w in zip(shares, history)) / sum(shares)
    assert G_ema.weight.item() == pytest.approx(expected, rel=1e-6)


def test_generate_draws_nearest_png_and_interpolate_walks_straight_lines(run, data, monkeypatch):
    assert run(gm.main, ["--dry-run", "--dataroot", data, "--output-dir", "d"])[0] == 0
    code, out, _ = run(gm.main, ["--generate", 40, "--output-dir", "d"])
    assert code == 0 and "samples" in out and "10 test images" in out
    assert iio.imread("d/nearest.png").shape[:2] == (8 * 30 + 2, 8 * 30 + 2)  # 32 pairs, 8 a row
    seen = []
    real_forward = gm.Generator.forward
    monkeypatch.setattr(gm.Generator, "forward", lambda self, z: seen.append(z) or real_forward(self, z))
    assert run(gm.main, ["--interpolate", "--output-dir", "d"])[0] == 0
    z = seen[0].view(8, 10, -1)
    steps = z[:, 1:] - z[:, :-1]
    assert torch.allclose(steps, steps[:, :1].expand_as(steps), atol=1e-5)  # equal steps: a straight line
    assert iio.imread("d/interpolation.png").shape[:2] == (8 * 30 + 2, 10 * 30 + 2)


def test_a_checkpoint_from_before_the_recipes_resumes_as_ours(run, data):
    assert run(gm.main, small(data, "d", "--epochs", 1))[0] == 0
    ckpt = torch.load("d/checkpoint.pt", weights_only=True)
    del ckpt["args"]["recipe"]
    torch.save(ckpt, "d/checkpoint.pt")
    code, out, err = run(gm.main, ["--resume", "--epochs", 2, "--output-dir", "d"])
    assert code == 0, err
    assert "'recipe': 'ours'" in out
