"""gan_gaussian.py: the equations on hand-computed values, and the shared contract end to end."""
import math
import os
import pickle

import numpy as np
import pytest
import torch

import gan_gaussian as gg

HEADER = "epoch,iteration,loss_d,loss_g,d_x,d_g_z,samples_per_s,elapsed_s"


# ---- the equations ----

def test_moments_by_hand():
    # [1, 2, 3, 4]: mean 2.5, var 1.25, skew 0, m4 = 2.5625 -> kurtosis 2.5625 / 1.5625 - 3 = -1.36
    # [0, 0, 0, 4]: mean 1, var 3, m3 = 6 -> skew 6 / 3^1.5, m4 = 21 -> kurtosis 21 / 9 - 3
    x = torch.tensor([[1.0, 2, 3, 4], [0, 0, 0, 4]])
    expected = torch.tensor([[2.5, math.sqrt(1.25), 0, -1.36], [1, math.sqrt(3), 6 / 3 ** 1.5, 21 / 9 - 3]])
    torch.testing.assert_close(gg.moments(x), expected)


def test_d_loss_is_eq1_negated():
    # -(log D(x) + log(1 - D(G(z)))) with D = sigmoid(logit): target 1 for x, 0 for G(z)
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    by_hand = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(1))))
    assert (gg.d_loss(real, 1.0) + gg.d_loss(fake, 0.0)).item() == pytest.approx(by_hand, abs=1e-6)
    assert gg.d_loss(torch.zeros(3), 0.0).item() == pytest.approx(math.log(2), abs=1e-6)


def test_g_loss_is_non_saturating():
    # -log D(G(z)), not log(1 - D(G(z))): at logit -1 that is log(1 + e)
    assert gg.g_loss(torch.tensor([-1.0])).item() == pytest.approx(math.log(1 + math.e), abs=1e-6)


def test_r1_penalty_of_a_linear_d_is_its_squared_weight():
    w = torch.tensor([3.0, -4.0])
    x = torch.randn(5, 2, requires_grad=True)
    assert gg.r1_penalty(x @ w, x).item() == pytest.approx(25.0)


def test_ks_distance_by_hand():
    assert gg.ks_distance(torch.tensor([4.0]), 4.0, 1.25) == pytest.approx(0.5)
    # two points at the quartiles: the empirical CDF steps 0 -> 0.5 -> 1 where the true one is 0.25, 0.75
    q = 1.25 * math.sqrt(2) * torch.erfinv(torch.tensor([-0.5, 0.5])) + 4
    assert gg.ks_distance(q, 4.0, 1.25) == pytest.approx(0.25, abs=1e-6)


# ---- the run: a ten-second toy, one checkpoint at the end ----

def weights(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["G"]


def test_dry_run_writes_every_output(run):
    code, out, err = run(gg.main, ["--dry-run", "--output-dir", "d"])
    assert code == 0, err
    for name in ("checkpoint.pt", "log.csv", "loss.png", "histogram.png", "progress.gif"):
        assert os.path.getsize(os.path.join("d", name)) > 0, name
    with open("d/log.csv") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith(HEADER + ",real_mean")
    assert len(lines) == 3  # header + one row per epoch of the 2-epoch dry run
    assert "loss_D" in out and "D(G(z))" in out and "samples/s" in out and "ETA" in out
    ckpt = torch.load("d/checkpoint.pt", weights_only=True)
    assert set(ckpt) == {"script", "args", "G", "D"} and ckpt["script"] == "gan_gaussian"


def test_same_seed_same_run_other_seed_other_run(run):
    for out, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert run(gg.main, ["--epochs", 20, "--seed", seed, "--output-dir", out])[0] == 0
    a, b, c = weights("a"), weights("b"), weights("c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_second_run_replaces_the_first(run):
    """A ten-second toy: running it again into the same folder trains afresh."""
    assert run(gg.main, ["--epochs", 5, "--output-dir", "d"])[0] == 0
    assert run(gg.main, ["--epochs", 5, "--seed", 2, "--output-dir", "d"])[0] == 0
    assert torch.load("d/checkpoint.pt", weights_only=True)["args"]["seed"] == 2


def test_generate_writes_samples_in_eval_mode(run, monkeypatch):
    assert run(gg.main, ["--dry-run", "--output-dir", "d"])[0] == 0
    modes = []
    real_forward = gg.Generator.forward

    def recording(self, z):
        modes.append(self.training)
        return real_forward(self, z)
    monkeypatch.setattr(gg.Generator, "forward", recording)
    code, out, _ = run(gg.main, ["--generate", 123, "--output-dir", "d"])
    assert code == 0 and modes == [False]
    x = np.load("d/samples.npy")
    assert x.shape == (123,) and np.isfinite(x).all()
    assert "KS distance" in out


def test_nan_stops_the_run_in_one_line_and_writes_no_checkpoint(run, monkeypatch):
    real_loss, calls = gg.d_loss, []

    def loss_that_breaks(*a):
        calls.append(1)
        return real_loss(*a) * (float("nan") if len(calls) > 24 else 1.0)  # 2 calls an epoch

    monkeypatch.setattr(gg, "d_loss", loss_that_breaks)
    code, _, err = run(gg.main, ["--epochs", 50, "--log-every", 5, "--output-dir", "d"])
    assert code == 1 and err.startswith("error: training diverged") and len(err.splitlines()) == 1
    assert not os.path.exists("d/checkpoint.pt")


def one_line_error(run, argv):
    code, _, err = run(gg.main, argv)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv", [
    ["--batch-size", "0"], ["--epochs", "-3"], ["--epochs", "many"], ["--std", "0"], ["--r1", "-1"],
    ["--preprocess", "cubes"], ["--generate", "0"], ["--no-such-flag"], ["--resume"],
])
def test_bad_options_get_one_line(run, argv):
    one_line_error(run, argv + ["--output-dir", "d"])
    assert not os.path.exists("d")


def test_generate_needs_a_checkpoint_of_this_script(run):
    assert "no checkpoint" in one_line_error(run, ["--generate", "5", "--output-dir", "empty"])
    assert run(gg.main, ["--dry-run", "--output-dir", "d"])[0] == 0
    os.makedirs("other")
    torch.save(dict(torch.load("d/checkpoint.pt", weights_only=True), script="dcgan"),
               "other/checkpoint.pt")
    assert "no checkpoint of gan_gaussian.py" in one_line_error(run, ["--generate", "5",
                                                                      "--output-dir", "other"])


def test_loading_a_checkpoint_never_runs_code(run):
    class Payload:
        def __reduce__(self):
            return (os.mkdir, ("pwned",))

    os.makedirs("evil")
    with open("evil/checkpoint.pt", "wb") as f:
        pickle.dump({"args": {}, "script": "gan_gaussian", "x": Payload()}, f)
    one_line_error(run, ["--generate", "3", "--output-dir", "evil"])
    assert not os.path.exists("pwned")


def test_output_dir_that_is_a_file(run):
    open("file", "w").close()
    one_line_error(run, ["--dry-run", "--output-dir", "file"])
