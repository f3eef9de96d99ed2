#!/usr/bin/env python3
"""LSGAN: least-squares losses for D and G, on DCGAN's network or on the paper's.

Paper: Mao, Li, Xie, Lau, Wang and Smolley, "Least Squares Generative Adversarial Networks",
arXiv:1611.04076v3 (2017). Eq. 2, on raw D scores (no Sigmoid):
    min_D 1/2 E_x[(D(x) - b)^2] + 1/2 E_z[(D(G(z)) - a)^2],    min_G 1/2 E_z[(D(G(z)) - c)^2].
--coding 0-1-1 (a=0, b=1, c=1) is the authors' released code and the default; --coding pearson
(a=-1, b=1, c=0) meets b - c = 1 and b - a = 2, under which Eq. 2 minimises the Pearson chi^2
divergence (section 3.2). --loss bce trains the same networks with the regular GAN loss.
Networks: --arch dcgan (default) is dcgan.py's, so the loss is the only difference; --arch lsgan is
the paper's scene network (Fig. 3): z of 1024 -> fc 7x7x256 -> 3x3 transposed convolutions of
stride 2 and 1 -> 112x112; D: 5x5 stride-2 convolutions 64-128-256-512, a linear score. It starts
from (size/16)^2: --image-size 112 is the paper's. Adam with beta1 0.5 (section 4.1); --arch lsgan
defaults to the authors' train_lsun.py (lr 1e-3, batch 64, z of 1024), --arch dcgan to DCGAN's.
Section 4.3's stability experiment: --dataset mixture8, the authors' mixture script (its own
section below the banner). Samples use BatchNorm's running statistics, as the authors' sampler.

Deviations (each also stated where it happens):
  - --arch dcgan --loss ls: D's score layer starts from N(0, 0.002), not N(0, 0.02) (--score-std);
  - z ~ N(0, I) (the authors' code: U(-1, 1)); Eq. 2's expectations are batch means (the
    authors' tf.nn.l2_loss sums over the batch: a scale that Adam largely divides out);
  - mixture8: 8 equal modes (the authors' weigh one twice); torch's orthogonal init (--orthogonal);
  - the rest is dcgan.py's (data, devices, speed options, torchrun, LSUN not de-duplicated; for
    --loss bce, the stop of a run that D wins outright and --label-smoothing).

Run:     python lsgan.py --dataset mnist --dataroot DIR --epochs 1
         python lsgan.py --arch lsgan --image-size 112 --dataset lsun --classes church_outdoor \\
                         --dataroot DIR
         python lsgan.py --dataset mixture8 --loss bce --seed 3
Smoke:   python lsgan.py --dataset fake --dry-run --output-dir /tmp/lsgan-smoke
Sample:  python lsgan.py --generate 10000 --output-dir output/lsgan   # -> output/lsgan/samples/
"""
import argparse
import atexit
import contextlib
import csv
import glob
import json
import math
import os
import shlex
import signal
import sys
import time
import warnings
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from utils import (plot_log, pyplot, save_figure, save_gif, save_grid, save_images, ticking, tile,
                   to_uint8)

SCRIPT = "lsgan"
DATASETS = ["cifar10", "lsun", "mnist", "fashion-mnist", "celeba", "folder", "imagenet", "lfw",
            "fake", "mixture8"]
IMAGE_SIZES = {"dcgan": [32, 64, 128, 256], "lsgan": [32, 64, 112, 128, 256]}
FAKE_EPOCH = 10_000  # images per "epoch" of --dataset fake
CODINGS = {"0-1-1": (0.0, 1.0, 1.0), "pearson": (-1.0, 1.0, 0.0)}  # (a, b, c) of Eq. 2
INIT_STD = 0.02  # the image networks' initial weights: N(0, 0.02) (DCGAN, section 4)
# Defaults that depend on the network or the data: nz, lr, lr-d, batch size, epochs.
DEFAULTS = {"dcgan": (100, 2e-4, None, 128, 5), "lsgan": (1024, 1e-3, None, 64, 5),
            "mixture8": (256, 1e-3, 1e-4, 512, 35)}  # mixture: 35 epochs of 1,000 steps


def build_parser(p):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="cifar10",
                   help="cifar10 and the mnists download into --dataroot; others must be there")
    g.add_argument("--dataroot", default="./data", help="where the dataset is (or downloads to)")
    g.add_argument("--classes", default="bedroom", help="LSUN categories, comma separated")
    g.add_argument("--workers", type=number(int, 0), default=min(8, os.cpu_count() or 1),
                   help="processes that decode folder datasets and lsun (default: CPUs, up to 8)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="folder datasets and lsun: decode once into a uint8 file beside the data, "
                   "at the training size, and read that afterwards (--no-cache: every epoch)")
    g = p.add_argument_group("loss")
    g.add_argument("--loss", choices=["ls", "bce"], default="ls",
                   help="least squares (Eq. 2) or the regular GAN loss")
    g.add_argument("--coding", choices=list(CODINGS), default="0-1-1",
                   help="a-b-c of Eq. 2: 0-1-1 (authors' code) or pearson (a=-1, b=1, c=0)")
    g.add_argument("--label-smoothing", type=number(float, 0, 1), default=0.0, metavar="S",
                   help="bce: D's target for real images is 1 - S (Salimans et al. 2016; a "
                   "deviation, as dcgan.py's: 0 is the paper's recipe)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=["dcgan", "lsgan"], default="dcgan",
                   help="dcgan.py's network, or the paper's scene network (Fig. 3)")
    g.add_argument("--image-size", type=int, default=64, help=f"dcgan: {IMAGE_SIZES['dcgan']}; "
                   f"lsgan: {IMAGE_SIZES['lsgan']} (paper: 112)")
    g.add_argument("--nz", type=number(int, 1), help="size of z [100 dcgan, 1024 lsgan, 256 "
                   "mixture]")
    g.add_argument("--ngf", type=number(int, 1), default=64, help="dcgan: G's channels, last block")
    g.add_argument("--ndf", type=number(int, 1), default=64, help="dcgan: D's channels, 1st block")
    g.add_argument("--score-std", type=number(float, 0), help="std of D's initial score layer "
                   "[0.002 for --loss ls on --arch dcgan, a deviation; else 0.02, as DCGAN]")
    g.add_argument("--orthogonal", choices=["qr", "tf"], default="qr", help="mixture8's initial "
                   "weights: torch's (QR of a normal matrix) or TF 0.12's (the authors', SVD of "
                   "a U[0, 1) matrix)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=number(int, 1), help="passes over the data [5; mixture: 35 "
                   "of 1,000 steps, the authors']")
    g.add_argument("--batch-size", type=number(int, 1),
                   help="per step, over all processes [128 dcgan, 64 lsgan, 512 mixture]")
    g.add_argument("--lr", type=number(float, 0), help="Adam's rate for G, and D [2e-4 dcgan, "
                   "1e-3 lsgan and mixture]")
    g.add_argument("--lr-d", type=number(float, 0), help="D's rate where it differs [mixture: "
                   "1e-4]")
    g.add_argument("--beta1", type=number(float, 0, 1), default=0.5, help="Adam's (paper: 0.5)")
    g.add_argument("--beta2", type=number(float, 0, 1), default=0.999, help="Adam's beta2")
    g = p.add_argument_group("speed")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="autocast to bfloat16")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC images and weights (default: on for the CPU, off elsewhere)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile G and D")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="under torchrun on CUDA, nn.SyncBatchNorm over the global batch (on the "
                   "CPU, gloo: each process normalises its own share)")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default=os.path.join("output", SCRIPT))
    g.add_argument("--seed", type=int, default=1, help="seeds torch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto: cuda, then mps, then cpu")
    g.add_argument("--log-every", type=number(int, 1), default=50, help="iterations a log line")
    g.add_argument("--dry-run", action="store_true", help="2 iterations of <= 8, every output")
    g.add_argument("--resume", action="store_true", help="continue <output-dir>/checkpoint.pt")
    g.add_argument("--checkpoint-every", type=number(float, 0), default=5.0, metavar="MINUTES",
                   help="write the checkpoint this often, and at each epoch's end and on a stop")
    g.add_argument("--snapshot-every", type=number(int, 1), default=1, metavar="K",
                   help="keep G's weights every K epochs in <output-dir>/snapshots/")
    g.add_argument("--epoch", type=number(int, 1), metavar="K",
                   help="--generate, --interpolate: from the snapshot of epoch K")
    g.add_argument("--generate", type=number(int, 1), metavar="N",
                   help="write N images (mixture8: points) to <output-dir>/samples")
    g.add_argument("--interpolate", action="store_true",
                   help="write section 6.1's latent walk from the checkpoint")
    g.add_argument("--lerp", action="store_true", help="--interpolate on straight lines (the "
                   "paper's) instead of great circles (slerp)")
    return p


# ---- the models ----

def channels(width, blocks):
    """Channels of the 4x4 block, then of each doubling: [8w, 4w, 2w, w] at 64x64 (3 blocks)."""
    return [width * min(8, 2 ** (blocks - i)) for i in range(blocks + 1)]


class Generator(nn.Module):
    def __init__(self, nz=100, ngf=64, nc=3, image_size=64):
        super().__init__()
        blocks = int(math.log2(image_size)) - 3  # 64x64: 4 -> 8 -> 16 -> 32, then the output
        ch = channels(ngf, blocks)
        layers = [nn.ConvTranspose2d(nz, ch[0], 4, 1, 0, bias=False),           # (N, 8ngf, 4, 4)
                  nn.BatchNorm2d(ch[0]), nn.ReLU(inplace=True)]
        for i in range(1, blocks + 1):                                           # each doubles H, W
            layers += [nn.ConvTranspose2d(ch[i - 1], ch[i], 4, 2, 1, bias=False),  # (N, 4ngf, 8, 8)
                       nn.BatchNorm2d(ch[i]), nn.ReLU(inplace=True)]       # ... (N, ngf, 32, 32)
        layers += [nn.ConvTranspose2d(ch[-1], nc, 4, 2, 1, bias=False), nn.Tanh()]  # (N, nc, 64,64)
        self.net = nn.Sequential(*layers)

    def forward(self, z):                          # z: (N, nz)
        return self.net(z[:, :, None, None])       # (N, nc, image_size, image_size) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(self, ndf=64, nc=3, image_size=64):
        super().__init__()
        blocks = int(math.log2(image_size)) - 3
        ch = channels(ndf, blocks)[::-1]           # [ndf, 2ndf, 4ndf, 8ndf] at 64x64
        layers = [nn.Conv2d(nc, ch[0], 4, 2, 1, bias=False),                     # (N, ndf, 32, 32)
                  nn.LeakyReLU(0.2, inplace=True)]                               # no BatchNorm
        for i in range(1, blocks + 1):                                           # each halves H, W
            layers += [nn.Conv2d(ch[i - 1], ch[i], 4, 2, 1, bias=False),        # (N, 2ndf, 16, 16)
                       nn.BatchNorm2d(ch[i]), nn.LeakyReLU(0.2, inplace=True)]  # (N, 8ndf, 4, 4)
        layers += [nn.Conv2d(ch[-1], 1, 4, 1, 0, bias=False)]                   # (N, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x):                          # x: (N, nc, image_size, image_size)
        return self.net(x).view(-1)                # (N,) logits; no Sigmoid: the loss takes logits


class LSGANGenerator(nn.Module):
    """--arch lsgan: the paper's scene G (Fig. 3a): z -> fc -> (size/16)^2 x 256 -> 3x3 transposed
    convolutions, stride 2 and 1 alternating -> image. At 112x112 this is exactly the paper's."""

    def __init__(self, nz=1024, nc=3, image_size=64):
        super().__init__()
        self.start = image_size // 16
        self.fc = nn.Sequential(nn.Linear(nz, 256 * self.start ** 2, bias=False),  # (N, 256 s^2)
                                nn.BatchNorm1d(256 * self.start ** 2), nn.ReLU(inplace=True))

        def up(cin, cout, stride):  # 3x3 transposed convolution: stride 2 doubles H and W
            return [nn.ConvTranspose2d(cin, cout, 3, stride, 1, output_padding=stride - 1,
                                       bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(
            *up(256, 256, 2),    # (N, 256, 2s, 2s)   at 112: 14x14
            *up(256, 256, 1),    # (N, 256, 2s, 2s)
            *up(256, 256, 2),    # (N, 256, 4s, 4s)   28x28
            *up(256, 256, 1),    # (N, 256, 4s, 4s)
            *up(256, 128, 2),    # (N, 128, 8s, 8s)   56x56
            *up(128, 64, 2),     # (N, 64, 16s, 16s)  112x112
            nn.ConvTranspose2d(64, nc, 3, 1, 1), nn.Tanh())  # (N, nc, 16s, 16s) in [-1, 1]

    def forward(self, z):                                     # z: (N, nz)
        return self.net(self.fc(z).view(len(z), 256, self.start, self.start))


class LSGANDiscriminator(nn.Module):
    """--arch lsgan: the paper's scene D (Fig. 3b): 5x5 stride-2 convolutions 64-128-256-512,
    BatchNorm after all but the first, LeakyReLU(0.2), then a linear layer to one raw score."""

    def __init__(self, nc=3, image_size=64):
        super().__init__()

        def down(cin, cout, bn=True):  # 5x5, stride 2: halves H and W
            norm = [nn.BatchNorm2d(cout)] if bn else []
            return [nn.Conv2d(cin, cout, 5, 2, 2, bias=not bn), *norm, nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(
            *down(nc, 64, bn=False),   # (N, 64, size/2, size/2)    no BN on D's input layer
            *down(64, 128),            # (N, 128, size/4, size/4)
            *down(128, 256),           # (N, 256, size/8, size/8)
            *down(256, 512),           # (N, 512, size/16, size/16) at 112: 7x7
            nn.Flatten(),
            nn.Linear(512 * (image_size // 16) ** 2, 1))       # (N, 1): a raw score

    def forward(self, x):
        return self.net(x).view(-1)                            # (N,)


def init_weights(module):
    """Image networks: weights from N(0, 0.02) (DCGAN, section 4; the authors' code does the
    same); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ---- the losses: Eq. 2, or the regular GAN's ----

def d_loss(scores, target, loss="ls"):
    """D's side, one term per call. Eq. 2: 1/2 E[(D(x) - b)^2] for real data (target b) and
    1/2 E[(D(G(z)) - a)^2] for generated data (target a): the mean of the squares of raw scores.
    bce: Eq. 1 of Goodfellow et al., D descends BCE(D(x), 1) + BCE(D(G(z)), 0) on logits."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(scores, torch.full_like(scores, target))
    return 0.5 * (scores - target).pow(2).mean()


def eq2_targets(args):
    """(a, b, c) of Eq. 2 for --coding. bce: 0 for generated, 1 for G, and for real 1 less
    --label-smoothing (0 by default; a deviation: Salimans et al. 2016, section 3.4)."""
    return CODINGS[args.coding] if args.loss == "ls" else (0.0, 1.0 - args.label_smoothing, 1.0)


def g_loss(scores, target, loss="ls"):
    """G's side. Eq. 2: 1/2 E[(D(G(z)) - c)^2] (target c). bce: the non-saturating G of
    Goodfellow et al., section 3: descend -log D(G(z)) = BCE(D(G(z)), 1)."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(scores, torch.full_like(scores, target))
    return 0.5 * (scores - target).pow(2).mean()


# ---- one iteration ----

def train_step(G, D, opt_G, opt_D, x, z, amp=False, targets=(0.0, 1.0, 1.0), loss="ls"):
    """One D-step, then one G-step. x: real images, z: noise for as many; amp: bfloat16 autocast;
    targets: (a, b, c) of Eq. 2 ((0, 1, 1) for bce). Returns (loss_D, loss_G, D(x), D(G(z)))."""
    a, b, c = targets
    # (1) D: the real and the generated batch in separate passes, so that each BatchNorm normalises
    # a pure batch, as in the authors' code; like theirs, each is backpropagated before the next
    # forward, so one graph of D is held at a time. Under DDP, D's gradients are summed locally
    # and reduced once, after the second backward.
    opt_D.zero_grad(set_to_none=True)
    with no_sync(D):
        with autocast(x, amp):
            real_scores = D(x).float()
            loss_real = d_loss(real_scores, b, loss)
        loss_real.backward()
    with autocast(x, amp):
        fake = G(z)
        fake_scores = D(fake.detach()).float()
        loss_fake = d_loss(fake_scores, a, loss)
    loss_fake.backward()
    opt_D.step()
    # (2) G: through the updated D, whose weights need no gradients here. D is in training mode in
    # all three passes, so each updates its BatchNorm running statistics: they average two generated
    # batches to one real one. Nothing here runs D in eval mode; anything that did would normalise
    # with that mix.
    with frozen(D) as D_local, autocast(x, amp):
        loss_g = g_loss(D_local(fake).float(), c, loss)
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_G.step()
    d_x, d_g_z = logged(real_scores, loss), logged(fake_scores, loss)
    return torch.stack([loss_real + loss_fake, loss_g, d_x, d_g_z]).detach()


def logged(scores, loss):
    """D(x) and D(G(z)) as logged: probabilities for bce, the raw scores for ls (compare: b, a)."""
    return (torch.sigmoid(scores) if loss == "bce" else scores).mean()


@contextlib.contextmanager
def frozen(D):
    """D's weights need no gradients while G learns through D (their computation is skipped).
    Under DDP, D's local module: nothing of D is reduced in that phase."""
    D = getattr(D, "module", D)
    D.requires_grad_(False)
    try:
        yield D
    finally:
        D.requires_grad_(True)


def autocast(x, amp):
    """--amp: autocast to bfloat16 where x lives (bf16 needs no loss scaling); else float32."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp)


def sample(G, z):
    """G(z) for pictures and --generate, with BatchNorm in eval mode (running statistics): each
    image depends on its own z alone, and the statistics stay untouched, as in the authors'
    sampler (batch_norm with train=False)."""
    was_training = G.training
    G.eval()
    with torch.no_grad():
        images = G(z)
    G.train(was_training)
    return images


# ---- run plumbing: the same in every script ----
# Errors, options, checkpoints, the log line, signals. tests/test_plumbing.py fails when this block
# differs between the scripts: change it in one, copy it to the others.

def fail(message, status=2):
    """One line on stderr, then exit: 2 bad input, 1 a diverged run, 130 a second stop signal."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def number(cast, low, high=math.inf):
    """An argparse type: cast(text) in [low, high)."""
    def parse(text):
        value = cast(text)  # not a number: argparse says "invalid int value"
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"expected a number in [{low}, {high}): {text}")
        return value
    parse.__name__ = cast.__name__
    return parse


def get_options(argv):
    """No abbreviations; errors in one line. --resume and the MODES load the checkpoint: options
    the command line leaves out take its values; those that shape the networks must match it."""
    parser = build_parser(argparse.ArgumentParser(
        description=__doc__.splitlines()[0], allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    parser.error = fail
    args, ckpt = parser.parse_args(argv), None
    asked = [f"--{name}".replace("_", "-") for name in ("resume", *MODES) if getattr(args, name)]
    if len(asked) > 1:
        fail(f"{' and '.join(asked)} exclude each other")
    if args.epoch is not None and asked in ([], ["--resume"]):
        fail("--epoch K picks the snapshot that --generate or --interpolate draws from")
    path = os.path.join(args.output_dir, "checkpoint.pt")
    if asked:  # the run goes on as it was started (--dataroot, --amp, ...) but for what is given
        ckpt = load(path, "checkpoint")
        saved = {k: v for k, v in ckpt["args"].items() if k not in COMMAND_KEYS}
        args = parser.parse_args(argv, argparse.Namespace(**saved))
        for key in [k for k in MODEL_KEYS if k in saved]:  # one the run predates: its default
            if getattr(args, key) != saved[key]:
                fail(f"{path} was trained with --{key.replace('_', '-')} {saved[key]}, not "
                     f"{getattr(args, key)}")
        changed = [f"--{k.replace('_', '-')} {getattr(args, k)} (the run's: {v})"
                   for k, v in saved.items() if getattr(args, k) != v]
        if changed and os.environ.get("RANK", "0") == "0":
            print(f"{SCRIPT}: changed from the run's options: {', '.join(changed)}", flush=True)
    elif os.path.exists(path):
        fail(f"{path} exists: continue that run with --resume, or choose another --output-dir")
    return settle(args), ckpt


def load(path, what):
    """A checkpoint or snapshot of this script, with weights_only=True: loading never runs code."""
    if not os.path.isfile(path):
        fail(f"no {what} at {path} (--output-dir names the run)")
    try:
        with warnings.catch_warnings():  # torch warns before some refusals: the error says it all
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        saved = None
    if not isinstance(saved, dict) or saved.get("script") != SCRIPT:
        fail(f"cannot read {path}: damaged, or not a {what} of {SCRIPT}.py")
    return saved


def save(state, path):
    """Via a temporary name, synced before and after the rename: never half a file, nor empty."""
    with open(path + ".tmp", "wb") as f:
        torch.save({"script": SCRIPT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    if hasattr(os, "O_DIRECTORY"):  # POSIX (Windows opens no folder)
        folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(folder)
        os.close(folder)


def save_checkpoint(args, state):
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else []  # this process's GPU
    save({"torch_version": str(torch.__version__), "args": vars(args),
          "rng": {"torch": torch.get_rng_state(), "cuda": cuda}, **state},
         os.path.join(args.output_dir, "checkpoint.pt"))


def restore(ckpt, **parts):
    """Each module and optimizer from ckpt[name], then torch's generators (the only ones used)."""
    for name, part in parts.items():
        part.load_state_dict(ckpt[name])
        for param, state in getattr(part, "state", {}).items():  # an optimizer: its state takes
            for key, value in state.items():  # the layout the parameter has now (channels-last)
                if value.shape == param.shape:
                    state[key] = torch.empty_like(param).copy_(value)
    torch.set_rng_state(ckpt["rng"]["torch"])
    if len(ckpt["rng"]["cuda"]) and torch.cuda.is_available():
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"])


def snapshot(args, epoch, **weights):
    """<output-dir>/snapshots/epoch_NNN.pt, G's weights (and the average's) for --epoch K: saved
    every --snapshot-every epochs when weights are given, else loaded."""
    path = os.path.join(args.output_dir, "snapshots", f"epoch_{epoch:03d}.pt")
    if not weights:
        return load(path, "snapshot")
    if epoch % args.snapshot_every == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save({"epoch": epoch, **weights}, path)


def pick_device(name):
    ok = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    name = next(d for d in ok if ok[d]) if name == "auto" else name
    if not ok[name]:
        fail(f"--device {name}: not available on this machine")
    return torch.device(name)


class Progress:
    """The log line and log.csv. add() sums each step's (loss_D, loss_G, D(x), D(G(z))) on the
    device; line() reads their means (the loop's one host read), stops on a NaN, prints, writes a
    row (path None: no file). A resumed run drops the rows past its checkpoint's iteration."""

    def __init__(self, path, total, iteration, elapsed, say=print, mean=torch.as_tensor):
        self.path, self.total, self.say, self.mean = path, total, say, mean
        self.before, self.elapsed, self.sums, self.steps, self.samples = elapsed, elapsed, 0, 0, 0
        self.start = self.tick = time.perf_counter()
        if path:
            with open(path, "a+", newline="") as f:
                f.seek(0)
                rows = [row for row in list(csv.reader(f))[1:] if int(row[1]) <= iteration]
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows([["epoch", "iteration", "loss_d", "loss_g", "d_x", "d_g_z",
                                          "samples_per_s", "elapsed_s"]] + rows)

    def add(self, stats, samples):
        self.sums, self.steps = self.sums + stats, self.steps + 1
        self.samples += samples

    def line(self, epoch, iteration, where, unit="img"):
        now = time.perf_counter()
        self.elapsed, rate = self.before + now - self.start, self.samples / (now - self.tick)
        values = self.mean(self.sums / self.steps).tolist() + [rate, self.elapsed]  # host read
        if not all(map(math.isfinite, values[:2])):
            fail(f"training diverged: loss is {values[0]} (D), {values[1]} (G) by iteration "
                 f"{iteration}; the last good checkpoint is kept", 1)
        if self.path:  # opened per row: nothing held open, nothing half-written on a crash
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow([epoch, iteration] + [f"{v:.6g}" for v in values])
        left = int((self.total - iteration) * (now - self.tick) / self.steps)
        self.say(f"{where}  loss_D {values[0]:.3f}  loss_G {values[1]:.3f}  D(x) {values[2]:.3f}  "
                 f"D(G(z)) {values[3]:.3f}  {rate:,.0f} {unit}/s  ETA {left // 60}:{left % 60:02d}")
        self.sums, self.steps, self.samples, self.tick = 0, 0, 0, now


class StopOnSignal:
    """Ctrl-C or SIGTERM sets `requested`: the loop checkpoints after this step and calls exit()
    (status 130). A second signal stops at once, keeping the last checkpoint."""

    def __enter__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if not self.requested:
            self.requested, self.since = True, time.monotonic()
            print(f"\n{SCRIPT}: stopping after this step (again to stop now)", file=sys.stderr)
        elif time.monotonic() - self.since > 2:  # sooner: a copy (torchrun forwards a scheduler's)
            fail("interrupted twice: stopped without a new checkpoint (the last one is kept)", 130)

    def exit(self, args, where, say=print):
        ranks = os.environ.get("LOCAL_WORLD_SIZE")  # torchrun's processes on this machine
        launch = f"torchrun --nproc_per_node {ranks}" if ranks else "python"
        say(f"{SCRIPT}: stopped at {where}; checkpoint saved. Resume with:\n"
            f"  {launch} {SCRIPT}.py --resume --output-dir {shlex.quote(args.output_dir)}")
        raise SystemExit(130)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def main(argv=None):
    args, ckpt = get_options(argv)
    mode = next((m for m in MODES if getattr(args, m)), None)
    try:
        (MODES[mode] if mode else train)(args, ckpt)
    except OSError as e:  # an --output-dir that cannot be made or written, a full disk: one line
        fail(f"{e.filename}: {e.strerror}" if e.filename else str(e).strip().splitlines()[-1])
    except KeyboardInterrupt:  # outside the loop, which stops by itself: nothing is half-written
        fail("interrupted", 130)


# ---- this script's run: the loop, its data, several processes, samples ----

# Options of one command, never taken from the checkpoint; options that must match it.
COMMAND_KEYS = ("output_dir", "resume", "dry_run", "generate", "epoch", "interpolate", "lerp")
MODEL_KEYS = ("dataset", "classes", "arch", "image_size", "nz", "ngf", "ndf")


def settle(args):
    nz, lr, lr_d, batch_size, epochs = DEFAULTS[
        "mixture8" if args.dataset == "mixture8" else args.arch]
    args.nz, args.lr, args.epochs = args.nz or nz, args.lr or lr, args.epochs or epochs
    args.batch_size, args.lr_d = args.batch_size or batch_size, args.lr_d or lr_d or args.lr
    if args.label_smoothing and args.loss == "ls":
        fail("--label-smoothing is for --loss bce: Eq. 2 sets its own targets (--coding)")
    if args.score_std is None:
        args.score_std = 0.002 if args.loss == "ls" and args.arch == "dcgan" else INIT_STD
    sizes = IMAGE_SIZES[args.arch]
    if args.dataset != "mixture8" and args.image_size not in sizes:
        fail(f"--image-size {args.image_size}: --arch {args.arch} takes "
             f"{', '.join(map(str, sizes))} (each (de)convolution block doubles or halves it)")
    if args.dry_run:
        args.batch_size = min(args.batch_size, 8)
    return args


def no_sync(D):
    """Under DDP: gradients stay on this process until the next backward outside this context."""
    return getattr(D, "no_sync", contextlib.nullcontext)()


def train(args, ckpt):
    if args.dataset == "mixture8":
        return train_mixture(args, ckpt)
    world = World(args.device)
    device = world.device
    if args.channels_last is None:  # NHWC on the CPU: oneDNN's convolutions run faster on it
        args.channels_last = device.type == "cpu"
    torch.manual_seed(args.seed)
    data = load_data(args, device)
    if args.batch_size % world.size:
        fail(f"--batch-size {args.batch_size} is not divisible by the {world.size} processes")
    iterations = data.size // args.batch_size  # per epoch; the last partial batch is dropped
    if iterations == 0:
        fail(f"{data.size} training images are fewer than --batch-size {args.batch_size}")
    G, D, opt_G, opt_D = build(args, data.channels, device)
    fixed_noise = torch.randn(64, args.nz, device=device)  # the per-epoch grids use these z
    iteration, elapsed, targets = 0, 0.0, eq2_targets(args)
    if ckpt:
        restore(ckpt, G=G, D=D, opt_G=opt_G, opt_D=opt_D)
        fixed_noise, iteration = ckpt["fixed_noise"].to(device), ckpt["iteration"]
        elapsed = ckpt["elapsed_s"]
    G_step, D_step = world.wrap(G, args), world.wrap(D, args)
    out, total = args.output_dir, args.epochs * iterations
    if world.rank == 0:  # process 0 alone writes
        os.makedirs(out, exist_ok=True)
        save_grid(data.real_sample(64), os.path.join(out, "real.png"))
    progress = Progress(os.path.join(out, "log.csv") if world.rank == 0 else None, total,
                        iteration, elapsed, world.say, world.mean)
    last = min(total, iteration + 2) if args.dry_run else total
    log_every, first, stopping = 1 if args.dry_run else args.log_every, iteration, False
    late_d_g_z, saved_at = torch.zeros((), device=device), time.monotonic()
    world.say(f"{SCRIPT}: {vars(args)}\n{SCRIPT}: {data.size} images, {iterations} iterations of "
              f"{args.batch_size} per epoch, {world.size} process(es) on {device}, from iteration "
              f"{iteration} of {total}")
    with StopOnSignal() as stop:
        while iteration < last:
            epoch, step = divmod(iteration, iterations)
            for x in data.batches(epoch, step, args.batch_size, world):
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                # Every process draws the global batch's z from the same stream and keeps its
                # share: N processes use the z that one process would.
                z = torch.randn(args.batch_size, args.nz, device=device)[world.rank::world.size]
                stats = train_step(G_step, D_step, opt_G, opt_D, x, z, args.amp, targets, args.loss)
                progress.add(stats, args.batch_size)
                iteration, step = iteration + 1, step + 1
                stopping, saving = world.agree(
                    stop.requested, time.monotonic() - saved_at > 60 * args.checkpoint_every)
                if iteration % log_every == 0 or iteration == last or stopping or saving:
                    progress.line(epoch + 1, iteration, f"[epoch {epoch + 1}/{args.epochs}]"
                                  f"[iter {step}/{iterations}]")
                if args.loss == "bce" and first <= 150 < iteration <= 200:  # see noise_check
                    late_d_g_z += stats[3] / 50
                    if iteration == 200:
                        noise_check(world.mean(late_d_g_z).item())
                if iteration == last or stopping or saving:
                    break
            if world.rank == 0:  # G(fixed z) at (the latest point of) each epoch, and the state
                save_grid(sample(G, fixed_noise), os.path.join(out, f"epoch_{epoch + 1:03d}.png"))
                save_checkpoint(args, {
                    "epoch": iteration // iterations, "iteration": iteration,
                    "elapsed_s": progress.elapsed, "G": G.state_dict(), "D": D.state_dict(),
                    "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                    "fixed_noise": fixed_noise.cpu()})
                if iteration % iterations == 0:  # a whole epoch
                    snapshot(args, iteration // iterations, G=G.state_dict())
            saved_at = time.monotonic()
            if stopping:
                stop.exit(args, f"iteration {iteration}", world.say)
    if world.rank == 0:
        save_gif(sorted(glob.glob(os.path.join(out, "epoch_*.png"))),
                 os.path.join(out, "progress.gif"))
        plot_log(os.path.join(out, "log.csv"), os.path.join(out, "loss.png"),
                 title=f"{SCRIPT} ({args.dataset})")
    world.say(f"{SCRIPT}: done: {iteration} iterations, {progress.elapsed:.1f} s in all, "
              f"{iteration - first} of them now. Outputs in {out}")


def networks(args, nc):
    if args.arch == "lsgan":
        return LSGANGenerator(args.nz, nc, args.image_size), LSGANDiscriminator(nc, args.image_size)
    return Generator(args.nz, args.ngf, nc, args.image_size), Discriminator(args.ndf, nc,
                                                                           args.image_size)


def noise_check(d_g_z):
    """--loss bce: stops a run whose D(G(z)), averaged over iterations 151-200, is below 0.01, as
    dcgan.py does (README, "Runs that end in noise")."""
    if d_g_z < 0.01:
        fail(f"D(G(z)) averaged {d_g_z:.4f} over iterations 151-200: D has won, and runs that do "
             "this end in noise. Stopped; try another --seed, or --label-smoothing 0.1", 1)


def build(args, nc, device):
    G, D = (net.to(device) for net in networks(args, nc))
    G.apply(init_weights)
    D.apply(init_weights)
    # Deviation (--score-std): on DCGAN's network the least-squares D starts with its score layer at
    # N(0, 0.002), a tenth of DCGAN's. That layer sums 8,192 inputs at 64x64: at 0.02 the first
    # scores spread with std ~1 around the 0/1 targets, the squares blow up and one epoch of MNIST
    # collapsed (docs/RESULTS.md).
    with torch.no_grad():
        D.net[-1].weight.mul_(args.score_std / INIT_STD)  # N(0, 0.02) rescaled: no extra draws
    if args.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    fused = device.type in ("cpu", "cuda")  # fused Adam: one kernel for all of a net's parameters
    betas = (args.beta1, args.beta2)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=betas, fused=fused)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, fused=fused)
    return G, D, opt_G, opt_D


def load_generator(args, ckpt):
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    G = networks(args, channels_of(args.dataset))[0].to(device)
    G.load_state_dict((snapshot(args, args.epoch) if args.epoch else ckpt)["G"])
    return G, device


def generate(args, ckpt):
    if args.dataset == "mixture8":
        return generate_mixture(args, ckpt)
    G, device = load_generator(args, ckpt)
    folder = os.path.join(args.output_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "[0-9]*.png")):  # an earlier, maybe larger, set
        os.remove(old)
    for start in range(0, args.generate, 500):
        z = torch.randn(min(500, args.generate - start), args.nz, device=device)
        save_images(sample(G, z), folder, start)
    print(f"{SCRIPT}: wrote {args.generate} images to {folder}")


def walk(a, b, t, lerp=False):
    """Points from a (t = 0) to b (t = 1): a straight line, or the arc of the great circle through
    them, sin((1 - t) W) / sin W a + sin(t W) / sin W b with W the angle between a and b."""
    if lerp:
        return a * (1 - t) + b * t
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1, keepdim=True)
    angle = torch.acos(cos.clamp(-1, 1)).clamp_min(1e-6)
    return (torch.sin((1 - t) * angle) * a + torch.sin(t * angle) * b) / torch.sin(angle)


def interpolate(args, ckpt, rows=8, steps=10):
    """Section 6.1, 'walking in the latent space': each row walks from one random z to another;
    smooth changes along a row (no sudden jumps) suggest G has not memorised. Deviation: the walk
    follows a great circle (slerp, White 2016, arXiv:1609.04468v3), since a straight line between
    two Gaussian z passes through points of lower norm than G was trained on; --lerp: the paper's
    straight line."""
    if args.dataset == "mixture8":
        fail("--interpolate walks between images; mixture8 makes points")
    G, device = load_generator(args, ckpt)
    ends = torch.randn(2, rows, args.nz, device=device)
    t = torch.linspace(0, 1, steps, device=device)[None, :, None]                # (1, steps, 1)
    z = walk(ends[0][:, None], ends[1][:, None], t, args.lerp)                   # (rows, steps, nz)
    images = sample(G, z.reshape(rows * steps, args.nz))                         # row r, step s
    save_grid(images, os.path.join(args.output_dir, "interpolation.png"), nrow=steps)
    frames = images.view(rows, steps, *images.shape[1:]).transpose(0, 1)         # a frame a step
    pictures = [to_uint8(tile(f, nrow=rows // 2)[None])[0] for f in frames]
    save_gif(pictures + pictures[-2:0:-1], os.path.join(args.output_dir, "interpolation.gif"),
             seconds_per_frame=0.2)
    print(f"{SCRIPT}: wrote interpolation.png ({rows} walks of {steps} steps) and "
          f"interpolation.gif to {args.output_dir}")


class World:
    """This process's place among those torchrun started (one process alone without torchrun)."""

    def __init__(self, device_name):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device(device_name)
        if self.size > 1:
            if self.device.type == "cuda":  # one GPU per process
                self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            atexit.register(dist.destroy_process_group)
            self.flags = dist.new_group(backend="gloo")  # a CPU group for the per-step stop flag

    def wrap(self, net, args):
        """What the step trains through: torch.compile'd (--compile); under torchrun, DDP, with
        nn.SyncBatchNorm on CUDA (--sync-bn; the same parameters and buffers, converted in place).
        On the CPU (gloo) each process normalises its own share. DDP broadcasts no buffers."""
        if self.size > 1 and self.device.type == "cuda" and args.sync_bn:
            nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.compile(net) if args.compile else net
        if self.size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids,
                                                            broadcast_buffers=False)
        return net

    def say(self, text):
        if self.rank == 0:
            print(text, flush=True)

    def agree(self, *flags):
        """Stop, or checkpoint, together: each flag true everywhere once one process set it."""
        if self.size == 1:
            return flags
        flags = torch.tensor(flags, dtype=torch.int)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.flags)
        return flags.bool().tolist()

    def mean(self, tensor):
        if self.size > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            tensor /= self.size
        return tensor


# ---- data ----

def channels_of(dataset):
    return 1 if dataset in ("mnist", "fashion-mnist") else 3


class Data:
    """The training images, handed out as batches in [-1, 1] on the device, in an order that is a
    function of (seed, epoch) alone, so that a resumed run continues exactly where it stopped.
    Under torchrun each process takes every world.size-th image of each global batch, so the same
    global batches are seen whatever the number of processes. images: uint8 (N, C, H, W), on the
    device or memory-mapped; dataset: decoded every epoch; neither: --dataset fake."""

    def __init__(self, args, device, size, channels, images=None, dataset=None):
        self.args, self.device, self.size, self.channels = args, device, size, channels
        self.images, self.dataset = images, dataset

    def batches(self, epoch, step, batch_size, world):
        iterations, size = self.size // batch_size, self.args.image_size
        if self.args.dataset == "fake":  # random uint8 images made where they are used
            shape = (batch_size, self.channels, size, size)  # the global batch, as z
            for _ in range(step, iterations):
                images = torch.randint(0, 256, shape, dtype=torch.uint8, device=self.device)
                yield to_model(images[world.rank::world.size])
            return
        g = torch.Generator().manual_seed(self.args.seed * 100003 + epoch)
        order = torch.randperm(self.size, generator=g).to(getattr(self.images, "device", "cpu"))
        take = [order[i * batch_size:(i + 1) * batch_size][world.rank::world.size]
                for i in range(step, iterations)]
        if self.images is None:  # --no-cache: workers decode this epoch's images
            batches = decoder(self.dataset, self.args.workers, self.device,
                              batch_sampler=[t.tolist() for t in take])
        else:
            batches = (self.images[index] for index in take)
        for images in batches:
            yield resize(to_model(to_device(images, self.device)), size)

    def real_sample(self, n):
        if self.images is not None:
            return resize(to_model(self.images[:n]), self.args.image_size)
        if self.dataset is not None:
            return to_model(next(iter(decoder(self.dataset, 0, torch.device("cpu"), batch_size=n))))
        size, g = self.args.image_size, torch.Generator().manual_seed(0)
        return to_model(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g))


def to_device(images, device):
    """Onto the device without waiting: pinned first if they are in host memory and it is a GPU."""
    host_to_gpu = images.device.type == "cpu" and device.type == "cuda"
    return (images.pin_memory() if host_to_gpu else images).to(device, non_blocking=True)


def resize(images, size):
    """In-memory datasets come at their size (28 or 32): resized on the device, per batch."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def to_model(images):
    """uint8 images (N, C, H, W) in 0..255 -> floats in [-1, 1]: what G makes and D sees."""
    return images.float().div(127.5).sub(1)


def load_data(args, device):
    if args.dataset == "fake":
        return Data(args, device, FAKE_EPOCH, 3)
    if args.dataset in ("mnist", "fashion-mnist", "cifar10"):
        images = labelled(args)[0]                             # (N, C, 28 or 32, 28 or 32) uint8
        return Data(args, device, len(images), images.shape[1], images=images.to(device))
    from torchvision import datasets, transforms
    size = args.image_size
    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                    transforms.PILToTensor()])
    if args.dataset == "lsun":  # Deviation: not de-duplicated (the paper's section 4.1.1 is)
        paths = [os.path.join(args.dataroot, f"{c}_train_lmdb") for c in args.classes.split(",")]
        if not all(map(os.path.isdir, paths)):
            fail(f"LSUN: no {' or '.join(paths)}: get it with the LSUN project's download.py "
                 "(python download.py -c bedroom) and unzip it into --dataroot")
        dataset = LsunLmdb(paths, transform)
    else:
        try:
            dataset = datasets.ImageFolder(args.dataroot, loader=partial(decode, transform))
        except OSError as e:
            fail(f"{args.dataset}: no images in --dataroot ({e}); expected <dataroot>/<folder>/"
                 "<images>, e.g. CelebA's img_align_celeba/*.jpg")
    if not args.cache or args.dry_run:
        return Data(args, device, len(dataset), 3, dataset=dataset)
    images = cached_images(args, dataset)                                 # (N, 3, size, size)
    return Data(args, device, len(images), 3, images=images)


def labelled(args, train=True):
    """mnist, fashion-mnist or cifar10 through torchvision, which downloads it into --dataroot when
    it is missing: uint8 images (N, C, H, W) and labels (N,)."""
    from torchvision import datasets
    name = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}[args.dataset]
    try:
        data = getattr(datasets, name)(args.dataroot, train=train, download=True)
    except Exception as e:
        fail(f"cannot load {args.dataset} into or from --dataroot {args.dataroot} "
             f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})")
    images = torch.as_tensor(data.data)
    images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(data.targets)


def decode(transform, file, name=None):
    """transform(image) of an image file, or None, said on stderr, for one that will not decode."""
    from PIL import Image
    try:  # Pillow closes a file it opened by its name once the image is read
        return transform(Image.open(file).convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for truncated or foreign files
        print(f"{SCRIPT}: left out {name or file}: {e}", file=sys.stderr, flush=True)


def decoder(dataset, workers, device, **batching):
    """uint8 batches decoded by `workers` processes: deaf to signals, seeded apart from torch's."""
    from torch.utils.data import DataLoader
    if workers and isinstance(dataset, LsunLmdb):
        dataset.close()  # lmdb refuses to open a path that the parent process holds open
    atexit.register(end_workers)  # the last registered, the first run at exit
    return DataLoader(dataset, num_workers=workers, pin_memory=device.type == "cuda",
                      worker_init_fn=ignore_signals, collate_fn=stack_images,
                      generator=torch.Generator(), **batching)


def ignore_signals(worker_id):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def end_workers():  # workers an error left at exit ignore SIGTERM: multiprocessing would wait
    if hasattr(signal, "SIGCHLD"):  # POSIX: the DataLoader's handler would raise at each kill
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in torch.multiprocessing.active_children():
        worker.kill()


def stack_images(items):
    images = [image for image, _ in items if image is not None]  # None: could not be decoded
    return torch.stack(images) if images else torch.zeros(0, dtype=torch.uint8)


def cached_images(args, dataset):
    """Folder datasets and LSUN decoded once, at the training size, into one uint8 file (N, 3,
    size, size) beside the data (read-only data: in --output-dir), mapped by later epochs and runs.
    Its name hashes what the pixels depend on (files' names, sizes and times, or LSUN's databases
    and keys; size; crop) and ends in the number kept (images that cannot be decoded are left out).
    Each machine's first process writes it; the others wait on the disk (NCCL's wait: 10 min)."""
    import hashlib
    import shutil
    import socket
    if isinstance(dataset, LsunLmdb):
        listing = [(path, len(keys), keys[0].decode(), keys[-1].decode())
                   for path, keys in zip(dataset.paths, dataset.keys)]
    else:
        listing = []
        for path, _ in dataset.samples:
            info = os.stat(path)
            listing.append((os.path.relpath(path, args.dataroot), info.st_size, info.st_mtime_ns))
    recipe = json.dumps([1, "resize, center crop, PIL", args.image_size, listing]).encode()
    folder = args.dataroot if os.access(args.dataroot, os.W_OK) else args.output_dir  # read-only
    digest = hashlib.sha256(recipe).hexdigest()[:16]
    stem = os.path.join(folder, f"images_{args.image_size}px_{digest}")
    shape, found = (3, args.image_size, args.image_size), glob.escape(stem) + "_*.u8"
    if not glob.glob(found) and os.environ.get("LOCAL_RANK", "0") == "0":
        size, written = len(dataset) * math.prod(shape), f"{stem}.{socket.gethostname()}.tmp"
        print(f"{SCRIPT}: decoding {len(dataset):,} images once into {stem}_<kept>.u8 "
              f"({size / 1e9:.3g} GB)", flush=True)
        os.makedirs(folder, exist_ok=True)
        if shutil.disk_usage(folder).free < size:
            fail(f"no room for the image cache's {size / 1e9:.3g} GB in {folder}: pass --no-cache")
        try:  # a full disk, Ctrl-C: no file is left that a later run would take
            with open(written, "wb") as f:
                batches = decoder(dataset, args.workers, torch.device("cpu"), batch_size=256)
                for batch in ticking(batches, f"{SCRIPT}: decoded", len(dataset), 256):
                    f.write(batch.numpy())
                f.flush()
                os.fsync(f.fileno())
            os.replace(written, f"{stem}_{os.path.getsize(written) // math.prod(shape)}.u8")
        except OSError as e:
            fail(f"cannot write the image cache in {folder}: {e.strerror} (or pass --no-cache)")
        finally:
            if os.path.exists(written):
                os.remove(written)
    while not glob.glob(found):  # this machine's first process writes it
        time.sleep(5)
    path = glob.glob(found)[0]
    kept = int(path[len(stem) + 1:-3])
    if os.path.getsize(path) != kept * math.prod(shape):
        fail(f"the image cache {path} is damaged: delete it (it is made again) or pass --no-cache")
    return torch.from_file(path, size=kept * math.prod(shape), dtype=torch.uint8).view(-1, *shape)


class LsunLmdb:
    """LSUN's lmdb databases, read directly: torchvision's LSUN unpickles a file named _cache_* in
    the working directory (code planted there would run). Keys are listed once per database into a
    plain-text <db>_keys.txt beside it, reused while it matches the database. Each worker opens its
    own lmdb environment, so the dataset pickles to spawned workers (macOS, Windows)."""

    def __init__(self, paths, transform):
        import numpy as np
        self.paths, self.transform, self.envs = paths, transform, {}
        self.keys = [np.array(self.list_keys(path), dtype=bytes) for path in paths]
        self.ends = np.cumsum([len(k) for k in self.keys])
        self.close()

    def list_keys(self, path):
        file = path.rstrip(os.sep) + "_keys.txt"
        with self.env(path).begin() as txn:
            if os.path.isfile(file):
                with open(file, "rb") as f:
                    keys = f.read().split()
                if len(keys) == txn.stat()["entries"] and all(map(txn.get, keys[:1] + keys[-1:])):
                    return keys  # else stale, cut or damaged: listed again
            keys = list(ticking(txn.cursor().iternext(values=False),  # bedroom's 3 million: once
                                f"{SCRIPT}: listed keys of {path}:", txn.stat()["entries"]))
        try:  # under a name of this process's: every process lists, any may write
            with open(f"{file}.{os.getpid()}.tmp", "wb") as f:
                f.write(b"\n".join(keys) + b"\n")
            os.replace(f"{file}.{os.getpid()}.tmp", file)
        except OSError:  # a read-only data folder: the keys are listed again next time
            pass
        return keys

    def env(self, path):
        """This process's read-only environment for path, opened on first use, never pickled."""
        if (os.getpid(), path) not in self.envs:
            import lmdb
            self.envs[os.getpid(), path] = lmdb.open(path, readonly=True, lock=False,
                                                     readahead=False, meminit=False)
        return self.envs[os.getpid(), path]

    def close(self):
        for key in [key for key in self.envs if key[0] == os.getpid()]:
            self.envs.pop(key).close()

    def __getstate__(self):
        return dict(self.__dict__, envs={})

    def __len__(self):
        return int(self.ends[-1])

    def __getitem__(self, index):
        import io
        db = int((self.ends <= index).sum())
        key = self.keys[db][index - (self.ends[db - 1] if db else 0)]
        with self.env(self.paths[db]).begin() as txn:
            image = io.BytesIO(txn.get(key))
        return decode(self.transform, image, f"{self.paths[db]}:{key.decode()}"), 0


# ---- section 4.3: the mixture of 8 Gaussians ----
# As the authors' mixture script runs it (stability_comparison/mixture_gaussian, ls.py and sig.py):
# 8 Gaussians of sigma 0.01 on a circle of radius 1; G and D MLPs of two hidden layers of 128 tanh
# units, orthogonal weights with gain 1.4 and zero biases; z of 256; batch 512; Adam (beta1 0.5) at
# 1e-3 for G and 1e-4 for D; 35,000 steps in which G and D are updated simultaneously (one TF graph:
# both gradients from the same parameters and samples). Deviations: their sampler puts 9 components
# at linspace(0, 2 pi, 9), so 0 and 2 pi coincide and one mode weighs twice the others; ours are 8
# equal modes, the paper's "mixture of 8 Gaussians". Torch's orthogonal weights, not TF 0.12's
# (--orthogonal tf): 10 seeds of each gave the same outcome (README). Covered: >= 1% within 3 sigma.
MIXTURE_EPOCH = 512_000  # points per "epoch" (1,000 batches of 512)
VIEW_EVERY = 5_000  # the authors' figure: 10 batches of 512 after steps 1, 5,001, ..., 30,001
RADIUS, SIGMA = 1.0, 0.01


def tf_orthogonal_(weight, gain=1.4):
    """TensorFlow 0.12's orthogonal_initializer, the authors' (--orthogonal tf): TF keeps a layer's
    weights as (inputs, outputs), takes the SVD of a U[0, 1) matrix of that shape and keeps the
    factor of that shape, U when tall, V^T else. The entries' mean of 0.5 makes the top singular
    vector nearly constant: one direction of every layer is fixed, where torch's QR of a normal
    matrix is uniform over the orthogonal matrices. Signs are LAPACK's (TF's may differ)."""
    rows, cols = weight.shape[1], weight.shape[0]
    u, _, vh = torch.linalg.svd(torch.rand(rows, cols), full_matrices=False)
    with torch.no_grad():
        return weight.copy_(gain * (u if rows > cols else vh).T)


class MLP(nn.Module):
    """G: z (256) -> a 2-D point; D: a point -> one raw score."""

    def __init__(self, inputs, outputs, hidden=128, orthogonal="qr"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(),      # (N, 128)
                                 nn.Linear(hidden, hidden), nn.Tanh(),      # (N, 128)
                                 nn.Linear(hidden, outputs))                # (N, outputs)
        init = tf_orthogonal_ if orthogonal == "tf" else nn.init.orthogonal_
        for layer in self.net[::2]:  # the authors' slim layers: orthogonal_initializer(gain=1.4)
            init(layer.weight, gain=1.4)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.net(x).squeeze(-1)              # G: (N, 2) points; D: (N,) scores


def mixture_centres(radius=RADIUS, device="cpu"):
    angles = torch.arange(8, device=device) * (2 * math.pi / 8)
    return radius * torch.stack([angles.cos(), angles.sin()], 1)   # (8, 2)


def mixture_points(n, device, generator=None):
    """n points: a centre at random, plus N(0, sigma^2) noise."""
    pick = torch.randint(0, 8, (n,), device=device, generator=generator)
    noise = torch.randn(n, 2, device=device, generator=generator)
    return mixture_centres(device=device)[pick] + SIGMA * noise  # made there: no copy a step


def mixture_scores(points, radius=RADIUS, sigma=SIGMA):
    """Modes covered (>= 1% of the points within 3 sigma of the centre) and the share of points
    within 3 sigma of any centre; the same within 10 sigma, a looser look at near misses; and the
    modes reached: centres that are the nearest centre of >= 5% of the points (a fair share is
    12.5%), which counts mass spread over every mode however far from it."""
    distance = torch.cdist(points.float().cpu(), mixture_centres(radius))    # (N, 8)
    nearest = torch.bincount(distance.argmin(1), minlength=8) / len(points)
    scores = {"modes_reached": int((nearest >= 0.05).sum())}
    for k, key in ((3, ""), (10, "_10sigma")):
        near = distance <= k * sigma
        scores[f"modes{key}"] = int((near.float().mean(0) >= 0.01).sum())
        scores[f"share_within_{k}sigma"] = near.any(1).float().mean().item()
    return scores


def simultaneous_step(G, D, opt_G, opt_D, x, z, targets=(0.0, 1.0, 1.0), loss="ls"):
    """The authors' update: D's and G's gradients both from the parameters before this step and
    from the same G(z), then both steps. Returns what train_step returns."""
    a, b, c = targets
    fake = G(z)
    real_scores, fake_scores = D(x), D(fake.detach())
    loss_d = d_loss(real_scores, b, loss) + d_loss(fake_scores, a, loss)
    opt_D.zero_grad(set_to_none=True)
    loss_d.backward()
    with frozen(D):                                  # D not stepped yet: G sees the same D
        loss_g = g_loss(D(fake), c, loss)
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_D.step()
    opt_G.step()
    d_x, d_g_z = logged(real_scores, loss), logged(fake_scores, loss)
    return torch.stack([loss_d, loss_g, d_x, d_g_z]).detach()


def scatter_on(ax, points, title):
    points, centres = np.asarray(points), mixture_centres().numpy()
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, color="tab:blue")
    ax.scatter(centres[:, 0], centres[:, 1], s=30, marker="x", color="tab:red")
    ax.set(xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), aspect="equal", title=title)


def scatter(points, path, title):
    fig, ax = pyplot().subplots(figsize=(4, 4))
    scatter_on(ax, points.detach().float().cpu(), title)
    save_figure(fig, path, dpi=80)


def views_figure(views, path):
    """A column per (title, points (N, 2)) of views. Top, the authors' figure (ls.py): seaborn's
    kdeplot, here scipy's Gaussian KDE with Scott's bandwidth (~17 sigma on this ring), 30 filled
    levels over [-4, 4]^2, no centres; below, our scatter of the same points, centres marked (x)."""
    from scipy.stats import gaussian_kde
    xx, yy = np.meshgrid(np.linspace(-4, 4, 100), np.linspace(-4, 4, 100))
    fig, axes = pyplot().subplots(2, len(views), figsize=(2.2 * len(views), 4.6), squeeze=False)
    for (title, points), top, bottom in zip(views, *axes):
        try:
            density = gaussian_kde(points.T)(np.stack([xx.ravel(), yy.ravel()]))
            top.contourf(xx, yy, density.reshape(xx.shape), levels=30, cmap="Greens")
        except np.linalg.LinAlgError:  # every point on one line: no 2-D density
            top.text(0, 0, "degenerate", ha="center")
        top.set(xlim=(-4, 4), ylim=(-4, 4), aspect="equal", title=title, xticks=[], yticks=[])
        scatter_on(bottom, points, "")
    save_figure(fig, path, dpi=80)


def train_mixture(args, ckpt):
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    G = MLP(args.nz, 2, orthogonal=args.orthogonal).to(device)
    D = MLP(2, 1, orthogonal=args.orthogonal).to(device)
    fused, betas = device.type in ("cpu", "cuda"), (args.beta1, args.beta2)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=betas, fused=fused)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, fused=fused)
    fixed_noise = torch.randn(2000, args.nz, device=device)  # the per-epoch scatter plots
    iteration, elapsed, iterations = 0, 0.0, MIXTURE_EPOCH // args.batch_size
    if ckpt:
        restore(ckpt, G=G, D=D, opt_G=opt_G, opt_D=opt_D)
        fixed_noise, iteration = ckpt["fixed_noise"].to(device), ckpt["iteration"]
        elapsed = ckpt["elapsed_s"]
    out, total = args.output_dir, args.epochs * iterations
    os.makedirs(os.path.join(out, "views"), exist_ok=True)
    scatter(mixture_points(2000, "cpu", torch.Generator().manual_seed(0)),
            os.path.join(out, "real.png"), "real data")
    progress = Progress(os.path.join(out, "log.csv"), total, iteration, elapsed)
    last, targets = min(total, iteration + 2) if args.dry_run else total, eq2_targets(args)
    saved_at = time.monotonic()
    print(f"{SCRIPT}: {vars(args)}\n{SCRIPT}: mixture8, {iterations} iterations of "
          f"{args.batch_size} per epoch, from iteration {iteration} of {total} on {device}")
    with StopOnSignal() as stop:
        while iteration < last:
            x = mixture_points(args.batch_size, device)
            z = torch.randn(args.batch_size, args.nz, device=device)
            stats = simultaneous_step(G, D, opt_G, opt_D, x, z, targets, args.loss)
            progress.add(stats, args.batch_size)
            iteration += 1
            epoch, step = (iteration - 1) // iterations + 1, (iteration - 1) % iterations + 1
            if iteration % VIEW_EVERY in (0, 1):  # fresh z, the same at every resume
                z = torch.randn(10_000, args.nz, device=device,
                                generator=torch.Generator(device).manual_seed(iteration))
                np.save(os.path.join(out, "views", f"step_{iteration:05d}.npy"),
                        sample(G, z).cpu().numpy())
            saving = time.monotonic() - saved_at > 60 * args.checkpoint_every
            if iteration % args.log_every == 0 or iteration == last or stop.requested or saving:
                progress.line(epoch, iteration, f"[epoch {epoch}/{args.epochs}][iter {step}/"
                              f"{iterations}]", unit="points")
            if step == iterations or iteration == last or stop.requested or saving:
                scatter(sample(G, fixed_noise), os.path.join(out, f"epoch_{epoch:03d}.png"),
                        f"{args.loss}: step {iteration}")
                save_checkpoint(args, {
                    "epoch": iteration // iterations, "iteration": iteration,
                    "elapsed_s": progress.elapsed, "G": G.state_dict(), "D": D.state_dict(),
                    "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                    "fixed_noise": fixed_noise.cpu()})
                if step == iterations:
                    snapshot(args, iteration // iterations, G=G.state_dict())
                saved_at = time.monotonic()
            if stop.requested:
                stop.exit(args, f"iteration {iteration}")
    save_gif(sorted(glob.glob(os.path.join(out, "epoch_*.png"))), os.path.join(out, "progress.gif"))
    plot_log(os.path.join(out, "log.csv"), os.path.join(out, "loss.png"), f"{SCRIPT} mixture8")
    final = sample(G, torch.randn(10_000, args.nz, device=device)).cpu()
    views = {int(path[-9:-4]): np.load(path)  # views/step_NNNNN.npy
             for path in sorted(glob.glob(os.path.join(out, "views", "step_*.npy")))}
    scores = {**mixture_scores(final),
              "steps": {step: mixture_scores(torch.from_numpy(v)) for step, v in views.items()}}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(scores, f)
    real = mixture_points(10 * 512, "cpu", torch.Generator().manual_seed(0)).numpy()
    views_figure([(f"step {s}", v[:10 * 512]) for s, v in views.items() if s % VIEW_EVERY == 1]
                 + [(f"step {iteration}", final[:10 * 512].numpy()), ("real data", real)],
                 os.path.join(out, "views.png"))
    print(f"{SCRIPT}: mixture8 ({args.loss}): {scores['modes']} of 8 modes covered, "
          f"{scores['share_within_3sigma']:.1%} of samples within 3 sigma of a centre. "
          f"Outputs in {out}")


def generate_mixture(args, ckpt):
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    G = MLP(args.nz, 2).to(device)
    G.load_state_dict((snapshot(args, args.epoch) if args.epoch else ckpt)["G"])
    points = sample(G, torch.randn(args.generate, args.nz, device=device))
    np.save(os.path.join(args.output_dir, "samples.npy"), points.cpu().numpy())
    s = mixture_scores(points)
    print(f"{SCRIPT}: wrote {args.generate} points to {args.output_dir}/samples.npy: modes "
          f"covered {s['modes']} ({s['share_within_3sigma']:.1%} within 3 sigma), within 10 sigma "
          f"{s['modes_10sigma']} ({s['share_within_10sigma']:.1%}), reached {s['modes_reached']}")


MODES = {"generate": generate, "interpolate": interpolate}  # run instead of train() when asked

if __name__ == "__main__":
    main()
