#!/usr/bin/env python3
"""DCGAN: deep convolutional G and D, trained as in Radford et al.

Paper: Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", arXiv:1511.06434v2 (2016). Implemented: section 3's networks
(strided convolutions in D, fractionally-strided ones in G, no pooling and no hidden fully
connected layer, BatchNorm except at G's output and D's input, ReLU and a Tanh output in G,
LeakyReLU(0.2) in D); section 4's training (weights from N(0, 0.02), Adam at 2e-4 with beta1 0.5,
batch 128, images in [-1, 1]) on the losses of Goodfellow et al. 2014 (D on logits, the
non-saturating G); sections 5-6 as modes on the checkpoint: D's features classified (5.1, 5.2),
D's units by guided backpropagation (6.2), the latent walk (6.1), forgetting (6.3.1), arithmetic on
z (6.3.2). Torch code's layers: z -> 4x4 x 8ngf -> 8x8 x 4ngf -> 16x16 x 2ngf -> 32x32 x ngf ->
64x64 x nc, 4x4 kernels; other --image-size values add or remove a block per factor 2 (<= 8ngf).

Deviations (each also stated where it happens):
  - z ~ N(0, I) and BatchNorm scales from N(1, 0.02), as in the Torch code (Theano code: U(-1, 1));
  - 8ngf = 512 channels at 4x4, as in the Torch code; the paper's Fig. 1 draws 1,024;
  - samples are drawn with BatchNorm in eval mode (running statistics): see sample();
  - the latent walk follows great circles (slerp), not the paper's straight lines (--lerp);
  - LSUN is not de-duplicated (the paper's section 4.1.1 removes near-duplicate images);
  - D's features come from the dataset D learned, not ImageNet-1k; arithmetic's noise rescaled.
Data: the mnists and cifar10 live on the device; folder datasets and lsun are decoded once into a
uint8 file at the training size (--no-cache: every epoch); --dataset fake: random images.

Run:     python dcgan.py --dataset celeba --dataroot DIR --epochs 25  # DIR/<folder>/*.jpg; or lsun
Smoke:   python dcgan.py --dataset fake --dry-run --output-dir /tmp/dcgan-smoke
Sample:  python dcgan.py --generate 10000 --output-dir OUT  # OUT/samples/, their z, OUT/index.png
Paper:   --interpolate, --classify, --visualize-d, --forget BOXES.json, --arithmetic "A - B + C"
Several processes (one per GPU): torchrun --nproc_per_node 4 dcgan.py --dataset lsun ...
"""
import argparse
import atexit
import contextlib
import csv
import glob
import gzip
import json
import math
import os
import signal
import struct
import sys
import time
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from utils import plot_log, save_gif, save_grid, save_images, tile, to_uint8

SCRIPT = "dcgan"
DATASETS = ["cifar10", "lsun", "mnist", "fashion-mnist", "celeba", "folder", "imagenet", "lfw",
            "fake"]
IMAGE_SIZES = [32, 64, 128, 256]
FAKE_EPOCH = 10_000  # images per "epoch" of --dataset fake


def build_parser():
    p = Parser("Radford et al. 2015: DCGAN on torchvision datasets.")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="cifar10",
                   help="cifar10 and the mnists download into --dataroot; others must be there")
    g.add_argument("--dataroot", default="./data", help="where the dataset is (or downloads to)")
    g.add_argument("--classes", default="bedroom", help="LSUN categories, comma separated")
    g.add_argument("--workers", type=count, default=min(8, os.cpu_count() or 1),
                   help="processes that decode folder datasets and lsun (default: CPUs, up to 8)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="folder datasets and lsun: decode once into a uint8 file at the training "
                   "size and read that afterwards (--no-cache: decode every epoch)")
    g = p.add_argument_group("model")
    g.add_argument("--image-size", type=int, default=64, help=f"one of {IMAGE_SIZES} (paper: 64)")
    g.add_argument("--nz", type=positive_int, default=100, help="size of z (paper: 100)")
    g.add_argument("--ngf", type=positive_int, default=64, help="G's channels in its last block")
    g.add_argument("--ndf", type=positive_int, default=64, help="D's channels in its first block")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=5, help="passes over the training set")
    g.add_argument("--batch-size", type=positive_int, default=128,
                   help="images per step, over all processes (paper: 128)")
    g.add_argument("--lr", type=positive_float, default=2e-4, help="Adam's rate (paper: 2e-4)")
    g.add_argument("--lr-d", type=positive_float, help="D's rate where it differs from --lr")
    g.add_argument("--beta1", type=probability, default=0.5, help="Adam's beta1 (paper: 0.5)")
    g.add_argument("--beta2", type=probability, default=0.999, help="Adam's beta2 (paper: default)")
    g = p.add_argument_group("speed")
    g.add_argument("--amp", action="store_true",
                   help="autocast to bfloat16 (float16 + GradScaler on GPUs without bf16)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC images and weights (default: on for the CPU, off elsewhere)")
    g.add_argument("--compile", action="store_true", help="torch.compile G and D")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="under torchrun, BatchNorm over the global batch, not each process's share")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default=os.path.join("output", SCRIPT))
    g.add_argument("--seed", type=int, default=1, help="seeds torch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto: cuda, then mps, then cpu")
    g.add_argument("--log-every", type=positive_int, default=50, help="iterations a log line")
    g.add_argument("--dry-run", action="store_true", help="2 iterations of <= 8, every output")
    g.add_argument("--resume", action="store_true", help="continue <output-dir>/checkpoint.pt")
    g.add_argument("--snapshot-every", type=count, default=1, metavar="K",
                   help="keep G's weights every K epochs in <output-dir>/snapshots/ (0: never)")
    g.add_argument("--epoch", type=positive_int, metavar="K",
                   help="the modes that draw from G: use the snapshot of epoch K")
    g.add_argument("--generate", type=positive_int, metavar="N",
                   help="write N images to <output-dir>/samples/, their z, and index.png")
    g.add_argument("--interpolate", action="store_true",
                   help="write section 6.1's latent walk from the checkpoint")
    g.add_argument("--lerp", action="store_true", help="--interpolate on straight lines (the "
                   "paper's) instead of great circles (slerp)")
    g = p.add_argument_group("sections 5 and 6: read the checkpoint, write into --output-dir")
    g.add_argument("--classify", action="store_true",
                   help="5.1: a linear L2-SVM on D's features, random D's, pixels: classify.json")
    g.add_argument("--labels", type=positive_int, default=1000,
                   help="--classify: labelled training images, as many per class (paper: 1,000)")
    g.add_argument("--draws", type=positive_int, default=3, help="--classify: label draws")
    g.add_argument("--visualize-d", action="store_true",
                   help="6.2: guided backpropagation of D's last block: d_features.png")
    g.add_argument("--forget", metavar="BOXES.json", help='6.3.1: drop the G maps that draw what '
                   'the boxes mark ({"<z bank index>": [[x0, y0, x1, y1], ...]}): forget.png')
    g.add_argument("--arithmetic", metavar='"A - B + C"', help="6.3.2: arithmetic on the mean z "
                   "of z-bank indices (each term comma-separated): arithmetic.png")
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


def init_weights(module):
    """Section 4: all weights from N(0, 0.02). BatchNorm: scale N(1, 0.02), shift 0 (Torch code)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ---- the losses: Goodfellow et al. 2014, which the paper trains with ----

def d_loss(logits, target):
    """Eq. 1 of Goodfellow et al., D's side, one term per call: D ascends log D(x) +
    log(1 - D(G(z))), i.e. descends BCE(D(x), 1) + BCE(D(G(z)), 0): target 1 real, 0 generated."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def g_loss(logits):
    """Non-saturating G (Goodfellow et al., section 3): ascend log D(G(z)): BCE(D(G(z)), 1)."""
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


# ---- one iteration ----

def train_step(G, D, opt_G, opt_D, x, z, amp):
    """One D-step, then one G-step (Algorithm 1 of Goodfellow et al. with k = 1). x: real images,
    z: noise for as many. Returns (loss_D, loss_G, D(x), D(G(z))) on the device: no host reads."""
    # (1) D: the real and the generated batch in separate passes, so that each BatchNorm normalises
    # a pure batch, as in the authors' code; like theirs, each is backpropagated before the next
    # forward, so one graph of D is held at a time. Under DDP, D's gradients are summed locally
    # and reduced once, after the second backward.
    opt_D.zero_grad(set_to_none=True)
    with no_sync(D):
        with amp.autocast():
            real_logits = D(x).float()
            loss_real = d_loss(real_logits, 1.0)
        amp.backward(loss_real)
    with amp.autocast():
        fake = G(z)
        fake_logits = D(fake.detach()).float()
        loss_fake = d_loss(fake_logits, 0.0)
    amp.backward(loss_fake)
    amp.step(opt_D)
    # (2) G: through the updated D, whose weights need no gradients here. D is in training mode in
    # all three passes, so each updates its BatchNorm running statistics: they average two generated
    # batches to one real one. Nothing here runs D in eval mode; anything that did would normalise
    # with that mix.
    with frozen(D) as D_local, amp.autocast():
        loss_g = g_loss(D_local(fake).float())
    opt_G.zero_grad(set_to_none=True)
    amp.backward(loss_g)
    amp.step(opt_G)
    d_x, d_g_z = torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()
    return torch.stack([loss_real + loss_fake, loss_g, d_x, d_g_z]).detach()


def sample(G, z):
    """G(z) for pictures and --generate, with BatchNorm in eval mode (running statistics): each
    image depends on its own z alone, and the statistics stay untouched. Deviation: the authors'
    code samples in training mode (batch statistics); on MNIST the two scored alike (README.md)."""
    was_training = G.training
    G.eval()
    with torch.no_grad():
        images = G(z)
    G.train(was_training)
    return images


# ---- run plumbing: the same in every script ----
# Options, checkpoints, the log line, signals, errors. tests/test_plumbing.py fails when this block
# differs between the scripts: change it in one, copy it to the others.

def fail(message, status=2):
    """One line on stderr, then exit: 2 bad input, 1 a diverged run, 130 a second stop signal."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


class Parser(argparse.ArgumentParser):
    """No abbreviations (a mistyped option is an error, not another option); errors in one line."""

    def __init__(self, description):
        super().__init__(description=description, allow_abbrev=False,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def error(self, message):
        fail(message)


def checked(cast, ok, expected):
    """An argparse type: the text as a number for which ok() holds."""
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            value = math.nan
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = checked(int, lambda v: v > 0, "a positive integer")
count = checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = checked(float, lambda v: 0 < v < math.inf, "a number > 0")
non_negative_float = checked(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")
probability = checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
RENAMED = {"noise_size": "nz", "g_lr": "lr", "d_lr": "lr_d", "learning_rate": "lr",
           "learning_rate_d": "lr_d"}  # older checkpoints' names of options


def get_options(argv):
    """Parse argv. --resume and the MODES load the checkpoint: options the command line leaves out
    take its values, and those that shape the networks (MODEL_KEYS) must match it."""
    parser = build_parser()
    args, ckpt = parser.parse_args(argv), None
    asked = [f"--{m.replace('_', '-')}" for m in ("resume", *MODES) if getattr(args, m)]
    if len(asked) > 1:
        fail(f"{' and '.join(asked)} exclude each other")
    if args.epoch is not None and not any(getattr(args, m) for m in MODES):
        fail(f"--epoch picks the snapshot that {' or '.join(f'--{m}' for m in MODES)} draws from"
             .replace("_", "-"))
    path = os.path.join(args.output_dir, "checkpoint.pt")
    if asked:
        ckpt = load_checkpoint(path)
        saved = {RENAMED.get(k, k): v for k, v in ckpt["args"].items()}
        args = parser.parse_args(argv, argparse.Namespace(
            **{k: v for k, v in saved.items() if k not in RUN_KEYS}))
        for key in MODEL_KEYS:
            if getattr(args, key) != saved.get(key):
                fail(f"{path} was trained with --{key.replace('_', '-')} {saved.get(key)}, "
                     f"not {getattr(args, key)}")
    elif os.path.exists(path):
        fail(f"{path} exists: continue that run with --resume, or choose another --output-dir")
    return settle(args), ckpt


def load_checkpoint(path):
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path}: train first, or point --output-dir at the run")
    try:
        with warnings.catch_warnings():  # torch warns before some refusals: the error says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # never runs its code
    except Exception:
        fail(f"cannot read {path}: damaged, or not a checkpoint of these scripts (it is loaded "
             "with weights_only=True: tensors and plain data only)")
    if not isinstance(ckpt, dict) or "args" not in ckpt:
        fail(f"{path} is not a checkpoint of these scripts")
    if ckpt.get("script") != SCRIPT:
        fail(f"{path} is a checkpoint of {ckpt.get('script')}.py, not {SCRIPT}.py")
    return ckpt


def save_checkpoint(args, state):
    """state, the options and torch's generators, written to a temporary file and renamed into
    place: a crash mid-write never leaves a broken checkpoint."""
    path = os.path.join(args.output_dir, "checkpoint.pt")
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else []  # this process's GPU
    torch.save({"script": SCRIPT, "torch_version": str(torch.__version__), "args": vars(args),
                "rng": {"torch": torch.get_rng_state(), "cuda": cuda}, **state}, path + ".tmp")
    os.replace(path + ".tmp", path)


def restore(ckpt, **parts):
    """Load each module or optimizer from ckpt[name], then torch's generators (the only ones the
    scripts draw from; older checkpoints also hold Python's and NumPy's, which are ignored)."""
    for name, part in parts.items():
        part.load_state_dict(ckpt[name])
        for param, state in getattr(part, "state", {}).items():  # an optimizer: its state takes
            for key, value in state.items():  # the layout the parameter has now (channels-last)
                if value.shape == param.shape:
                    state[key] = torch.empty_like(param).copy_(value)
    torch.set_rng_state(ckpt["rng"]["torch"])
    cuda = ckpt["rng"]["cuda"]  # older checkpoints: a list, one per GPU
    if len(cuda) and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, list) else cuda)


def save_snapshot(args, epoch, **weights):
    """Every --snapshot-every epochs, G's weights (and the average's, where there is one) in
    <output-dir>/snapshots/epoch_NNN.pt: small, weights only, for --epoch K; not a resume point."""
    if not args.snapshot_every or epoch % args.snapshot_every:
        return
    folder = os.path.join(args.output_dir, "snapshots")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"epoch_{epoch:03d}.pt")
    torch.save({"script": SCRIPT, "epoch": epoch, **weights}, path + ".tmp")
    os.replace(path + ".tmp", path)


def chosen_weights(args, ckpt):
    """What the sampling modes load: the checkpoint's weights, or with --epoch K epoch K's."""
    if args.epoch is None:
        return ckpt
    folder = os.path.join(args.output_dir, "snapshots")
    path = os.path.join(folder, f"epoch_{args.epoch:03d}.pt")
    if not os.path.isfile(path):
        names = os.listdir(folder) if os.path.isdir(folder) else []
        kept = sorted(int(n[6:-3]) for n in names if n[6:-3].isdigit() and n.endswith(".pt"))
        fail(f"no snapshot of epoch {args.epoch} in {folder} (kept: "
             f"{', '.join(map(str, kept)) or 'none'}; --snapshot-every sets how often)")
    try:
        snapshot = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        fail(f"cannot read {path}: damaged, or not a snapshot of these scripts")
    if not isinstance(snapshot, dict) or snapshot.get("script") != SCRIPT:
        fail(f"{path} is not a snapshot of {SCRIPT}.py")
    return snapshot


def make_output_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        fail(f"cannot create --output-dir {path}: {e.strerror}")
    if not os.access(path, os.W_OK):
        fail(f"cannot write to --output-dir {path}")
    return path


def pick_device(name):
    ok = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    name = next(d for d in ("cuda", "mps", "cpu") if ok[d]) if name == "auto" else name
    if not ok[name]:
        fail(f"--device {name}: not available on this machine")
    return torch.device(name)


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


class Progress:
    """The log line. add() sums each step's (loss_D, loss_G, D(x), D(G(z))) on the device; line()
    reads their means (the loop's one host read: it waits for the device), stops on a NaN, prints,
    and writes a CSV row (path None: no file). Resumed, rows past `iteration` are dropped."""

    def __init__(self, path, total, iteration, elapsed, resumed, unit="img", columns=(),
                 say=print, reduce=lambda sums: sums):
        self.total, self.before, self.elapsed, self.unit = total, elapsed, elapsed, unit
        self.say = say
        self.reduce, self.sums, self.steps, self.samples, self.path = reduce, 0, 0, 0, path
        self.start = self.tick = time.perf_counter()
        if path:
            rows = []
            if resumed and os.path.exists(path):
                with open(path, newline="") as f:
                    rows = [r for r in list(csv.reader(f))[1:] if r and int(r[1]) <= iteration]
            header = ["epoch", "iteration", "loss_d", "loss_g", "d_x", "d_g_z", "samples_per_s",
                      "elapsed_s", *columns]
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows([header] + rows)

    def add(self, stats, samples):
        self.sums, self.steps = self.sums + stats, self.steps + 1
        self.samples += samples

    def line(self, epoch, iteration, where, extra=(), note=""):
        now = time.perf_counter()
        self.elapsed = self.before + now - self.start
        loss_d, loss_g, d_x, d_g_z = (self.reduce(self.sums) / self.steps).tolist()  # host read
        if not (math.isfinite(loss_d) and math.isfinite(loss_g)):
            fail(f"training diverged: loss is {loss_d} (D), {loss_g} (G) by iteration {iteration}; "
                 "the last good checkpoint is kept", 1)
        rate = self.samples / (now - self.tick)
        if self.path:  # opened per row: nothing held open, nothing half-written on a crash
            values = (loss_d, loss_g, d_x, d_g_z, rate, self.elapsed, *extra)
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow([epoch, iteration] + [f"{v:.6g}" for v in values])
        left = eta((self.total - iteration) * (now - self.tick) / self.steps)
        self.say(f"{where}  loss_D {loss_d:.3f}  loss_G {loss_g:.3f}  D(x) {d_x:.3f}  D(G(z)) "
                 f"{d_g_z:.3f}{note}  {rate:,.0f} {self.unit}/s  ETA {left}")
        self.sums, self.steps, self.samples, self.tick = 0, 0, 0, now


def eta(seconds):
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class StopOnSignal:
    """Ctrl-C or SIGTERM: `requested` is set, and the loop checkpoints after this step and calls
    exit(), status 130. A second signal stops at once, keeping the last checkpoint."""

    def __enter__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.requested:
            fail("interrupted twice: stopped without a new checkpoint (the last one is kept)", 130)
        self.requested = True
        print(f"\n{SCRIPT}: {signal.Signals(signum).name}: stopping after this step (again to stop "
              "now)", file=sys.stderr, flush=True)

    def exit(self, args, where, say=print):
        say(f"{SCRIPT}: stopped at {where}; checkpoint saved. Resume with:\n"
            f"  python {SCRIPT}.py --resume --output-dir {args.output_dir}")
        raise SystemExit(130)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def main(argv=None):
    args, ckpt = get_options(argv)
    mode = next((m for m in MODES if getattr(args, m)), None)
    (MODES[mode] if mode else train)(args, ckpt)


# ---- this script's run: the loop, its data, several processes, samples ----

# Options a resumed or sampling run may change; options that must match the checkpoint.
RUN_KEYS = ("output_dir", "device", "dry_run", "resume", "generate", "epoch", "interpolate",
            "lerp", "dataroot", "workers", "cache", "amp", "channels_last", "compile", "sync_bn",
            "classify", "labels", "draws", "visualize_d", "forget", "arithmetic")
MODEL_KEYS = ("dataset", "classes", "image_size", "nz", "ngf", "ndf")


def settle(args):
    if args.image_size not in IMAGE_SIZES:
        fail(f"--image-size {args.image_size}: must be one of {', '.join(map(str, IMAGE_SIZES))} "
             "(each (de)convolution block doubles or halves the size, from 4x4)")
    args.lr_d = args.lr_d or args.lr
    if args.dry_run:
        args.batch_size = min(args.batch_size, 8)
    return args


def no_sync(D):
    """Under DDP: gradients stay on this process until the next backward outside this context."""
    return getattr(D, "no_sync", contextlib.nullcontext)()


class Amp:
    """--amp: autocast to bfloat16; where the GPU lacks bf16, float16 with a GradScaler (fp16's
    range needs loss scaling, bf16's does not). Without --amp, plain float32."""

    def __init__(self, enabled, device):
        self.enabled, self.device_type = enabled, device.type
        fp16 = enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.dtype = torch.float16 if fp16 else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def backward(self, loss):
        self.scaler.scale(loss).backward()

    def step(self, optimizer):
        self.scaler.step(optimizer)
        self.scaler.update()


def train(args, ckpt):
    world = World(args.device)
    device = world.device
    if args.channels_last is None:
        # On the CPU NHWC is the default: oneDNN's convolutions run faster on it and the run peaks
        # lower (README.md). Elsewhere opt-in.
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
    iteration, elapsed = 0, 0.0
    if ckpt:
        restore(ckpt, G=G, D=D, opt_G=opt_G, opt_D=opt_D)
        fixed_noise, iteration, elapsed = ckpt["fixed_noise"].to(device), ckpt["iteration"], \
            ckpt["elapsed_s"]
    if world.size > 1 and args.sync_bn:
        for module in (*G.modules(), *D.modules()):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.__class__ = GlobalBatchNorm  # same parameters and buffers, global statistics
    G_step, D_step = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device.type == "cuda" else None
        G_step, D_step = DDP(G_step, device_ids=ids), DDP(D_step, device_ids=ids)
    amp = Amp(args.amp, device)
    if args.compile:
        world.say(f"{SCRIPT}: torch.compile: G and D compile during the first steps")
    if args.amp:
        scaler = " with a GradScaler" if amp.scaler.is_enabled() else ""
        world.say(f"{SCRIPT}: autocast to {amp.dtype}{scaler}")
    if args.channels_last:
        world.say(f"{SCRIPT}: channels-last memory layout")
    out, total = args.output_dir, args.epochs * iterations
    if world.rank == 0:  # process 0 alone writes
        make_output_dir(out)
        save_grid(data.real_sample(64), os.path.join(out, "real.png"))
    progress = Progress(os.path.join(out, "log.csv") if world.rank == 0 else None, total,
                        iteration, elapsed, bool(ckpt), say=world.say, reduce=world.mean)
    last = min(total, iteration + 2) if args.dry_run else total
    log_every, first, stopping = (1 if args.dry_run else args.log_every), iteration, False
    over = f" over {world.size} processes" if world.size > 1 else ""
    world.say(f"{SCRIPT}: {vars(args)}\n{SCRIPT}: {data.size} images, {iterations} iterations of "
              f"{args.batch_size} per epoch{over}; "
              f"{'resuming at' if ckpt else 'starting at'} iteration {iteration} of {total} on "
              f"{device}")
    with StopOnSignal() as stop:
        while iteration < last:
            epoch, step = divmod(iteration, iterations)
            for x in data.batches(epoch, step, args.batch_size, world):
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                # Every process draws the global batch's z from the same stream and keeps its
                # share: N processes use the z that one process would.
                z = torch.randn(args.batch_size, args.nz, device=device)[world.rank::world.size]
                progress.add(train_step(G_step, D_step, opt_G, opt_D, x, z, amp), args.batch_size)
                iteration, step = iteration + 1, step + 1
                stopping = world.agree(stop.requested)
                if iteration % log_every == 0 or iteration == last or stopping:
                    progress.line(epoch + 1, iteration, f"[epoch {epoch + 1}/{args.epochs}]"
                                  f"[iter {step}/{iterations}]")
                if iteration == last or stopping:
                    break
            if world.rank == 0:  # G(fixed z) after (the latest point of) each epoch, and the state
                save_grid(sample(G, fixed_noise), os.path.join(out, f"epoch_{epoch + 1:03d}.png"))
                save_checkpoint(args, {
                    "epoch": iteration // iterations, "iteration": iteration,
                    "elapsed_s": progress.elapsed, "G": G.state_dict(), "D": D.state_dict(),
                    "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                    "fixed_noise": fixed_noise.cpu()})
                if iteration % iterations == 0:  # a whole epoch
                    save_snapshot(args, iteration // iterations, G=G.state_dict())
            if stopping:
                stop.exit(args, f"iteration {iteration}", world.say)
    if world.rank == 0:
        save_gif(sorted(glob.glob(os.path.join(out, "epoch_*.png"))),
                 os.path.join(out, "progress.gif"))
        plot_log(os.path.join(out, "log.csv"), os.path.join(out, "loss.png"),
                 title=f"{SCRIPT} ({args.dataset})")
    rate = (iteration - first) * args.batch_size / max(progress.elapsed - elapsed, 1e-9)
    world.say(f"{SCRIPT}: done: {iteration} iterations, {progress.elapsed:.1f} s in all; this "
              f"session {iteration - first} iterations, {rate:,.1f} img/s. Outputs in {out}")


def build(args, nc, device):
    G = Generator(args.nz, args.ngf, nc, args.image_size).to(device)
    D = Discriminator(args.ndf, nc, args.image_size).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
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
    G = Generator(args.nz, args.ngf, channels_of(args.dataset), args.image_size).to(device)
    G.load_state_dict(chosen_weights(args, ckpt)["G"])
    return G, device


def generate(args, ckpt, sheet=256):
    """N images as samples/000000.png ..., their z as samples/z.pt (the z bank that --forget and
    --arithmetic number from), and index.png: the first 256 with their numbers, to pick from."""
    G, device = load_generator(args, ckpt)
    folder = os.path.join(args.output_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "[0-9]*.png")):  # an earlier, maybe larger, set
        os.remove(old)
    bank = []
    for start in range(0, args.generate, 500):
        bank.append(torch.randn(min(500, args.generate - start), args.nz, device=device))
        images = sample(G, bank[-1])
        save_images(images, folder, start)
        if start == 0:
            save_index_sheet(images[:sheet], os.path.join(args.output_dir, "index.png"))
    path = os.path.join(folder, "z.pt")
    torch.save(torch.cat(bank).cpu(), path + ".tmp")
    os.replace(path + ".tmp", path)
    print(f"{SCRIPT}: wrote {args.generate} images and their z (z.pt) to {folder}, and "
          f"index.png (the first {min(sheet, args.generate)} with their numbers)")


def save_index_sheet(images, path, nrow=16, strip=12):
    """images tiled nrow a row, each with its number under it."""
    from PIL import Image, ImageDraw
    size = images.shape[-1]
    cells = F.pad(images.float().cpu().expand(-1, 3, -1, -1), (0, 0, 0, strip), value=1.0)
    picture = Image.fromarray(to_uint8(tile(cells, nrow)[None])[0])
    draw = ImageDraw.Draw(picture)
    for i in range(len(images)):
        row, column = divmod(i, nrow)
        draw.text((column * (size + 2) + 4, row * (size + strip + 2) + size + 2), str(i),
                  fill=(0, 0, 0))
    picture.save(path)


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


# ---- sections 5 and 6: what D and G learned (modes on the checkpoint, like --interpolate) ----

def z_bank(args):
    """--generate's z, (N, nz): row i drew samples/<i>.png and number i of index.png."""
    path = os.path.join(args.output_dir, "samples", "z.pt")
    if not os.path.isfile(path):
        fail(f"no z bank at {path}: run --generate N first (it keeps the z of its N samples)")
    try:
        bank = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        bank = None
    if not (isinstance(bank, torch.Tensor) and bank.dim() == 2 and bank.shape[1] == args.nz):
        fail(f"{path} is not a z bank of this run's --nz {args.nz}: run --generate N again")
    return bank


def bank_index(text, count, where):
    if not (str(text).strip().isdigit() and int(text) < count):
        fail(f"{where}: {str(text).strip()!r} is not a sample of the z bank (0 to {count - 1}: "
             "the numbers of --generate's files and index.png)")
    return int(text)


def linear_fit(x, loss, outputs):
    """W (features + 1, outputs), the last row the bias, minimising loss(x W + b, |W|^2) by L-BFGS
    from 0. With more features than rows the fit runs on A, W = x^T A (the optimum lies in the
    rows' span, the representer theorem), through the rows' Gram matrix: the same W, cheaper."""
    kernel = x.shape[1] > len(x)
    basis = x @ x.T if kernel else x
    A = torch.zeros(basis.shape[1] + 1, outputs, requires_grad=True)
    opt = torch.optim.LBFGS([A], max_iter=500, tolerance_change=1e-7, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        scores = basis @ A[:-1]
        value = loss(scores + A[-1], (A[:-1] * scores if kernel else A[:-1].square()).sum())
        value.backward()
        return value
    opt.step(objective)
    return torch.cat([x.T @ A[:-1] if kernel else A[:-1], A[-1:]]).detach()


def svm_loss(scores, norm2, labels, C):
    """Section 5.1's L2-SVM, one-vs-rest (squared hinge, bias not penalised): 1/2 |W|^2 +
    C sum_i sum_k max(0, 1 - t_ik s_ik)^2, t_ik = 1 for i's class and -1 for the others."""
    t = F.one_hot(labels, scores.shape[1]) * 2.0 - 1
    return 0.5 * norm2 + C * F.relu(1 - t * scores).square().sum()


def logistic_loss(scores, norm2, inside):
    """Section 6.3.1's logistic regression, L2-regularised: 1/2 |w|^2 + sum_i BCE(s_i, inside_i)."""
    return 0.5 * norm2 + F.binary_cross_entropy_with_logits(scores[:, 0], inside, reduction="sum")


class GuidedLeakyReLU(torch.autograd.Function):
    """Guided backpropagation (Springenberg et al., arXiv:1412.6806v3) keeps a ReLU's gradient
    where its input and the gradient are both positive; D's units leak: max(g, 0) * slope at x."""

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return F.leaky_relu(x, slope)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0) * torch.where(ctx.saved_tensors[0] > 0, 1.0, ctx.slope), None


def d_blocks(D, x, guided=False):
    """Each of D's blocks' output after its LeakyReLU: (N, ndf, 32, 32) ... (N, 8ndf, 4, 4)."""
    outputs = []
    for layer in D.net[:-1]:
        if isinstance(layer, nn.LeakyReLU):
            slope = layer.negative_slope
            x = GuidedLeakyReLU.apply(x, slope) if guided else F.leaky_relu(x, slope)
            outputs.append(x)
        else:
            x = layer(x)
    return outputs


def two_ds(args, ckpt, nc, device):
    """D as trained, and D as this seed initialised it (build() after the seed, as in train())."""
    if args.epoch is not None:
        fail("--epoch: snapshots keep G alone; D comes from checkpoint.pt")
    D = Discriminator(args.ndf, nc, args.image_size).to(device)
    D.load_state_dict(ckpt["D"])
    torch.manual_seed(args.seed)
    return {"trained D": D, "random D": build(args, nc, device)[1]}


def real_statistics(D, batches):
    """D in eval mode on BatchNorm statistics of real images alone (a cumulative average over
    `batches`): an image's features depend on it only, normalised as D's real batches were in
    training. D's running averages mix two generated batches to each real one (train_step)."""
    for m in D.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    D.train()
    with torch.no_grad():
        for x in batches:
            D(x)
    return D.eval()


def uncached(args):
    """The options with --no-cache: the modes read some images, not worth caching a dataset for."""
    return argparse.Namespace(**{**vars(args), "cache": False})


def labelled(args):
    """(get(index) -> uint8 images, labels) of the training and the test split. folder/imagenet:
    no test split; 20% of the images (up to 10,000), drawn by the seed, are held out instead."""
    if args.dataset in ("mnist", "fashion-mnist"):
        x, y, tx, ty = (load_mnist(args, f"{s}-idx{d}-ubyte") for s, d in (
            ("train-images", 3), ("train-labels", 1), ("t10k-images", 3), ("t10k-labels", 1)))
        return x[:, None].__getitem__, y.long(), tx[:, None].__getitem__, ty.long()
    if args.dataset == "cifar10":
        (x, y), (tx, ty) = load_cifar10(args), load_cifar10(args, train=False)
        return x.__getitem__, y, tx.__getitem__, ty
    if args.dataset not in ("folder", "imagenet"):
        fail(f"--classify needs labels, and {args.dataset} has none here: use mnist, "
             "fashion-mnist, cifar10, or folder/imagenet with one sub-folder per class")
    from torch.utils.data import Subset
    data = load_data(uncached(args), None).dataset
    if len(data.classes) < 2:
        fail(f"--classify: {args.dataroot} holds one class; it needs a sub-folder per class")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))
    cut, targets = min(10_000, len(data) // 5), torch.tensor(data.targets)
    get = lambda split: lambda i: torch.cat(list(decoder(
        Subset(data, split[i].tolist()), args.workers, torch.device("cpu"), batch_size=256)))
    return get(order[cut:]), targets[order[cut:]], get(order[:cut]), targets[order[:cut]]


def classify(args, ckpt, grid=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)):
    """Sections 5.1-5.2: every D block's output max-pooled to 4x4, flattened, concatenated; a
    linear L2-SVM on --labels training images, as many per class (the paper's SVHN protocol:
    1,000), features standardised on them (std floored at 0.1 of its mean), C chosen from `grid`
    on 5,000 other training images (the paper holds out 10,000); test accuracy for --draws draws
    of the labels. Rows: trained D,
    the same D as initialised, the pixels D sees. Deviation: the paper's D learned ImageNet-1k and
    classified CIFAR-10 and SVHN; here D has seen the images (not the labels) it classifies."""
    device, (get, y, test_get, test_y) = pick_device(args.device), labelled(args)
    classes, nc = int(y.max()) + 1, channels_of(args.dataset)
    ds = two_ds(args, ckpt, nc, device)
    n, order = args.labels // classes, torch.randperm(len(y), generator=torch.Generator(
        ).manual_seed(args.seed))
    held, pool, draws = order[:min(5000, len(y) // 4)], order[min(5000, len(y) // 4):], []
    for k in range(args.draws):
        g = torch.Generator().manual_seed(args.seed * 1000 + k)
        members = [pool[y[pool] == c] for c in range(classes)]
        if n == 0 or min(map(len, members)) < n:
            fail(f"--labels {args.labels}: {n} a class for {classes} classes, and the fewest "
                 f"training images of a class (outside the held-out ones) is "
                 f"{min(map(len, members))}")
        draws.append(torch.cat([m[torch.randperm(len(m), generator=g)[:n]] for m in members]))

    def images(get, index):
        return (resize(to_model(get(i).to(device)), args.image_size) for i in index.split(256))

    def features(D, get, index):
        with torch.no_grad():
            return torch.cat([x.flatten(1).cpu() if D is None else torch.cat([
                F.adaptive_max_pool2d(b, 4).flatten(1) for b in d_blocks(D, x)], 1).cpu()
                for x in images(get, index)])
    rows = {}
    for name, D in [*ds.items(), ("pixels", None)]:
        if D is not None:
            real_statistics(D, images(get, held))
        x, held_x = features(D, get, torch.cat(draws)).split(n * classes), features(D, get, held)
        test_x, rows[name] = features(D, test_get, torch.arange(len(test_y))), {"accuracy": []}
        for part, draw in zip(x, draws):
            mean, std = part.mean(0), part.std(0)  # a floor: no near-constant feature blows up
            std = std.clamp_min(0.1 * std.mean())
            fits = [linear_fit((part - mean) / std, lambda s, n2: svm_loss(s, n2, y[draw], C),
                               classes) for C in grid]
            score = lambda W, x, t: (((x - mean) / std) @ W[:-1] + W[-1]).argmax(1).eq(t).float(
                ).mean().item()
            best = max(fits, key=lambda W: score(W, held_x, y[held]))
            rows[name]["accuracy"].append(score(best, test_x, test_y))
        accuracy = rows[name]["accuracy"]
        rows[name].update(features=x[0].shape[1], mean=sum(accuracy) / len(accuracy),
                          spread=max(accuracy) - min(accuracy))
    path = os.path.join(args.output_dir, "classify.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"dataset": args.dataset, "epoch": ckpt["epoch"], "labels": n * classes,
                   "held_out": len(held), "test_images": len(test_y), "rows": rows}, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"{SCRIPT}: test accuracy of a linear L2-SVM on {n * classes} labels ({args.draws} "
          f"draws, {len(test_y)} test images of {args.dataset}): mean (max - min) of the draws")
    for name, row in rows.items():
        print(f"  {name:9} {row['features']:6d} features  {100 * row['mean']:5.1f}% "
              f"({100 * row['spread']:.1f})")
    print(f"{SCRIPT}: wrote {path}")


def visualize_d(args, ckpt, units=8, top=8):
    """Section 6.2, Fig. 5: guided backpropagation of D's last block. A row per unit of the
    `units` that respond most (mean of their strongest position) to 1,024 real images: its `top`
    images, as the input gradients of its strongest response; trained D left, initial D right.
    The paper shows its first 6 units; ours are the strongest, so that none is dead."""
    device = pick_device(args.device)
    real = load_data(uncached(args), device).real_sample(1024).to(device)
    top, maps = min(top, len(real)), []
    for D in two_ds(args, ckpt, channels_of(args.dataset), device).values():
        real_statistics(D, real.split(128))
        with torch.no_grad():
            response = torch.cat([d_blocks(D, x)[-1].flatten(2).amax(2) for x in real.split(128)])
        for unit in response.mean(0).topk(units).indices:                # (images, 8ndf) above
            x = real[response[:, unit].topk(top).indices].clone().requires_grad_(True)
            d_blocks(D, x, guided=True)[-1][:, unit].flatten(1).amax(1).sum().backward()
            g = x.grad - x.grad.mean((1, 2, 3), keepdim=True)
            maps.append(g / (3 * g.flatten(1).std(1)[:, None, None, None] + 1e-12))
    rows = [torch.cat([maps[i], torch.ones_like(maps[i][:1]), maps[units + i]]) for i in
            range(units)]
    save_grid(torch.cat(rows), os.path.join(args.output_dir, "d_features.png"), nrow=2 * top + 1)
    print(f"{SCRIPT}: wrote d_features.png: a row per unit, its {top} strongest images; trained D "
          "left, D as initialised right")


def read_boxes(path, count, size):
    """BOXES.json: {"<z bank index>": [[x0, y0, x1, y1], ...], ...}: pixel boxes on samples."""
    import json
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        data = one_line(e)
    ok = lambda b: (isinstance(b, list) and len(b) == 4 and all(type(v) in (int, float) for v in b)
                    and 0 <= b[0] < b[2] <= size and 0 <= b[1] < b[3] <= size)
    if not (isinstance(data, dict) and data and all(isinstance(v, list) and v and all(map(ok, v))
                                                    for v in data.values())):
        fail(f"--forget {path}: {data if isinstance(data, str) else 'not'} one JSON object mapping "
             f"z-bank indices to lists of [x0, y0, x1, y1] boxes, 0 <= x0 < x1 <= {size}, "
             f"0 <= y0 < y1 <= {size}")
    return {bank_index(key, count, f"--forget {path}"): value for key, value in data.items()}


def forget(args, ckpt, n=10):
    """Section 6.3.1, Fig. 6: --forget BOXES.json marks an object on z-bank samples; a logistic
    regression on G's second-highest block (16x16 at 64x64) tells its positions inside a box from
    as many random ones outside; the maps with a positive weight are zeroed everywhere; n new z
    drawn with them and without. The block: the paper dropped 200 maps, more than its 32x32 block
    has (128), so its 16x16 one (256)."""
    G, device = load_generator(args, ckpt)
    bank = z_bank(args)
    boxes = read_boxes(args.forget, len(bank), args.image_size)
    block, seen = [m for m in G.net if isinstance(m, nn.ReLU)][-2], []  # (N, 2ngf, 16, 16)
    hook = block.register_forward_hook(lambda m, i, out: seen.append(out.float().cpu()))
    sample(G, bank[list(boxes)].to(device))
    hook.remove()
    side, C = seen[0].shape[-1], seen[0].shape[1]
    centre = (torch.arange(side) + 0.5) * args.image_size / side  # of each position, in pixels
    inside = torch.stack([sum(((centre >= y0) & (centre < y1))[:, None] & ((centre >= x0) & (
        centre < x1))[None] for x0, y0, x1, y1 in marked).bool() for marked in boxes.values()])
    positives, outside = inside.flatten().nonzero()[:, 0], (~inside).flatten().nonzero()[:, 0]
    if not len(positives) or not len(outside):
        fail(f"--forget {args.forget}: the boxes cover {'no' if not len(positives) else 'every'} "
             f"position of G's {side}x{side} block: draw boxes over an object, not the image")
    g = torch.Generator().manual_seed(args.seed)
    chosen = torch.cat([positives, outside[torch.randperm(len(outside), generator=g)[
        :len(positives)]]])
    inside = torch.cat([torch.ones(len(positives)), torch.zeros(len(chosen) - len(positives))])
    W = linear_fit(seen[0].permute(0, 2, 3, 1).reshape(-1, C)[chosen],
                   lambda s, n2: logistic_loss(s, n2, inside), 1)
    drop, z = (W[:-1, 0] > 0).nonzero()[:, 0], torch.randn(n, args.nz, generator=g).to(device)
    keep = (W[:-1, 0] <= 0).float().to(device)[None, :, None, None]
    with_them, hook = sample(G, z), block.register_forward_hook(lambda m, i, out: out * keep)
    without = sample(G, z)
    hook.remove()
    save_grid(torch.cat([with_them, without]), os.path.join(args.output_dir, "forget.png"), n)
    print(f"{SCRIPT}: dropped {len(drop)} of {C} maps of G's {side}x{side} block ({len(positives)}"
          f" positions in the boxes): {drop.tolist()}\n{SCRIPT}: wrote forget.png (with, without)")


def parse_terms(text, count):
    """"1,2,3 - 4,5,6 + 7,8,9" -> [(1, [1, 2, 3]), (-1, [4, 5, 6]), (1, [7, 8, 9])]."""
    import re
    if not re.fullmatch(r"\s*[\d\s,]+(\s*[-+][\d\s,]+)*", text):
        fail(f"--arithmetic {text!r}: expected terms of z-bank indices joined by + and -, each a "
             "comma-separated list (its z are averaged), e.g. \"3,17,40 - 5,8,21 + 9,33,61\"")
    parts = re.split(r"([-+])", "+" + text)[1:]
    terms = [(1 if sign == "+" else -1, [bank_index(i, count, "--arithmetic") for i in
                                         term.split(",")]) for sign, term in zip(parts[::2],
                                                                                 parts[1::2])]
    if len(terms) > 8 or max(len(indices) for _, indices in terms) > 8:
        fail(f"--arithmetic {text!r}: at most 8 terms of 8 indices (a figure row each)")
    return terms


def latent_sum(bank, terms):
    """y = sum over the terms of sign * the mean of their z: mean(A) - mean(B) + mean(C)."""
    return sum(sign * bank[indices].mean(0) for sign, indices in terms)


def arithmetic(args, ckpt, radius=0.25 * math.sqrt(3)):
    """Section 6.3.2, Fig. 7: y = latent_sum() of --arithmetic's terms (the paper averages 3
    exemplars per concept: one alone was unstable); G(y) and 8 neighbours y + U(-radius, radius).
    Deviation: radius 0.25 sqrt 3, the paper's 0.25 on U(-1, 1) z rescaled to our N(0, 1) z. Rows:
    each term's exemplars and, last, G(their mean z); G(y) and its neighbours; the paper's pixel
    baseline: each term's mean image and, last, the same arithmetic on those images."""
    G, device = load_generator(args, ckpt)
    bank = z_bank(args)
    terms = parse_terms(args.arithmetic, len(bank))
    y, noise = latent_sum(bank, terms), torch.rand(8, args.nz, generator=torch.Generator(
        ).manual_seed(args.seed))
    picture = [*sample(G, torch.cat([y[None], y + (2 * noise - 1) * radius]).to(device)).cpu()]
    blank, pixels = torch.ones_like(picture[0]), []
    for _, indices in terms:
        exemplars = sample(G, bank[indices].to(device)).cpu()
        mean_z = sample(G, bank[indices].mean(0, keepdim=True).to(device)).cpu()[0]
        picture[-9:-9] = [*exemplars, *[blank] * (8 - len(indices)), mean_z]
        pixels.append(exemplars.mean(0))
    result = sum(sign * image for (sign, _), image in zip(terms, pixels)).clamp(-1, 1)
    picture += [*pixels, *[blank] * (8 - len(pixels)), result]
    save_grid(torch.stack(picture), os.path.join(args.output_dir, "arithmetic.png"), nrow=9)
    print(f"{SCRIPT}: wrote arithmetic.png: a row per term (exemplars, G(mean z)); G(y) and 8 "
          "neighbours; pixels (each term's mean image, their arithmetic)")


class World:
    """This process's place among those torchrun started (one process alone without torchrun)."""

    def __init__(self, device_name):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device(device_name)
        if self.size > 1:
            if self.device.type == "cuda":  # one GPU per process
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            atexit.register(dist.destroy_process_group)
            self.flags = dist.new_group(backend="gloo")  # a CPU group for the per-step stop flag

    def say(self, text):
        if self.rank == 0:
            print(text, flush=True)

    def agree(self, requested):
        """Stop together: true on every process once one of them was asked to stop."""
        if self.size == 1:
            return requested
        flag = torch.tensor([int(requested)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.flags)
        return bool(flag)

    def mean(self, tensor):
        if self.size > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            tensor /= self.size
        return tensor


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (1d or 2d) whose training statistics are the global batch's: each process's sums
    are all-reduced, differentiably, so that N processes normalise as one process would. (PyTorch's
    SyncBatchNorm does this on GPUs only; this runs on every backend, gloo included.)"""

    def _check_input_dim(self, x):
        pass

    def forward(self, x):
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # sums; backward sums gradients
        dims, shape = [0, *range(2, x.dim())], [1, -1, *[1] * (x.dim() - 2)]
        n = x.numel() // x.shape[1] * dist.get_world_size()  # equal shares: global batch // N
        xf = x.float()
        mean = all_reduce(xf.sum(dims)) / n
        var = all_reduce((xf - mean.view(shape)).square().sum(dims)) / n  # biased, as BatchNorm
        with torch.no_grad():  # running statistics: unbiased variance, as BatchNorm keeps
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / max(n - 1, 1), self.momentum)
            self.num_batches_tracked += 1
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return (y * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


# ---- data ----

def channels_of(dataset):
    return 1 if dataset in ("mnist", "fashion-mnist") else 3


class Data:
    """The training images, handed out as batches in [-1, 1] on the device, in an order that is a
    function of (seed, epoch) alone, so that a resumed run continues exactly where it stopped.
    Under torchrun each process takes every world.size-th image of each global batch, so the same
    global batches are seen whatever the number of processes."""

    def __init__(self, args, device, size, channels, images=None, dataset=None):
        self.args, self.device, self.size, self.channels = args, device, size, channels
        self.images, self.dataset = images, dataset   # a uint8 tensor on the device, or a Dataset

    def batches(self, epoch, step, batch_size, world):
        iterations, size = self.size // batch_size, self.args.image_size
        if self.args.dataset == "fake":  # random uint8 images made where they are used
            shape = (batch_size, self.channels, size, size)  # the global batch, as z
            for _ in range(step, iterations):
                images = torch.randint(0, 256, shape, dtype=torch.uint8, device=self.device)
                yield to_model(images[world.rank::world.size])
            return
        g = torch.Generator().manual_seed(self.args.seed * 100003 + epoch)
        order = torch.randperm(self.size, generator=g)
        take = [order[i * batch_size:(i + 1) * batch_size][world.rank::world.size]
                for i in range(step, iterations)]
        if self.images is not None:  # on the device, or a memory-mapped cache on the CPU
            for index in take:
                images = self.images[index.to(self.images.device)]
                if images.device != self.device:
                    images = images.pin_memory() if self.device.type == "cuda" else images
                yield resize(to_model(images.to(self.device, non_blocking=True)), size)
            return
        # --no-cache: workers for this epoch. Persistent ones measured no faster (README.md) and
        # would hang the exit: workers ignore SIGTERM, multiprocessing stops them with it at exit.
        loader = decoder(self.dataset, self.args.workers, self.device,
                         batch_sampler=[t.tolist() for t in take])
        for batch in loader:
            yield to_model(batch.to(self.device, non_blocking=True))

    def real_sample(self, n):
        if self.args.dataset == "fake":
            size, g = self.args.image_size, torch.Generator().manual_seed(0)
            return to_model(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                                          generator=g))
        if self.images is not None:
            return resize(to_model(self.images[:n]), self.args.image_size)
        return to_model(torch.stack([self.dataset[i][0] for i in range(min(n, self.size))]))


def resize(images, size):
    """In-memory datasets come at their size (28 or 32): resized on the device, per batch."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def to_model(images):
    """uint8 images (N, C, H, W) in 0..255 -> floats in [-1, 1]: what G makes and D sees."""
    return images.float().div(127.5).sub(1)


def stack_images(items):
    return torch.stack([image for image, _ in items])


def decoder(dataset, workers, device, **batching):
    """A DataLoader of uint8 image batches, decoded by `workers` processes."""
    from torch.utils.data import DataLoader
    if workers and hasattr(dataset, "close"):
        dataset.close()  # LSUN: the main process's lmdb environments
    return DataLoader(dataset, num_workers=workers, pin_memory=device.type == "cuda",
                      worker_init_fn=ignore_signals, collate_fn=stack_images,
                      generator=torch.Generator(), **batching)  # not training's random stream


def ignore_signals(worker_id):
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def load_data(args, device):
    if args.dataset == "fake":
        return Data(args, device, FAKE_EPOCH, 3)
    if args.dataset in ("mnist", "fashion-mnist"):
        images = load_mnist(args)[:, None]                                 # (N, 1, 28, 28) uint8
        return Data(args, device, len(images), 1, images=images.to(device))
    if args.dataset == "cifar10":
        images = load_cifar10(args)[0]                                        # (N, 3, 32, 32)
        return Data(args, device, len(images), 3, images=images.to(device))
    from torchvision import datasets, transforms
    size = args.image_size
    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                    transforms.PILToTensor()])
    if args.dataset == "lsun":
        # Deviation: no de-duplication (the paper's section 4.1.1 removes near-duplicates).
        classes = [c if c.endswith(("_train", "_val")) else c + "_train"
                   for c in args.classes.split(",") if c]
        missing = [c for c in classes
                   if not os.path.isdir(os.path.join(args.dataroot, c + "_lmdb"))]
        if not classes or missing:
            fail(f"LSUN: no {', '.join(c + '_lmdb' for c in missing or ['<class>_train'])} in "
                 f"--dataroot {args.dataroot}; download with the LSUN project's download.py "
                 "(github.com/fyu/lsun: python download.py -c bedroom), unzip into --dataroot so "
                 "that it holds bedroom_train_lmdb/{data.mdb,lock.mdb}, and pass --classes bedroom")
        try:
            dataset = LsunLmdb([os.path.join(args.dataroot, c + "_lmdb") for c in classes],
                               transform, args.output_dir)
        except Exception as e:
            fail(f"cannot read LSUN {','.join(classes)} in {args.dataroot} ({one_line(e)})")
    else:
        layout = {"celeba": "<dataroot>/img_align_celeba/*.jpg (CelebA's aligned images)",
                  "lfw": "<dataroot>/<person>/*.jpg (the lfw folder of the LFW archive)",
                  "imagenet": "<dataroot>/<class>/*.JPEG (e.g. ILSVRC's train folder)",
                  "folder": "<dataroot>/<any sub-folder>/<images>"}[args.dataset]
        try:
            dataset = datasets.ImageFolder(args.dataroot, transform=transform)
        except Exception as e:
            fail(f"{args.dataset}: no images in --dataroot {args.dataroot} ({one_line(e)}); "
                 f"expected {layout}")
    if len(dataset) == 0:
        fail(f"{args.dataset}: no images in --dataroot {args.dataroot}")
    if not args.cache or args.dry_run:
        return Data(args, device, len(dataset), 3, dataset=dataset)
    images = cached_images(args, dataset)                                 # (N, 3, size, size)
    return Data(args, device, len(images), 3, images=images)


def cached_images(args, dataset):
    """Folder datasets and LSUN decoded once, at the training size, into one uint8 file
    (N, 3, size, size) that later epochs and runs memory-map instead of decoding JPEGs again. Its
    name hashes what its pixels depend on (the files' names, sizes and times, or LSUN's databases
    and keys; the size; the crop), so a cache of other images or another size is never used. It is
    written under a temporary name and renamed when complete; beside the data, else in --output-dir.
    Under torchrun, the first process of each machine writes it and the others wait for it."""
    import hashlib
    import json
    import shutil
    import numpy as np
    size = args.image_size
    if isinstance(dataset, LsunLmdb):
        listing = [(path, len(keys), keys[0].decode(), keys[-1].decode())
                   for path, keys in zip(dataset.paths, dataset.keys)]
    else:
        listing = []
        for path, _ in dataset.samples:
            info = os.stat(path)
            listing.append((os.path.relpath(path, args.dataroot), info.st_size, info.st_mtime_ns))
    recipe = json.dumps([1, "resize, center crop, PIL", size, listing]).encode()
    name = f"images_{size}px_{hashlib.sha256(recipe).hexdigest()[:16]}.u8"
    shape, need = (len(dataset), 3, size, size), len(dataset) * 3 * size * size
    folders = [args.dataroot, args.output_dir]

    def existing():
        for path in [os.path.join(folder, name) for folder in folders]:
            if os.path.exists(path):
                if os.path.getsize(path) != need:
                    fail(f"the image cache {path} has {os.path.getsize(path)} bytes, not "
                         f"{need}: damaged; delete it (it is made again) or pass --no-cache")
                mapped = torch.from_file(path, shared=False, size=need, dtype=torch.uint8)
                return mapped.view(shape)

    images = existing()
    while images is None and int(os.environ.get("LOCAL_RANK", "0")) != 0:
        time.sleep(1)  # another process of this machine writes it
        images = existing()
    if images is not None:
        return images
    for folder in folders:
        there = folder if os.path.isdir(folder) else os.path.dirname(os.path.abspath(folder))
        try:
            free = shutil.disk_usage(there).free
        except OSError:
            continue
        if os.access(there, os.W_OK) and free >= need + 2**28:
            break
    else:
        fail(f"the image cache needs {need / 1e9:.2f} GB ({len(dataset)} images at {size}x{size}) "
             f"and neither {' nor '.join(folders)} has that much free (and 256 MB to spare): "
             "free some space, or pass --no-cache to decode the images every epoch")
    path, start = os.path.join(folder, name), time.time()
    print(f"{SCRIPT}: decoding {len(dataset)} images once into {path} ({need / 1e9:.2f} GB)",
          flush=True)
    loader = decoder(dataset, args.workers, torch.device("cpu"), batch_size=256)
    try:
        os.makedirs(folder, exist_ok=True)
        cache, done = np.memmap(path + ".tmp", np.uint8, "w+", shape=shape), 0
        for batch in loader:
            cache[done:done + len(batch)] = batch.numpy()
            done += len(batch)
            if done // 256 % 40 == 0 or done == len(dataset):
                print(f"{SCRIPT}: cached {done}/{len(dataset)} images "
                      f"({done / (time.time() - start):.0f} img/s)", flush=True)
        cache.flush()
        del cache
        os.replace(path + ".tmp", path)
    except OSError as e:
        fail(f"cannot write the image cache {path} ({one_line(e)}); pass --no-cache to decode the "
             "images every epoch")
    finally:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
    return existing()


class LsunLmdb:
    """LSUN's lmdb databases, read directly (not torchvision's LSUN, which lists every key on each
    start and caches the list as a pickle named _cache_* in the current directory, unpickling
    whatever file has that name: code planted there would run). Keys are listed once per database
    and kept as plain text, <db>_keys.txt beside it (or under --output-dir when that folder is
    read-only), checked against the database before use. Each worker opens its own lmdb
    environment, so the dataset pickles to spawned workers (macOS, Windows)."""

    def __init__(self, paths, transform, output_dir):
        import numpy as np
        self.paths, self.transform, self.envs = paths, transform, {}
        self.keys = [np.array(self.list_keys(path, output_dir), dtype=bytes) for path in paths]
        self.ends = np.cumsum([len(k) for k in self.keys])
        self.close()

    def list_keys(self, path, output_dir):
        entries = self.env(path).stat()["entries"]
        name = os.path.basename(os.path.normpath(path)) + "_keys.txt"
        kept = [path.rstrip(os.sep) + "_keys.txt", os.path.join(output_dir, name)]
        for file in kept:
            if os.path.isfile(file):
                with open(file, "rb") as f:
                    keys = f.read().split()
                with self.env(path).begin() as txn:  # a stale, cut or damaged list: again
                    if len(keys) == entries and all(txn.get(k) for k in keys[:1] + keys[-1:]):
                        return keys
        with self.env(path).begin() as txn:
            keys = [key for key, _ in txn.cursor()]  # bedroom's 3 million: minutes, once
        for file in kept:
            try:
                os.makedirs(os.path.dirname(file) or ".", exist_ok=True)
                with open(file + ".tmp", "wb") as f:
                    f.write(b"\n".join(keys) + b"\n")
                os.replace(file + ".tmp", file)
                break
            except OSError:
                continue
        return keys

    def env(self, path):
        """This process's read-only environment for path, opened on first use: never pickled,
        and closed before workers fork (lmdb forbids a second open of a path in one process)."""
        if (os.getpid(), path) not in self.envs:
            import lmdb
            self.envs[os.getpid(), path] = lmdb.open(path, readonly=True, lock=False,
                                                     readahead=False, meminit=False)
        return self.envs[os.getpid(), path]

    def close(self):
        """Before workers fork: lmdb refuses to open a path that the parent process holds open."""
        for key in [key for key in self.envs if key[0] == os.getpid()]:
            self.envs.pop(key).close()

    def __getstate__(self):
        return dict(self.__dict__, envs={})

    def __len__(self):
        return int(self.ends[-1])

    def __getitem__(self, index):
        import io
        from PIL import Image
        db = int((self.ends <= index).sum())
        key = self.keys[db][index - (self.ends[db - 1] if db else 0)]
        with self.env(self.paths[db]).begin() as txn:
            image = Image.open(io.BytesIO(txn.get(key))).convert("RGB")
        return self.transform(image), 0


def load_mnist(args, name="train-images-idx3-ubyte"):
    """An idx file of <dataroot>/<MNIST|FashionMNIST>/raw (or its .gz) as a uint8 tensor: images
    (N, 28, 28), labels (N,); torchvision downloads the four files there when one is missing."""
    folder = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[args.dataset]
    path = os.path.join(args.dataroot, folder, "raw", name)
    try:
        if not (os.path.isfile(path) or os.path.isfile(path + ".gz")):
            from torchvision import datasets
            getattr(datasets, folder)(args.dataroot, train=True, download=True)
        with open(path, "rb") if os.path.isfile(path) else gzip.open(path + ".gz") as f:
            data = f.read()
        ndim = data[3]  # idx: bytes 0, 0, 8 (uint8), the number of dimensions, then each size
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        assert data[:3] == b"\0\0\x08" and len(data) == 4 + 4 * ndim + math.prod(shape), \
            "not an idx file of uint8"
        return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).view(shape)
    except Exception as e:
        fail(f"cannot load {args.dataset} from {os.path.dirname(path)} ({one_line(e)}); put "
             f"{name}[.gz] there, or let torchvision download it")


def load_cifar10(args, train=True):
    """CIFAR-10's python version in <dataroot>/cifar-10-batches-py (downloaded when missing):
    images (N, 3, 32, 32) uint8 and labels (N,)."""
    from torchvision.datasets import CIFAR10
    try:
        data = CIFAR10(args.dataroot, train=train, download=not os.path.isdir(
            os.path.join(args.dataroot, "cifar-10-batches-py")))
    except Exception as e:
        fail(f"cannot load cifar10 from {args.dataroot}/cifar-10-batches-py ({one_line(e)}); "
             "put the python version of CIFAR-10 there, or let torchvision download it")
    return torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(data.targets)


def one_line(e):
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


MODES = {"generate": generate, "interpolate": interpolate, "classify": classify,  # run instead
         "visualize_d": visualize_d, "forget": forget, "arithmetic": arithmetic}  # of train()

if __name__ == "__main__":
    main()
