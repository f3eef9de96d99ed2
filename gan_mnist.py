#!/usr/bin/env python3
"""The original GAN on MNIST: multilayer perceptrons for G and D, dropout in D.

Paper: Goodfellow et al., "Generative Adversarial Networks", arXiv:1406.2661v1 (2014). D ascends
Eq. 1, log D(x) + log(1 - D(G(z))); G ascends log D(G(z)), the non-saturating form of section 3
(--g-loss minimax descends Eq. 1 itself); k D-steps per G-step as in Algorithm 1 (--d-steps).
Three recipes (--recipe; RECIPES lists the defaults each sets, explicit options win):
  - paper: the authors' mnist.yaml (goodfeli/adversarial): G 100-1200-1200-784 of rectifiers and
    sigmoid pixels, D two maxout layers (240 units of 5 pieces), dropout 0.2 on D's input and 0.5
    on its hidden units, SGD (rate 0.1 decayed each step, momentum 0.5 ramped to 0.7), batch 100,
    the first 50,000 training images. Deviation from Algorithm 1, as their code: D and G are
    updated at once from one pass, D's loss halved (simultaneous_step);
  - tutorial: the well-known PyTorch MLP tutorial exactly: G z-256-512-1024-784, D 784-1024-512-
    256-1, LeakyReLU(0.2), batch 64, Adam 2e-4 with beta1 0.5, dropout 0.5 (a registered module,
    off when sampling: the tutorial's stays on), Eq. 1 alternating as Algorithm 1;
  - ours (the default): the tutorial's networks, and where it departs from the tutorial (each also
    stated where it happens; docs/RESULTS.md measures them): batch 128; Adam at 1e-3 for G and 4e-4
    for D with beta1 0, made safe by a lazy R1 penalty on D (Mescheder et al. 2018,
    arXiv:1801.04406v4; gamma 10 every 4th D-step; --r1 0: off); dropout 0.1; BatchNorm in G;
    pictures and samples from a moving average of G's weights (--ema 0.999) with BatchNorm
    statistics of its own.
MNIST is read once into one uint8 tensor on the device; batches are taken by indexing it.

Run:     python gan_mnist.py --dataroot DIR            # 10 epochs; downloads MNIST into DIR
         python gan_mnist.py --recipe paper --epochs 100 --dataroot DIR --output-dir runs/paper
Sample:  python gan_mnist.py --generate 10000 --output-dir runs/paper    # samples/, nearest.png
Fig. 3:  python gan_mnist.py --interpolate --output-dir runs/paper       # interpolation.png
Smoke:   python gan_mnist.py --dry-run --dataroot DIR --output-dir /tmp/mnist-smoke
"""
import argparse
import contextlib
import copy
import csv
import glob
import math
import os
import shlex
import signal
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import nearest, plot_log, save_gif, save_grid, save_images

SCRIPT = "gan_mnist"


def build_parser(p):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    g.add_argument("--dataroot", default="./data", help="holds MNIST/raw or FashionMNIST/raw; "
                   "torchvision downloads there when the files are missing")
    g = p.add_argument_group("model")
    g.add_argument("--recipe", choices=list(RECIPES), default="ours",
                   help="the networks, and the defaults of the options that name it (RECIPES): "
                   "ours, the tutorial's, or the paper's (the authors' mnist.yaml)")
    g.add_argument("--nz", type=number(int, 1), default=100, help="size of z")
    g.add_argument("--dropout", type=number(float, 0, 1), **by_recipe("dropout", "in D's hidden"))
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=number(int, 1), default=10, help="passes over the training set")
    g.add_argument("--batch-size", type=number(int, 1), **by_recipe("batch_size", "per D-step"))
    g.add_argument("--lr", type=number(float, 0), **by_recipe("lr", "G's rate (Adam's or SGD's)"))
    g.add_argument("--lr-d", type=number(float, 0), **by_recipe("lr_d", "D's rate"))
    g.add_argument("--beta1", type=number(float, 0, 1), **by_recipe("beta1", "Adam's beta1"))
    g.add_argument("--beta2", type=number(float, 0, 1), default=0.999, help="Adam's beta2")
    g.add_argument("--d-steps", type=number(int, 1), default=1, help="D-steps per G-step: k")
    g.add_argument("--g-loss", choices=["non-saturating", "minimax"], default="non-saturating",
                   help="G ascends log D(G(z)) (section 3) or descends log(1 - D(G(z))) (Eq. 1)")
    g.add_argument("--r1", type=number(float, 0), **by_recipe("r1", "R1 weight (0: off)"))
    g.add_argument("--r1-every", type=number(int, 1), default=4, help="R1 every N D-steps, times N")
    g.add_argument("--ema", type=number(float, 0, 1), **by_recipe("ema", "pictures and samples "
                   "from an average of G's weights, k steps ago weighed EMA^k (0: G itself)"))
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default=os.path.join("output", SCRIPT))
    g.add_argument("--seed", type=int, default=1, help="seeds torch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto: cuda, then mps, then cpu (the tutorial's --use-cuda)")
    g.add_argument("--log-every", type=number(int, 1), default=100, help="iterations a log line")
    g.add_argument("--dry-run", action="store_true", help="2 iterations of 8, every output")
    g.add_argument("--resume", action="store_true", help="continue <output-dir>/checkpoint.pt")
    g.add_argument("--checkpoint-every", type=number(float, 0), default=5.0, metavar="MINUTES",
                   help="write the checkpoint this often, and at each epoch's end and on a stop")
    g.add_argument("--snapshot-every", type=number(int, 1), default=1, metavar="K",
                   help="keep G's weights every K epochs in <output-dir>/snapshots/")
    g.add_argument("--epoch", type=number(int, 1), metavar="K",
                   help="--generate: from the snapshot of epoch K, not the checkpoint")
    g.add_argument("--generate", type=number(int, 1), metavar="N", help="write N images from the "
                   "checkpoint to <output-dir>/samples/, and nearest.png (Fig. 2)")
    g.add_argument("--interpolate", action="store_true",
                   help="interpolation.png: G along straight lines in z (Fig. 3)")
    return p


# The defaults each recipe gives (explicit options win). ours: see the deviations above. tutorial:
# the PyTorch MLP tutorial's training exactly. paper: goodfeli/adversarial's mnist.yaml (SGD with
# its momentum ramp and rate decay, dropout 0.5 on D's hidden units and 0.2 on its input).
RECIPES = {"ours": dict(batch_size=128, lr=1e-3, lr_d=4e-4, beta1=0.0, dropout=0.1, r1=10.0,
                        ema=0.999),
           "tutorial": dict(batch_size=64, lr=2e-4, lr_d=2e-4, beta1=0.5, dropout=0.5, r1=0.0,
                            ema=0.0),
           "paper": dict(batch_size=100, lr=0.1, lr_d=0.1, beta1=0.0, dropout=0.5, r1=0.0, ema=0.0)}


def by_recipe(key, help):
    """An option that --recipe sets unless it is given (settle() does): its help says each value."""
    values = ", ".join(f"{name} {recipe[key]}" for name, recipe in RECIPES.items())
    return {"default": argparse.SUPPRESS, "help": f"{help} (default: {values})"}


# ---- the models ----

class Generator(nn.Module):
    def __init__(self, nz=100, image_size=28, batch_norm=True):
        super().__init__()
        self.image_size = image_size
        # Deviation (ours): BatchNorm after each hidden layer (as DCGAN's G); docs/RESULTS.md.
        norm = nn.BatchNorm1d if batch_norm else nn.Identity
        self.net = nn.Sequential(
            nn.Linear(nz, 256), norm(256), nn.LeakyReLU(0.2),                   # (N, 256)
            nn.Linear(256, 512), norm(512), nn.LeakyReLU(0.2),                  # (N, 512)
            nn.Linear(512, 1024), norm(1024), nn.LeakyReLU(0.2),                # (N, 1024)
            nn.Linear(1024, image_size ** 2), nn.Tanh())                       # (N, 784) in [-1, 1]

    def forward(self, z):
        return self.net(z).view(-1, 1, self.image_size, self.image_size)       # (N, 1, 28, 28)


class Discriminator(nn.Module):
    def __init__(self, image_size=28, dropout=0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),                                                       # (N, 784)
            nn.Linear(image_size ** 2, 1024), nn.LeakyReLU(0.2), nn.Dropout(dropout),  # (N, 1024)
            nn.Linear(1024, 512), nn.LeakyReLU(0.2), nn.Dropout(dropout),      # (N, 512)
            nn.Linear(512, 256), nn.LeakyReLU(0.2), nn.Dropout(dropout),       # (N, 256)
            nn.Linear(256, 1))                                                 # (N, 1): a logit

    def forward(self, x):
        return self.net(x).view(-1)                                            # (N,)


class PaperGenerator(nn.Module):
    """The authors' G (mnist.yaml): rectifiers, then sigmoid pixels whose biases start at the logit
    of each pixel's mean over the training set; weights from U(-0.05, 0.05), other biases 0."""

    def __init__(self, nz=100, image_size=28, pixel_mean=None):
        super().__init__()
        self.image_size = image_size
        self.net = nn.Sequential(
            nn.Linear(nz, 1200), nn.ReLU(),                                     # (N, 1200)
            nn.Linear(1200, 1200), nn.ReLU(),                                   # (N, 1200)
            nn.Linear(1200, image_size ** 2), nn.Sigmoid())                    # (N, 784) in [0, 1]
        for layer in self.net[::2]:
            nn.init.uniform_(layer.weight, -0.05, 0.05)
            nn.init.zeros_(layer.bias)
        if pixel_mean is not None:  # pylearn2's init_sigmoid_bias_from_marginals
            with torch.no_grad():
                self.net[4].bias.copy_(torch.logit(pixel_mean.clamp(1e-7, 1 - 1e-7)))

    def forward(self, z):  # pixels in [-1, 1] outside, as the other recipes' images
        return self.net(z).mul(2).sub(1).view(-1, 1, self.image_size, self.image_size)


class PaperDiscriminator(nn.Module):
    """The authors' D (mnist.yaml): two maxout layers of 240 units of 5 pieces, a logit; dropout
    0.2 on the pixels and `dropout` (0.5) on each hidden layer; weights from U(-0.005, 0.005)."""

    def __init__(self, image_size=28, dropout=0.5, units=240, pieces=5):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.h0 = nn.Linear(image_size ** 2, units * pieces)
        self.h1, self.y = nn.Linear(units, units * pieces), nn.Linear(units, 1)
        for layer in (self.h0, self.h1, self.y):
            nn.init.uniform_(layer.weight, -0.005, 0.005)
            nn.init.zeros_(layer.bias)
        self.drop_input, self.drop = nn.Dropout(0.2), nn.Dropout(dropout)

    def maxout(self, h):
        return h.view(len(h), self.units, self.pieces).amax(2)  # (N, units): the largest piece

    def forward(self, x):
        x = x.flatten(1).add(1).div(2)                     # (N, 784) in [0, 1], as the authors'
        h = self.maxout(self.h0(self.drop_input(x)))       # (N, 240)
        h = self.maxout(self.h1(self.drop(h)))             # (N, 240)
        return self.y(self.drop(h)).view(-1)               # (N,): a logit


def networks(args, images=None):
    """G and D of --recipe; the paper's G takes its output biases from the training images."""
    if args.recipe == "paper":
        mean = None if images is None else images.flatten(1).float().mean(0).div(255)
        return PaperGenerator(args.nz, pixel_mean=mean), PaperDiscriminator(dropout=args.dropout)
    return (Generator(args.nz, batch_norm=args.recipe == "ours"),
            Discriminator(dropout=args.dropout))


# ---- the losses: Goodfellow et al. 2014, Eq. 1 and section 3 ----

def d_loss(logits, target):
    """Eq. 1, D's side, one term per call: D ascends log D(x) + log(1 - D(G(z))), i.e. descends
    BCE(D(x), 1) + BCE(D(G(z)), 0): target 1 for real images, 0 for generated ones."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def g_loss(logits, variant="non-saturating"):
    if variant == "minimax":
        # Eq. 1, G's side: descend log(1 - D(G(z))) = -BCE(logit, 0); saturates while D wins.
        return -F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    # Section 3: ascend log D(G(z)) instead, i.e. descend -log D(G(z)) = BCE(logit, 1).
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def r1_penalty(logits, images):
    """Deviation: Mescheder et al. 2018 (arXiv:1801.04406v4), Eq. 9 without its gamma/2:
    E_x ||grad_x D(x)||^2 on real data."""
    grad, = torch.autograd.grad(logits.sum(), images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


# ---- one iteration: Algorithm 1 ----

def train_step(G, D, opt_G, opt_D, batches, d_steps_before=0, r1=10.0, r1_every=4,
               g_variant="non-saturating"):
    """k D-steps, one per (x, z) in batches (x real images, z noise), then one G-step.
    d_steps_before: D-steps taken so far (for lazy R1). Returns (loss_D, loss_G, D(x), D(G(z)))
    on the device."""
    for k, (x, z) in enumerate(batches):
        # (1) D: descend Eq. 1's cross-entropies on a real and a (detached) generated batch. Lazy R1
        # (Karras et al. 2020, arXiv:1912.04958v2, section 3.1): every r1_every-th D-step, weighted
        # r1_every times as much: the same regularisation on average for a quarter of the cost.
        lazy = r1 > 0 and (d_steps_before + k) % r1_every == 0
        fake = G(z)
        x.requires_grad_(lazy)
        real_logits, fake_logits = D(x), D(fake.detach())
        loss_d = d_loss(real_logits, 1.0) + d_loss(fake_logits, 0.0)
        penalty = r1 * r1_every / 2 * r1_penalty(real_logits, x) if lazy else 0
        opt_D.zero_grad(set_to_none=True)
        (loss_d + penalty).backward()
        opt_D.step()
    # (2) G: the last D-step's generated batch again (one G forward saved), through the updated D.
    with frozen(D):
        loss_g = g_loss(D(fake), g_variant)
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_G.step()
    d_x, d_g_z = torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()
    return torch.stack([loss_d, loss_g, d_x, d_g_z]).detach()


@contextlib.contextmanager
def frozen(D):
    """D's weights need no gradients while G learns through D (their computation is skipped)."""
    D.requires_grad_(False)
    try:
        yield D
    finally:
        D.requires_grad_(True)


def simultaneous_step(G, D, opt_G, opt_D, x, z, g_variant="non-saturating"):
    """--recipe paper, as the authors' code (AdversaryCost2 under SGD): one pass, D's loss halved,
    both players' gradients from it and both updated at once. Deviation from Algorithm 1, whose
    G-step goes through the D its D-step updated. Returns what train_step returns."""
    fake = G(z)
    real_logits, fake_logits = D(x), D(fake)  # G's loss sees D's dropout masks of D's loss
    loss_d = (d_loss(real_logits, 1.0) + d_loss(fake_logits, 0.0)) / 2  # Eq. 1, halved
    loss_g = g_loss(fake_logits, g_variant)
    opt_D.zero_grad(set_to_none=True)
    opt_G.zero_grad(set_to_none=True)
    loss_d.backward(inputs=list(D.parameters()), retain_graph=True)  # loss_g shares the pass
    loss_g.backward(inputs=list(G.parameters()))
    opt_D.step()
    opt_G.step()
    d_x, d_g_z = torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()
    return torch.stack([loss_d, loss_g, d_x, d_g_z]).detach()


def paper_schedule(opt_G, opt_D, args, iteration, epoch):
    """mnist.yaml's SGD: each rate divided by 1.000004 a step, not below 1e-6 (ExponentialDecay);
    momentum 0.5 in epoch 1, ramped linearly to 0.7 in epoch 250 (MomentumAdjustor). pylearn2 puts
    each step's rate into the velocity, torch applies it to the velocity: 4 ppm a step apart."""
    momentum = 0.5 + 0.2 * min(epoch / 249, 1)  # epoch counts from 0
    for opt, lr in ((opt_G, args.lr), (opt_D, args.lr_d)):
        opt.param_groups[0].update(lr=max(lr / 1.000004 ** iteration, 1e-6), momentum=momentum)


def update_average(G_ema, G, ema, step):
    """Deviation (ours): pictures and samples come from an exponential moving average of G's
    weights (Yazici et al. 2019, arXiv:1806.04498v2), which smooths the MLP's step-to-step jitter.
    After steps 0..t it weighs G's weights of k steps ago by ema^k, from the first step on: the
    decay 1 - (1 - ema) / (1 - ema^(t + 1)) corrects the bias as Adam does; no initial G in it."""
    decay = 1 - (1 - ema) / (1 - ema ** (step + 1))
    with torch.no_grad():
        for average, current in zip(G_ema.parameters(), G.parameters()):
            average.lerp_(current, 1 - decay)


def refresh_statistics(G_ema, nz, batch_size, batches=16):
    """BatchNorm statistics for the averaged weights (G's running ones belong to G's weights):
    the plain mean over `batches` batches of z, G_ema in train mode without gradients. Its z come
    from a generator of their own, so training's random stream, and a resumed run, are untouched."""
    device = next(G_ema.parameters()).device
    g = torch.Generator(device).manual_seed(0)
    norms = [m for m in G_ema.modules() if isinstance(m, nn.BatchNorm1d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average, each batch weighted alike
    G_ema.train()
    with torch.no_grad():
        for _ in range(batches):
            G_ema(torch.randn(batch_size, nz, device=device, generator=g))
    for m in norms:
        m.momentum = 0.1


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


# ---- this script's run: the loop, its data, samples ----

# Options of one command, never taken from the checkpoint; options that must match it.
COMMAND_KEYS = ("output_dir", "resume", "dry_run", "generate", "epoch", "interpolate")
MODEL_KEYS = ("dataset", "nz", "recipe")


def settle(args):
    """The recipe's defaults where options were left out; checks across options."""
    for key, value in RECIPES[args.recipe].items():
        setattr(args, key, getattr(args, key, value))
    if args.recipe == "paper" and (args.d_steps != 1 or args.r1 > 0):
        fail("--recipe paper updates D and G at once, as the authors' code: no --d-steps, --r1")
    if args.dry_run:
        args.batch_size = min(args.batch_size, 8)
    return args


def train(args, ckpt):
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    images = load_images(args).to(device)  # (N, 28, 28) uint8, on the device
    per_iteration = args.batch_size * args.d_steps
    iterations = len(images) // per_iteration  # per epoch; the last partial batch is dropped
    if iterations == 0:
        fail(f"{len(images)} training images are fewer than --batch-size x --d-steps = "
             f"{per_iteration}")
    G, D = (net.to(device) for net in networks(args, images))
    fused = device.type in ("cpu", "cuda")  # one kernel for all of a net's parameters
    if args.recipe == "paper":  # rates and momentum set by paper_schedule() each step
        opt_G, opt_D = (torch.optim.SGD(n.parameters(), momentum=0.5, fused=fused) for n in (G, D))
    else:
        betas = (args.beta1, args.beta2)
        opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=betas, fused=fused)
        opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, fused=fused)
    G_ema = copy.deepcopy(G).requires_grad_(False) if args.ema > 0 else G  # what pictures show
    fixed_noise = torch.randn(64, args.nz, device=device)  # the per-epoch grids use these z
    iteration, elapsed = 0, 0.0
    if ckpt:
        # With --ema 0 the average is G itself: it must not receive the checkpoint's average.
        restore(ckpt, G=G, D=D, opt_G=opt_G, opt_D=opt_D, **({"G_ema": G_ema} if args.ema else {}))
        fixed_noise, iteration = ckpt["fixed_noise"].to(device), ckpt["iteration"]
        elapsed = ckpt["elapsed_s"]
    out, total = args.output_dir, args.epochs * iterations
    os.makedirs(out, exist_ok=True)
    progress = Progress(os.path.join(out, "log.csv"), total, iteration, elapsed)
    save_grid(to_model(images[:64]), os.path.join(out, "real.png"))
    last = min(total, iteration + 2) if args.dry_run else total
    log_every, saved_at = 1 if args.dry_run else args.log_every, time.monotonic()
    print(f"{SCRIPT}: {vars(args)}\n{SCRIPT}: {len(images)} images, {iterations} iterations per "
          f"epoch, from iteration {iteration} of {total} on {device}", flush=True)
    with StopOnSignal() as stop:
        while iteration < last:
            epoch, step = divmod(iteration, iterations)
            g = torch.Generator().manual_seed(args.seed * 100003 + epoch)  # the order of (seed,
            order = torch.randperm(len(images), generator=g).to(device)  # epoch): resumes see it
            for step in range(step, iterations):
                take = order[step * per_iteration:(step + 1) * per_iteration].view(args.d_steps, -1)
                batches = [(to_model(images[i]), torch.randn(len(i), args.nz, device=device))
                           for i in take]
                if args.recipe == "paper":
                    paper_schedule(opt_G, opt_D, args, iteration, epoch)
                    stats = simultaneous_step(G, D, opt_G, opt_D, *batches[0], args.g_loss)
                else:
                    stats = train_step(G, D, opt_G, opt_D, batches, iteration * args.d_steps,
                                       args.r1, args.r1_every, args.g_loss)
                progress.add(stats, per_iteration)
                if args.ema > 0:
                    update_average(G_ema, G, args.ema, iteration)
                iteration += 1
                saving = time.monotonic() - saved_at > 60 * args.checkpoint_every
                if iteration % log_every == 0 or iteration == last or stop.requested or saving:
                    progress.line(epoch + 1, iteration, f"[epoch {epoch + 1}/{args.epochs}]"
                                  f"[iter {step + 1}/{iterations}]")
                if iteration == last or stop.requested or saving:
                    break
            if args.ema > 0:
                refresh_statistics(G_ema, args.nz, args.batch_size)
            G_ema.eval()  # G(fixed z) after (the latest point of) each epoch; the GIF joins them
            with torch.no_grad():
                save_grid(G_ema(fixed_noise), os.path.join(out, f"epoch_{epoch + 1:03d}.png"))
            G_ema.train()
            save_checkpoint(args, {
                "epoch": iteration // iterations, "iteration": iteration,
                "elapsed_s": progress.elapsed, "G": G.state_dict(), "G_ema": G_ema.state_dict(),
                "D": D.state_dict(), "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                "fixed_noise": fixed_noise.cpu()})
            if iteration % iterations == 0:  # a whole epoch
                snapshot(args, iteration // iterations, G=G.state_dict(), G_ema=G_ema.state_dict())
            saved_at = time.monotonic()
            if stop.requested:
                stop.exit(args, f"iteration {iteration}")
    save_gif(sorted(glob.glob(os.path.join(out, "epoch_*.png"))), os.path.join(out, "progress.gif"))
    plot_log(os.path.join(out, "log.csv"), os.path.join(out, "loss.png"),
             title=f"{SCRIPT} ({args.dataset})")
    print(f"{SCRIPT}: done: {iteration} iterations, {progress.elapsed:.1f} s. Outputs in {out}")


def to_model(images):
    """uint8 images (N, 28, 28) -> floats in [-1, 1], (N, 1, 28, 28): what G makes and D sees."""
    return images.unsqueeze(1).float().div(127.5).sub(1)


def load_images(args, train=True):
    """The training images (--recipe paper: the authors' first 50,000; 50,000-59,999 validate,
    Parzen's sigma) or the test images, uint8 (N, 28, 28), through torchvision (which downloads
    them into --dataroot when they are missing)."""
    from torchvision import datasets
    name = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[args.dataset]
    try:
        images = getattr(datasets, name)(args.dataroot, train=train, download=True).data
    except Exception as e:
        fail(f"cannot load {args.dataset} into or from --dataroot {args.dataroot} "
             f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})")
    return images[:50_000] if train and args.recipe == "paper" else images


def sampler(args, ckpt):
    """The averaged G (G itself with --ema 0) of the checkpoint or of --epoch K, in eval mode."""
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    G = networks(args)[0].to(device)
    G.load_state_dict((snapshot(args, args.epoch) if args.epoch else ckpt)["G_ema"])
    return G.eval().requires_grad_(False), device


def generate(args, ckpt):
    """N samples, then Fig. 2: nearest.png, 32 samples each followed by its nearest training
    image, and the mean distance to the nearest training image of the samples and of as many test
    images (held out: the distance a new digit has)."""
    train_images, test_images = load_images(args), load_images(args, train=False)
    G, device = sampler(args, ckpt)
    folder = os.path.join(args.output_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "[0-9]*.png")):  # an earlier, maybe larger, set
        os.remove(old)
    samples = []
    for start in range(0, args.generate, 1000):
        samples.append(G(torch.randn(min(1000, args.generate - start), args.nz, device=device)))
        save_images(samples[-1], folder, start)
    samples, train_images = torch.cat(samples).cpu(), to_model(train_images)  # on the CPU
    distance, index = nearest(samples, train_images)
    held_out = nearest(to_model(test_images[:args.generate]), train_images)[0]
    pairs = torch.stack([samples[:32], train_images[index[:32]]], 1).flatten(0, 1)  # s, n, s, ...
    save_grid(pairs, os.path.join(args.output_dir, "nearest.png"))
    print(f"{SCRIPT}: wrote {args.generate} images to {folder}, and nearest.png; mean L2 distance "
          f"to the nearest training image: samples {distance.mean():.2f}, {len(held_out):,} test "
          f"images {held_out.mean():.2f}")


def interpolate(args, ckpt, rows=8, steps=10):
    """Fig. 3: G along straight lines in z, each row from one random z to another."""
    G, device = sampler(args, ckpt)
    ends = torch.randn(2, rows, 1, args.nz, device=device)
    z = torch.lerp(ends[0], ends[1], torch.linspace(0, 1, steps, device=device)[:, None])
    save_grid(G(z.view(rows * steps, args.nz)), os.path.join(args.output_dir, "interpolation.png"),
              nrow=steps)
    print(f"{SCRIPT}: wrote interpolation.png ({rows} lines of {steps} steps) to {args.output_dir}")


MODES = {"generate": generate, "interpolate": interpolate}  # main() runs one instead of train()

if __name__ == "__main__":
    main()
