"""Shared test fixtures: run a script's main(argv) in-process, in a fresh temporary directory."""
import contextlib
import os
import signal
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own empty directory: outputs never land in the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def run(capsys):
    """run(main, argv) -> (exit status, stdout, stderr) of one in-process call."""
    def call(main, argv):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err
    return call


def write_idx(path, array):
    """Write a uint8 array in the idx format of MNIST: magic 0x0803 (images) or 0x0801 (labels)."""
    import struct
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with open(path, "wb") as f:
        f.write(header + array.astype("uint8").tobytes())


def make_mnist(root, folder="MNIST", n=40, seed=0):
    """A tiny MNIST (or FashionMNIST) in torchvision's layout: root/<folder>/raw/, all four files
    uncompressed, as torchvision leaves them after a download (it reads them; no download)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for split, count in (("train", n), ("t10k", 10)):
        images = np.zeros((count, 28, 28), np.uint8)
        for i, image in enumerate(images):  # a bright bar at a random place, on black, like a stroke
            r, c = rng.integers(4, 20, size=2)
            image[r:r + 8, c:c + 3] = 255
        write_idx(os.path.join(raw, f"{split}-images-idx3-ubyte"), images)
        write_idx(os.path.join(raw, f"{split}-labels-idx1-ubyte"), rng.integers(0, 10, count))
    return str(root)


def make_cifar10(root, n=20, seed=0):
    """A tiny CIFAR-10 in its python pickle layout: root/cifar-10-batches-py/{data_batch_1..5, test_batch,
    batches.meta}. torchvision checks the real files' md5: tests patch cifar.check_integrity."""
    import pickle
    import numpy as np
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return str(root)


def make_image_folder(root, sub="images", n=12, size=(40, 30), seed=0):
    """root/sub/0000.jpg ...: the layout ImageFolder reads (CelebA's img_align_celeba, LFW, a folder)."""
    import imageio.v3 as iio
    import numpy as np
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(n):
        iio.imwrite(os.path.join(root, sub, f"{i:04d}.jpg"), rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return str(root)


def make_lsun(root, category="bedroom", n=12, size=(48, 36), seed=0, extension=".png", broken=()):
    """root/<category>_train_lmdb: an lmdb whose values are encoded images, as LSUN's are (webp there);
    the values at `broken` are a cut image and, at every other one of them, not an image at all."""
    import imageio.v3 as iio
    import lmdb
    import numpy as np
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    env = lmdb.open(os.path.join(root, f"{category}_train_lmdb"), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i in range(n):
            image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            value = iio.imwrite("<bytes>", image, extension=extension)
            if i in broken:
                value = value[:len(value) // 2] if broken.index(i) % 2 else b"<html>404 Not Found</html>"
            txn.put(f"{i:040x}".encode(), value)
    env.close()
    return str(root)


class DdpLikeD(torch.nn.Module):
    """D as train_step sees it under DDP, recording each forward and backward through it and whether
    DDP's no_sync() was on at the time (gradients are reduced on a backward outside no_sync)."""

    def __init__(self, D):
        super().__init__()
        self.module, self.events, self.syncing = D, [], True  # .module: the wrapped D, as in DDP

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def say(self, what):
        self.events.append(what if self.syncing else f"{what} in no_sync")

    def forward(self, x):
        self.say("forward")
        out = self.module(x)
        out.register_hook(lambda grad: self.say("backward"))
        return out


def signalled_at(step, n, signum):
    """step, but its n-th call first sends this process signum, as Ctrl-C (SIGINT) or a scheduler
    (SIGTERM) would in the middle of a step."""
    calls = []

    def signalled(*args):
        calls.append(1)
        if len(calls) == n:
            signal.raise_signal(signum)
        return step(*args)
    return signalled


def dies_at(step, n):
    """step, but its n-th call ends the run at once, as kill -9 or the OOM killer would: nothing of
    the run goes on (no checkpoint on the way out)."""
    calls = []

    def dying(*args):
        calls.append(1)
        if len(calls) == n:
            raise MemoryError("killed")
        return step(*args)
    return dying
