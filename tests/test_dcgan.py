"""dcgan.py: the paper's networks and losses, every dataset format (tiny files written in the real
formats into a temp dir, read offline by the real loaders), and the shared contract."""
import argparse
import math
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import types

import imageio.v3 as iio
import pytest
import torch
import torch.nn as nn
import torchvision

import dcgan
import lsgan
from conftest import DdpLikeD, ROOT, dies_at, make_cifar10, make_image_folder, make_lsun, make_mnist, signalled_at

HEADER = "epoch,iteration,loss_d,loss_g,d_x,d_g_z,samples_per_s,elapsed_s"


def weights(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["G"]


def one_line_error(run, argv, module=dcgan):
    code, _, err = run(module.main, argv)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


# ---- the paper ----

def test_the_64x64_networks_are_the_torch_reference_layer_list():
    G, D = dcgan.Generator(100, 64, 3, 64), dcgan.Discriminator(64, 3, 64)
    convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding) for m in convs] == [
        (100, 512, (4, 4), (1, 1), (0, 0)), (512, 256, (4, 4), (2, 2), (1, 1)), (256, 128, (4, 4), (2, 2), (1, 1)),
        (128, 64, (4, 4), (2, 2), (1, 1)), (64, 3, (4, 4), (2, 2), (1, 1))]
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in convs] == [
        (3, 64, (2, 2)), (64, 128, (2, 2)), (128, 256, (2, 2)), (256, 512, (2, 2)), (512, 1, (1, 1))]
    assert all(m.bias is None for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    assert all(m.bias is None for m in D.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    # BatchNorm everywhere but G's output and D's input; ReLU/Tanh in G, LeakyReLU(0.2) in D; no Sigmoid.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in G.modules()) == 4
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D.modules()) == 3
    assert isinstance(D.net[1], nn.LeakyReLU) and D.net[1].negative_slope == 0.2
    assert isinstance(G.net[-1], nn.Tanh) and isinstance(D.net[-1], nn.Conv2d)
    assert not any(isinstance(m, (nn.Linear, nn.MaxPool2d, nn.Sigmoid)) for m in list(G.modules()) + list(D.modules()))


@pytest.mark.parametrize("size,blocks", [(32, 2), (64, 3), (128, 4), (256, 5)])
def test_every_image_size(size, blocks):
    G, D = dcgan.Generator(8, 4, 3, size), dcgan.Discriminator(4, 3, size)
    images = G(torch.randn(2, 8))
    assert images.shape == (2, 3, size, size)
    assert D(images).shape == (2,)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in G.modules()) == blocks + 2


def test_weights_start_from_n_0_002():
    G = dcgan.Generator()
    G.apply(dcgan.init_weights)
    w = G.net[0].weight
    assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.02)


def test_d_loss_is_eq1_negated_and_g_loss_non_saturating():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])
    sig = lambda v: 1 / (1 + math.exp(-v))
    by_hand = -(math.log(sig(2)) + math.log(sig(0))) / 2 - (math.log(1 - sig(-1)) + math.log(1 - sig(1))) / 2
    assert (dcgan.d_loss(real, 1.0) + dcgan.d_loss(fake, 0.0)).item() == pytest.approx(by_hand, abs=1e-6)
    assert dcgan.g_loss(fake).item() == pytest.approx(-(math.log(sig(-1)) + math.log(sig(1))) / 2, abs=1e-6)
    smoothed = -(0.9 * math.log(sig(2)) + 0.1 * math.log(1 - sig(2)) + 0.9 * math.log(sig(0)) + 0.1 * math.log(sig(0))) / 2
    assert dcgan.d_loss(real, 0.9).item() == pytest.approx(smoothed, abs=1e-6)  # one-sided label smoothing


def test_a_run_that_ends_in_noise_stops_at_iteration_200(run):
    # Forced: G barely moves (--lr 1e-9) while D learns fast, so D(G(z)) falls to ~0 at once.
    code, out, err = run(dcgan.main, ["--dataset", "fake", "--image-size", 32, "--ngf", 4, "--ndf", 4, "--batch-size", 4,
                                      "--lr", "1e-9", "--lr-d", "0.01", "--output-dir", "d"])
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("error: D(G(z)) averaged 0.00") and "iterations 151-200" in err and "--seed" in err and "--label-smoothing 0.1" in err
    assert "[iter 200/2500]" in out and "[iter 250/" not in out


def test_samples_use_running_statistics_and_leave_them_alone():
    G = dcgan.Generator(8, 4, 1, 32)
    z = torch.randn(6, 8)
    before = [b.clone() for b in G.buffers()]
    one, all_ = dcgan.sample(G, z[:1]), dcgan.sample(G, z)
    assert torch.allclose(one[0], all_[0], atol=1e-6)  # an image depends on its own z only
    assert all(torch.equal(a, b) for a, b in zip(before, G.buffers())) and G.training


# ---- every dataset format ----

@pytest.fixture
def no_cifar_md5(monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)


def dry(data, out, *extra):
    return ["--dry-run", "--dataroot", data, "--output-dir", out, "--workers", 0, *extra]


def test_fake(run):
    code, out, err = run(dcgan.main, ["--dataset", "fake", "--dry-run", "--output-dir", "d"])
    assert code == 0, err
    for name in ("checkpoint.pt", "log.csv", "loss.png", "real.png", "epoch_001.png", "progress.gif"):
        assert os.path.getsize(os.path.join("d", name)) > 0, name
    with open("d/log.csv") as f:
        lines = f.read().splitlines()
    assert lines[0] == HEADER and len(lines) == 3
    assert "loss_D" in out and "D(G(z))" in out and "img/s" in out and "ETA" in out and "done" in out
    assert iio.imread("d/epoch_001.png").shape == (8 * 66 + 2, 8 * 66 + 2, 3)


def test_mnist_idx_at_32(run, tmp_path):
    root = make_mnist(tmp_path / "m")
    assert run(dcgan.main, dry(root, "d", "--dataset", "mnist", "--image-size", 32))[0] == 0
    assert iio.imread("d/real.png").shape[:2] == (5 * 34 + 2, 8 * 34 + 2)  # all 40 images, at 32x32


def test_fashion_mnist(run, tmp_path):
    root = make_mnist(tmp_path / "f", folder="FashionMNIST")
    assert run(dcgan.main, dry(root, "d", "--dataset", "fashion-mnist"))[0] == 0


def test_cifar10_pickles(run, tmp_path, no_cifar_md5):
    root = make_cifar10(tmp_path / "c")
    code, _, err = run(dcgan.main, dry(root, "d", "--dataset", "cifar10", "--image-size", 32))
    assert code == 0, err


def test_lsun_lmdb_with_a_worker(run, tmp_path):
    root = make_lsun(tmp_path / "l")
    code, _, err = run(dcgan.main, ["--dry-run", "--dataroot", root, "--output-dir", "d", "--dataset", "lsun",
                                    "--classes", "bedroom", "--workers", 1])
    assert code == 0, err
    assert iio.imread("d/real.png").shape[:2] == (2 * 66 + 2, 8 * 66 + 2)  # 12 images


@pytest.mark.parametrize("dataset", ["celeba", "folder", "lfw", "imagenet"])
def test_image_folders_at_128(run, tmp_path, dataset):
    root = make_image_folder(tmp_path / "i")
    code, _, err = run(dcgan.main, dry(root, "d", "--dataset", dataset, "--image-size", 128))
    assert code == 0, err


def test_folder_images_are_decoded_once_into_a_cache_that_trains_as_decoding_does(run, tmp_path,
                                                                                  monkeypatch):
    root = make_image_folder(tmp_path / "i", n=16)
    common = ["--dataset", "folder", "--dataroot", root, "--image-size", 32, "--batch-size", 8,
              "--epochs", 2, "--ngf", 8, "--ndf", 8, "--workers", 0]
    code, out, err = run(dcgan.main, common + ["--output-dir", "c"])
    assert code == 0 and "decoding 16 images once" in out, err
    cache, = [os.path.join(root, f) for f in os.listdir(root) if f.endswith(".u8")]
    assert os.path.getsize(cache) == 16 * 3 * 32 * 32 and not os.path.exists(cache + ".tmp")
    code, out, err = run(dcgan.main, common + ["--no-cache", "--output-dir", "n"])
    assert code == 0 and "decoding" not in out, err
    assert all(torch.equal(a, b) for a, b in zip(weights("c").values(), weights("n").values()))
    code, out, err = run(dcgan.main, common + ["--workers", 1, "--output-dir", "c2"])  # reused
    assert code == 0 and "decoding" not in out, err
    assert all(torch.equal(a, b) for a, b in zip(weights("c").values(), weights("c2").values()))
    # another size, or a changed file: another cache; the old one is never used for it
    assert run(dcgan.main, common[:5] + [64] + common[6:] + ["--epochs", 1, "--output-dir", "s"])[0] == 0
    os.utime(os.path.join(root, "images", "0000.jpg"), ns=(0, 0))
    code, out, err = run(dcgan.main, common + ["--workers", 1, "--output-dir", "t"])
    assert code == 0 and "decoding 16 images once" in out, err
    assert len([f for f in os.listdir(root) if f.endswith(".u8")]) == 3
    # a damaged cache, or no room for one: one error line, nothing written
    damaged = [os.path.join(root, f) for f in os.listdir(root) if f.endswith(".u8")]
    for path in damaged:
        with open(path, "r+b") as f:
            f.truncate(100)
    assert "damaged" in one_line_error(run, common + ["--output-dir", "v"])
    assert not os.path.exists("v")
    for path in damaged:
        os.remove(path)

    # too little room, said before decoding; the disk filling up while writing: nothing is left
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
    err = one_line_error(run, common + ["--output-dir", "w"])
    assert "no room for the image cache's 4.92e-05 GB" in err and "--no-cache" in err
    monkeypatch.undo()

    def fills_the_disk(*args, **kwargs):
        yield torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(dcgan, "decoder", fills_the_disk)
    assert "No space left on device" in one_line_error(run, common + ["--output-dir", "w"])
    assert not [f for f in os.listdir(root) if f.endswith((".u8", ".tmp"))]


# ---- the contract ----

def test_interrupted_mid_epoch_and_resumed_by_the_printed_command_equals_uninterrupted(run, tmp_path,
                                                                                     monkeypatch):
    """The command a stop prints resumes the run as it was started: its data far from the working
    directory, --amp on. A resume may change a run option, and says so."""
    root = make_mnist(tmp_path / "far" / "away", n=48)
    common = ["--dataset", "mnist", "--dataroot", root, "--batch-size", 8, "--image-size", 32, "--epochs", 2,
              "--log-every", 2, "--ngf", 8, "--ndf", 8, "--amp"]
    assert run(dcgan.main, common + ["--output-dir", "whole"])[0] == 0

    real_step = dcgan.train_step
    monkeypatch.setattr(dcgan, "train_step", signalled_at(real_step, 4, signal.SIGTERM))
    code, out, _ = run(dcgan.main, common + ["--output-dir", "split"])
    assert code == 130 and torch.load("split/checkpoint.pt", weights_only=True)["iteration"] == 4
    printed = shlex.split(out.split("Resume with:\n")[1])
    assert printed[:2] == ["python", "dcgan.py"]
    monkeypatch.setattr(dcgan, "train_step", real_step)
    code, out, err = run(dcgan.main, printed[2:])
    assert code == 0 and "changed" not in out, err
    whole, split = weights("whole"), weights("split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    with open("whole/log.csv") as a, open("split/log.csv") as b:
        assert [r.split(",")[:6] for r in a] == [r.split(",")[:6] for r in b]
    code, out, err = run(dcgan.main, ["--resume", "--epochs", 3, "--no-amp", "--output-dir", "split"])
    assert code == 0 and "changed from the run's options: --epochs 3 (the run's: 2), --amp False (the " \
                         "run's: True)" in out


def test_a_run_killed_mid_epoch_resumes_from_its_last_timed_checkpoint(run, tmp_path, monkeypatch):
    """--checkpoint-every MINUTES (0: every step) writes the checkpoint within an epoch: a run that
    dies at once (kill -9, the OOM killer: nothing of it runs after) loses the steps since then."""
    root = make_mnist(tmp_path / "m", n=48)
    common = ["--dataset", "mnist", "--dataroot", root, "--batch-size", 8, "--image-size", 32, "--epochs", 1,
              "--ngf", 8, "--ndf", 8]
    assert run(dcgan.main, common + ["--output-dir", "whole"])[0] == 0
    real_step = dcgan.train_step
    monkeypatch.setattr(dcgan, "train_step", dies_at(real_step, 5))
    with pytest.raises(MemoryError):
        run(dcgan.main, common + ["--checkpoint-every", 0, "--output-dir", "split"])
    assert torch.load("split/checkpoint.pt", weights_only=True)["iteration"] == 4
    monkeypatch.setattr(dcgan, "train_step", real_step)
    assert run(dcgan.main, ["--resume", "--output-dir", "split"])[0] == 0
    whole, split = weights("whole"), weights("split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_checkpoints_reach_the_disk_before_and_after_their_rename(monkeypatch, tmp_path):
    """After a power cut some filesystems leave a renamed file empty unless the file, then its
    folder, were synced: then --resume would call the checkpoint damaged."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(old, new):
        events.append("rename")
        real_replace(old, new)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    dcgan.save({"iteration": 1}, str(tmp_path / "checkpoint.pt"))
    assert events == ["file", "rename", "folder"]
    assert dcgan.load(str(tmp_path / "checkpoint.pt"), "checkpoint")["iteration"] == 1


def test_the_same_signal_twice_within_2_s_is_one_stop(monkeypatch):
    """A scheduler signals every process and torchrun forwards it too: each process gets it twice
    at once, which must still checkpoint. A second signal later stops at once."""
    clock = [100.0]
    monkeypatch.setattr(dcgan.time, "monotonic", lambda: clock[0])
    with dcgan.StopOnSignal() as stop:
        stop.handle(signal.SIGTERM, None)
        clock[0] += 0.5
        stop.handle(signal.SIGTERM, None)
        assert stop.requested
        clock[0] += 5
        with pytest.raises(SystemExit) as stopped:
            stop.handle(signal.SIGINT, None)
    assert stopped.value.code == 130


def test_the_walk_is_a_great_circle_or_with_lerp_a_straight_line():
    a, b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    t = torch.tensor([[0.0], [0.5], [1.0]])
    arc, line = dcgan.walk(a, b, t), dcgan.walk(a, b, t, lerp=True)
    assert torch.allclose(arc[[0, 2]], torch.cat([a, b])) and torch.allclose(line[[0, 2]], torch.cat([a, b]))
    # halfway, a quarter turn: sin(pi/4) / sin(pi/2) of each, by hand
    assert torch.allclose(arc[1], torch.tensor([math.sqrt(0.5), 2 * math.sqrt(0.5), 0.0]))
    assert torch.allclose(line[1], torch.tensor([0.5, 1.0, 0.0]))
    same = dcgan.walk(a, a, t)  # no angle: a, not a division by zero
    assert torch.allclose(same, a.expand(3, 3), atol=1e-5)


def test_generate_and_interpolate(run):
    assert run(dcgan.main, ["--dataset", "fake", "--dry-run", "--output-dir", "d", "--image-size", 32])[0] == 0
    assert run(dcgan.main, ["--generate", 7, "--output-dir", "d"])[0] == 0
    assert sorted(os.listdir("d/samples")) == [f"{i:06d}.png" for i in range(7)] + ["z.pt"]
    assert torch.load("d/samples/z.pt", weights_only=True)["z"].shape == (7, 100)
    assert iio.imread("d/samples/000006.png").shape == (32, 32, 3)
    assert run(dcgan.main, ["--interpolate", "--output-dir", "d"])[0] == 0
    assert iio.imread("d/interpolation.png").shape[:2] == (8 * 34 + 2, 10 * 34 + 2)
    assert len(iio.imread("d/interpolation.gif", index=None)) == 18  # there and back
    assert run(dcgan.main, ["--interpolate", "--lerp", "--output-dir", "d"])[0] == 0


def test_amp_and_channels_last_on_cpu(run):
    code, out, err = run(dcgan.main, ["--dataset", "fake", "--dry-run", "--output-dir", "d", "--image-size", 32,
                                      "--amp", "--channels-last"])
    assert code == 0, err
    assert "'amp': True" in out and "'channels_last': True" in out


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-channels-last"], False), (["--channels-last"], True)])
def test_channels_last_is_the_cpu_default(run, flag, expected):
    code, out, err = run(dcgan.main, ["--dataset", "fake", "--dry-run", "--output-dir", "d", "--image-size", 32,
                                      "--device", "cpu"] + flag)
    assert code == 0, err
    assert ("'channels_last': True" in out) == expected


def test_nan_stops_the_run(run, monkeypatch):
    real_loss, calls = dcgan.d_loss, []

    def nan_loss(*a, **k):
        calls.append(1)
        return real_loss(*a, **k) * float("nan")
    monkeypatch.setattr(dcgan, "d_loss", nan_loss)
    code, _, err = run(dcgan.main, ["--dataset", "fake", "--dry-run", "--output-dir", "d", "--image-size", 32])
    assert code == 1 and err.startswith("error: training diverged") and len(err.splitlines()) == 1
    assert not os.path.exists("d/checkpoint.pt")


@pytest.mark.parametrize("argv,expect", [
    (["--image-size", "48"], "--image-size"), (["--batch-size", "0"], "batch-size"), (["--dataset", "svhn"], "svhn"),
    (["--lr", "-1"], "lr"), (["--workers", "x"], "workers"),
])
def test_bad_options_get_one_line(run, argv, expect):
    assert expect in one_line_error(run, ["--dataset", "fake", "--output-dir", "d"] + argv)
    assert not os.path.exists("d")


def test_missing_data_says_what_to_put_where(run, monkeypatch):
    assert "bedroom_train_lmdb" in one_line_error(run, ["--dataset", "lsun", "--dataroot", "none", "--output-dir", "d"])
    assert "img_align_celeba" in one_line_error(run, ["--dataset", "celeba", "--dataroot", "none", "--output-dir", "d"])
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [])
    assert "train-images" in one_line_error(run, ["--dataset", "mnist", "--dataroot", "none", "--output-dir", "d"])


def test_bad_checkpoints_get_one_line_and_are_kept(run):
    assert run(dcgan.main, ["--dataset", "fake", "--dry-run", "--output-dir", "d", "--image-size", 32])[0] == 0
    before = open("d/checkpoint.pt", "rb").read()
    assert "exists" in one_line_error(run, ["--dataset", "fake", "--dry-run", "--output-dir", "d"])
    assert "--image-size" in one_line_error(run, ["--generate", 3, "--image-size", 64, "--output-dir", "d"])
    assert "exclude" in one_line_error(run, ["--generate", 3, "--interpolate", "--output-dir", "d"])
    assert open("d/checkpoint.pt", "rb").read() == before
    os.makedirs("corrupt")
    with open("corrupt/checkpoint.pt", "wb") as f:
        f.write(before[:1000])
    assert "cannot read" in one_line_error(run, ["--resume", "--output-dir", "corrupt"])


def test_torchrun_two_processes_on_gloo(tmp_path):
    """DDP on CPU: 2 processes, global batch 8 (4 each); rank 0 alone writes; the checkpoint resumes in one."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           os.path.join(ROOT, "dcgan.py"), "--dataset", "fake", "--dry-run", "--image-size", "32",
           "--output-dir", str(tmp_path / "ddp"), "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done:") == 1 and "2 process(es)" in done.stdout
    assert torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["iteration"] == 2
    one = subprocess.run([sys.executable, os.path.join(ROOT, "dcgan.py"), "--resume", "--dry-run", "--output-dir",
                          str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["iteration"] == 4


def torchrun(args, port):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           os.path.join(ROOT, "dcgan.py"), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs: nn.SyncBatchNorm is CUDA-only")
def test_two_gpus_compute_what_one_does_and_resume(run, tmp_path):
    """--sync-bn (default): nn.SyncBatchNorm over the global batch and z drawn for the global batch,
    so 2 processes train what 1 process trains, to float rounding (cuDNN: not bit for bit)."""
    data = make_mnist(tmp_path / "data", n=24)  # 3 steps of 8 per epoch
    common = ["--dataset", "mnist", "--dataroot", data, "--image-size", 32, "--ngf", 8, "--ndf", 8,
              "--batch-size", 8, "--device", "cuda", "--log-every", 1]
    for epochs in (1, 2):
        assert run(dcgan.main, common + ["--epochs", epochs, "--output-dir", f"one{epochs}"])[0] == 0
    assert "2 process(es)" in torchrun(common + ["--epochs", 1, "--output-dir", "two"], 29518)

    def gap(a, b):  # largest difference over G's and D's weights and BatchNorm statistics
        a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True) for d in (a, b))
        return max((a[n][k].float() - b[n][k].float()).abs().max().item() for n in ("G", "D") for k in a[n])
    assert gap("one1", "two") < 1e-4
    torchrun(["--resume", "--epochs", 2, "--output-dir", "two"], 29520)
    assert gap("one2", "two") < 1e-4


def test_d_step_backpropagates_the_real_batch_first_and_reduces_once():
    """One graph of D at a time (real: forward, backward; then generated), as in the authors' code; under
    DDP the real batch's gradients stay local (no_sync) and are reduced with the generated batch's."""
    args, _ = dcgan.get_options(["--dataset", "fake", "--image-size", "32", "--batch-size", "4", "--output-dir", "d"])
    G, D, opt_G, opt_D = dcgan.build(args, 3, torch.device("cpu"))
    ddp_D = DdpLikeD(D)
    dcgan.train_step(G, ddp_D, opt_G, opt_D, torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, args.nz))
    # the G-step goes through D's local module (frozen), not through DDP: no event there
    assert ddp_D.events == ["forward in no_sync", "backward in no_sync", "forward", "backward"]


def test_snapshots_each_epoch_and_sampling_from_one(run, tmp_path):
    """--snapshot-every 1 (default) keeps G's weights per epoch, small and weights only; --generate and
    --interpolate take --epoch K; a missing or damaged snapshot is one error line, nothing written."""
    data = make_mnist(tmp_path / "data", n=16)
    assert run(dcgan.main, ["--dataset", "mnist", "--dataroot", data, "--image-size", 32, "--ngf", 8, "--ndf", 8,
                            "--batch-size", 8, "--epochs", 2, "--output-dir", "d"])[0] == 0
    assert sorted(os.listdir("d/snapshots")) == ["epoch_001.pt", "epoch_002.pt"]
    first = torch.load("d/snapshots/epoch_001.pt", weights_only=True)
    last, ckpt = torch.load("d/snapshots/epoch_002.pt", weights_only=True), torch.load("d/checkpoint.pt",
                                                                                       weights_only=True)
    assert set(first) == {"script", "epoch", "G"} and first["epoch"] == 1
    assert all(torch.equal(last["G"][k], ckpt["G"][k]) for k in ckpt["G"])
    assert not all(torch.equal(first["G"][k], ckpt["G"][k]) for k in ckpt["G"])
    assert os.path.getsize("d/snapshots/epoch_001.pt") < os.path.getsize("d/checkpoint.pt") / 2
    for epoch in (1, 2):
        assert run(dcgan.main, ["--generate", 4, "--epoch", epoch, "--output-dir", "d"])[0] == 0
        os.rename("d/samples", f"d/samples{epoch}")
    assert run(dcgan.main, ["--generate", 4, "--output-dir", "d"])[0] == 0  # the checkpoint: epoch 2
    read = lambda folder: iio.imread(os.path.join(folder, "000000.png"))
    assert (read("d/samples2") == read("d/samples")).all() and not (read("d/samples1") == read("d/samples")).all()
    assert run(dcgan.main, ["--interpolate", "--epoch", 1, "--output-dir", "d"])[0] == 0
    err = one_line_error(run, ["--generate", 4, "--epoch", 3, "--output-dir", "d"])
    assert "no snapshot at d/snapshots/epoch_003.pt" in err
    with open("d/snapshots/epoch_001.pt", "wb") as f:
        f.write(b"not a snapshot")
    assert "cannot read" in one_line_error(run, ["--generate", 4, "--epoch", 1, "--output-dir", "d"])
    assert "--epoch" in one_line_error(run, ["--dataset", "mnist", "--dataroot", data, "--epoch", 1,
                                             "--output-dir", "e"])
    assert not os.path.exists("e")


def test_lsun_keys_are_listed_once_as_plain_text_and_no_cache_pickle_is_ever_loaded(run, tmp_path):
    """torchvision's LSUN unpickles a file named _cache_<letters of the lmdb path> from the current
    directory: plant one whose unpickling would run code, and check that it never runs. The key list is
    plain text beside the database, reused while it matches, listed again when damaged."""
    import pickle
    import string
    root = make_lsun(tmp_path / "l")
    db = os.path.join(root, "bedroom_train_lmdb")

    class Payload:
        def __reduce__(self):
            return (os.mkdir, ("pwned",))
    with open("_cache_" + "".join(c for c in db if c in string.ascii_letters), "wb") as f:
        pickle.dump(Payload(), f)
    lsun = ["--dry-run", "--dataroot", root, "--dataset", "lsun", "--classes", "bedroom", "--workers", 0]
    assert run(dcgan.main, lsun + ["--output-dir", "a"])[0] == 0
    assert not os.path.exists("pwned")
    keys = open(db + "_keys.txt", "rb").read().split()
    assert len(keys) == 12 and all(len(k) == 40 for k in keys)
    stamp = os.stat(db + "_keys.txt").st_mtime_ns
    assert run(dcgan.main, lsun + ["--output-dir", "b"])[0] == 0
    assert os.stat(db + "_keys.txt").st_mtime_ns == stamp  # reused
    with open(db + "_keys.txt", "wb") as f:
        f.write(b"x\n" * 12)  # as many lines, none a key
    assert run(dcgan.main, lsun + ["--output-dir", "c"])[0] == 0
    assert open(db + "_keys.txt", "rb").read().split() == keys


def test_lsun_with_workers_under_the_spawn_start_method(tmp_path):
    """macOS and Windows start DataLoader workers with spawn: the dataset must pickle (no lmdb handle)."""
    root = make_lsun(tmp_path / "l")
    code = ("import multiprocessing, sys; multiprocessing.set_start_method('spawn'); "
            f"sys.path.insert(0, {ROOT!r}); import dcgan; "
            f"dcgan.main(['--dry-run', '--dataroot', {root!r}, '--dataset', 'lsun', '--workers', '2', "
            f"'--output-dir', {str(tmp_path / 'd')!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.isfile(tmp_path / "d" / "checkpoint.pt")


def test_resuming_in_the_other_memory_layout_continues_the_run(run, tmp_path):
    """--channels-last may differ between a run and its resume (its default differs by device): Adam's
    state must follow the parameters' layout, or fused Adam pairs the wrong elements. The resumed run
    must sit as close to the uninterrupted one as a run in the other layout does (float rounding)."""
    data = make_mnist(tmp_path / "m", n=32)
    common = ["--dataset", "mnist", "--dataroot", data, "--image-size", 32, "--ngf", 8, "--ndf", 8,
              "--batch-size", 8, "--device", "cpu"]
    assert run(dcgan.main, common + ["--epochs", 2, "--no-channels-last", "--output-dir", "a"])[0] == 0
    assert run(dcgan.main, common + ["--epochs", 2, "--channels-last", "--output-dir", "b"])[0] == 0
    assert run(dcgan.main, common + ["--epochs", 1, "--channels-last", "--output-dir", "c"])[0] == 0
    assert run(dcgan.main, ["--resume", "--epochs", 2, "--no-channels-last", "--dataroot", data,
                            "--output-dir", "c"])[0] == 0
    a, b, c = weights("a"), weights("b"), weights("c")
    def gap(x):
        return max((x[k] - a[k]).abs().max().item() for k in a)
    assert gap(c) <= 10 * gap(b) + 1e-7, (gap(c), gap(b))


def test_read_only_data_keeps_its_cache_in_the_output_dir_and_lists_lsun_keys_each_time(run, tmp_path,
                                                                                       monkeypatch):
    root = make_lsun(tmp_path / "l")
    real_open = open

    def read_only_open(path, *args, **kwargs):  # the data folder refuses every write
        if str(path).startswith(root) and ("w" in (args[0] if args else kwargs.get("mode", "r"))):
            raise PermissionError(13, "Read-only file system", path)
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr("builtins.open", read_only_open)
    monkeypatch.setattr(dcgan.os, "access", lambda path, mode: not str(path).startswith(root))
    common = ["--dataset", "lsun", "--dataroot", root, "--image-size", 32, "--batch-size", 4, "--epochs", 1,
              "--ngf", 8, "--ndf", 8, "--workers", 0]
    code, out, err = run(dcgan.main, common + ["--output-dir", "d"])
    assert code == 0, err
    assert [f for f in os.listdir("d") if f.endswith(".u8")] and not os.path.exists(root + "/bedroom_train_lmdb_keys.txt")


# ---- the real run: what a GPU, a long run and data of one's own meet, checked without them ----

class Images:
    """Stands in for a batch of images on `device` (a CUDA one too): records pinning and copies as
    a tensor there would take them."""

    def __init__(self, device):
        self.device, self.events = torch.device(device), []

    def pin_memory(self):
        if self.device.type != "cpu":  # what torch says of a CUDA tensor
            raise RuntimeError("cannot pin 'torch.cuda.ByteTensor' only dense CPU tensors can be pinned")
        self.events.append("pin")
        return self

    def to(self, device, non_blocking=False):
        self.events.append(("to", str(device), non_blocking))
        return self


@pytest.mark.parametrize("module", [dcgan, lsgan])
def test_images_reach_the_gpu_pinned_from_the_host_and_as_they_are_from_the_gpu(module):
    """pick_device gives torch.device("cuda"), and the in-memory datasets sit on "cuda:0": the two
    differ as devices, and pinning memory already on the GPU raised on the first batch."""
    on_gpu, on_host = Images("cuda:0"), Images("cpu")
    module.to_device(on_gpu, torch.device("cuda"))
    assert on_gpu.events == [("to", "cuda", True)]
    module.to_device(on_host, torch.device("cuda"))
    assert on_host.events == ["pin", ("to", "cuda", True)]
    for device in ("cpu", "mps"):
        host = Images("cpu")
        module.to_device(host, torch.device(device))
        assert host.events == [("to", device, True)]


class HostToDevice(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the copies from host memory to the meta device, which stands in for a GPU."""

    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0].device.type == "cpu" and \
                kwargs.get("device") == torch.device("meta"):
            self.copies += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("module", [dcgan, lsgan])
def test_the_epoch_order_reaches_the_device_once_an_epoch_not_once_a_step(module):
    """The order is drawn on the host (the same on every device); a host index per step would be a
    blocking copy per step on CUDA."""
    args = argparse.Namespace(dataset="mnist", seed=1, image_size=32, workers=0)
    images = torch.empty(40, 1, 32, 32, dtype=torch.uint8, device="meta")
    data = module.Data(args, torch.device("meta"), 40, 1, images=images)
    with HostToDevice() as counter:
        batches = list(data.batches(0, 0, 8, argparse.Namespace(rank=0, size=1)))
    assert len(batches) == 5 and all(b.device.type == "meta" and b.shape == (8, 1, 32, 32) for b in batches)
    assert counter.copies == 1


def test_the_mixture_is_drawn_on_the_device_without_copies():
    with HostToDevice() as counter:
        points = lsgan.mixture_points(512, torch.device("meta"))
    assert points.shape == (512, 2) and counter.copies == 0


class DDP(nn.Module):
    """Records what DistributedDataParallel is given."""

    def __init__(self, module, device_ids=None, broadcast_buffers=True):
        super().__init__()
        self.module, self.device_ids, self.broadcast_buffers = module, device_ids, broadcast_buffers


@pytest.mark.parametrize("module", [dcgan, lsgan])
def test_torchrun_on_gpus_each_process_takes_its_gpu_nccl_and_syncbatchnorm(module, monkeypatch):
    calls = []
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(module.dist, "init_process_group", lambda backend: calls.append(("group", backend)))
    monkeypatch.setattr(module.dist, "new_group", lambda backend: calls.append(("flags", backend)))
    monkeypatch.setattr(module.atexit, "register", lambda function: None)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", DDP)
    world = module.World("auto")
    assert world.device == torch.device("cuda", 1)
    assert calls == [("set_device", torch.device("cuda", 1)), ("group", "nccl"), ("flags", "gloo")]
    D = dcgan.Discriminator(4, 3, 32)
    wrapped = world.wrap(D, argparse.Namespace(sync_bn=True, compile=False))
    assert wrapped.module is D and wrapped.device_ids == [1] and wrapped.broadcast_buffers is False
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in D.modules()) == 2
    world.device = torch.device("cpu")  # gloo: each process normalises its own share
    D = dcgan.Discriminator(4, 3, 32)
    wrapped = world.wrap(D, argparse.Namespace(sync_bn=True, compile=False))
    assert wrapped.device_ids is None and not any(isinstance(m, nn.SyncBatchNorm) for m in D.modules())


def test_the_gpu_generator_is_saved_and_restored(monkeypatch, tmp_path):
    """z is drawn on the GPU: a resume there restores its generator as well as the CPU's."""
    state, restored = torch.arange(16, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", restored.append)
    dcgan.save_checkpoint(argparse.Namespace(output_dir=str(tmp_path)), {})
    dcgan.restore(dcgan.load(str(tmp_path / "checkpoint.pt"), "checkpoint"))
    assert len(restored) == 1 and torch.equal(restored[0], state)


def break_images(folder):
    """A truncated JPEG and an HTML page named .jpg, as scraped sets hold."""
    with open(os.path.join(folder, "0003.jpg"), "r+b") as f:
        f.truncate(300)
    with open(os.path.join(folder, "0007.jpg"), "wb") as f:
        f.write(b"<html>404 Not Found</html>")


@pytest.mark.parametrize("cache", ["--cache", "--no-cache"])
def test_images_that_cannot_be_decoded_are_left_out_and_named(run, tmp_path, cache):
    root = make_image_folder(tmp_path / "far" / "away", n=16)
    break_images(os.path.join(root, "images"))
    common = ["--dataset", "folder", "--dataroot", root, "--image-size", 32, "--batch-size", 7, "--epochs", 1,
              "--ngf", 8, "--ndf", 8, "--workers", 0, cache]
    code, out, err = run(dcgan.main, common + ["--output-dir", "d"])
    assert code == 0, err
    assert "left out" in err and "0003.jpg" in err and "0007.jpg" in err
    if cache == "--cache":  # the cache's name ends in the number it keeps; a later run reuses it
        assert "14 images" in out
        assert [f for f in os.listdir(root) if f.endswith(".u8")][0].endswith("_14.u8")
        code, out, err = run(dcgan.main, common + ["--output-dir", "e"])
        assert code == 0 and "decoding" not in out and "14 images" in out and "left out" not in err


def test_lsun_keys_and_decoding_show_progress_and_a_waiting_process_takes_the_cache(run, tmp_path, monkeypatch):
    root = make_lsun(tmp_path / "l", n=12, broken=(4, 9))
    common = ["--dataset", "lsun", "--dataroot", root, "--image-size", 32, "--batch-size", 4, "--epochs", 1,
              "--ngf", 8, "--ndf", 8, "--workers", 0]
    monkeypatch.setenv("LOCAL_RANK", "1")  # not the machine's first process: it waits for the cache
    naps = []

    def nap(seconds):  # while this one waits, the first process writes the cache
        naps.append(seconds)
        monkeypatch.setenv("LOCAL_RANK", "0")
        assert run(dcgan.main, common + ["--output-dir", "first"])[0] == 0
        monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(time, "sleep", nap)
    code, out, err = run(dcgan.main, common + ["--output-dir", "waiting"])
    assert code == 0 and naps == [5] and "decoding 12" not in out, err
    assert "10 images" in out
    monkeypatch.setenv("LOCAL_RANK", "0")
    os.remove(os.path.join(root, "bedroom_train_lmdb_keys.txt"))
    for cache in [f for f in os.listdir(root) if f.endswith(".u8")]:
        os.remove(os.path.join(root, cache))
    code, out, err = run(dcgan.main, common + ["--output-dir", "again"])
    assert code == 0, err
    assert "listed keys of" in out and "12/12" in out and "/s  ETA 0:00" in out
    assert "decoding 12 images once into" in out and "decoded 12/12" in out
    assert err.count("left out") == 2


def test_rehearsal_lsun_jpegs_stop_and_resume_kill_and_resume_then_torchrun(tmp_path):
    """The real run at a test's scale, as a user runs it: LSUN's format and image size (JPEGs),
    two of them broken, far from the working directory, through the default cache. Ctrl-C, then
    the printed command; kill -9, then the same command; the run ends as if whole. Then two
    processes under torchrun (gloo): the first decodes a new cache while the second waits."""
    root = make_lsun(tmp_path / "far" / "data", n=30, size=(341, 256), extension=".jpg", broken=(5, 17))
    out, env = tmp_path / "run", dict(os.environ, OMP_NUM_THREADS="1")
    argv = ["--dataset", "lsun", "--dataroot", root, "--image-size", 32, "--ngf", 8, "--ndf", 8, "--batch-size", 4,
            "--epochs", 20, "--checkpoint-every", 0, "--workers", 1, "--output-dir", out]

    def start(args):
        return subprocess.Popen([sys.executable, os.path.join(ROOT, "dcgan.py"), *map(str, args)], env=env,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def at(iteration):  # waits for a checkpoint at or past `iteration`, and gives its iteration
        while run.poll() is None:
            try:
                done = torch.load(out / "checkpoint.pt", weights_only=True)["iteration"]
                if done >= iteration:
                    return done
            except (OSError, RuntimeError, EOFError):
                pass
            time.sleep(0.1)
        raise AssertionError(run.stderr.read()[-2000:])

    run = start(argv)
    at(3)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 130, stderr[-2000:]
    assert stderr.count("left out") == 2 and "decoding 30 images once" in stdout
    printed = shlex.split(stdout.split("Resume with:\n")[1])[2:]
    run = start(printed)
    at(at(0) + 3)  # three steps past the stop
    run.kill()
    run.wait(timeout=300)
    run = start(printed)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0 and "decoding" not in stdout, stderr[-2000:]
    with open(out / "log.csv") as f:
        assert [int(row.split(",")[1]) for row in f.read().splitlines()[1:]] == list(range(1, 141))
    # torchrun, stopped as a scheduler stops a job (SIGTERM to every process): each process gets
    # it twice, from the scheduler and from torchrun, and must still checkpoint. The printed
    # command resumes under torchrun.
    out = tmp_path / "two"
    run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            os.path.join(ROOT, "dcgan.py"), *map(str, [*argv[:4], "--image-size", 64, *argv[6:-1],
                            out, "--epochs", 3])], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    at(3)
    with open(f"/proc/{run.pid}/task/{run.pid}/children") as f:
        workers = [int(pid) for pid in f.read().split()]
    assert len(workers) == 2
    for pid in [run.pid, *workers]:
        os.kill(pid, signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=300)
    assert "interrupted twice" not in stderr and stdout.count("decoding 30 images once") == 1, stderr[-3000:]
    printed = shlex.split(stdout.split("Resume with:\n")[1])
    assert printed[:4] == ["torchrun", "--nproc_per_node", "2", "dcgan.py"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", *printed[1:3],
                           os.path.join(ROOT, "dcgan.py"), *printed[4:]], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "2 process(es)" in done.stdout, done.stderr[-3000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 21


def test_a_run_that_fails_while_workers_decode_ends_instead_of_hanging(tmp_path):
    """Workers ignore SIGTERM (a stop is the main process's to make). An error that main() turns
    into its one line keeps them alive to the interpreter's exit, where multiprocessing sends them
    SIGTERM and waits: a run that had printed its error hung (10 minutes, measured, on a broken
    image). Here a disk error in a worker."""
    root = make_image_folder(tmp_path / "i", n=16)
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import dcgan\n"
            "def unreadable(transform, file):\n"
            "    if torch.utils.data.get_worker_info():  # in a worker, not for real.png\n"
            "        raise OSError(5, 'Input/output error', 'images/0003.jpg')\n"
            "    return dcgan.decode_now(transform, file)\n"
            "dcgan.decode_now, dcgan.decode = dcgan.decode, unreadable\n"
            "dcgan.main(['--dataset', 'folder', '--dataroot', sys.argv[2], '--no-cache', '--workers', '2',\n"
            "            '--image-size', '32', '--batch-size', '4', '--output-dir', sys.argv[3]])")
    done = subprocess.run([sys.executable, "-c", code, ROOT, root, str(tmp_path / "d")], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 2 and done.stderr == "error: OSError: [Errno 5] Input/output error: 'images/0003.jpg'\n"
