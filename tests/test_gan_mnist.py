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
from conftest import dies_at, make_mnist

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

    real_step, calls = gm.train_step, []

    def step_then_sigterm(*a):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGTERM)
        return real_step(*a)

    monkeypatch.setattr(gm, "train_step", step_then_sigterm)
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
