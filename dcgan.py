#!/usr/bin/env python3
"""DCGAN: deep convolutional G and D, trained as in Radford et al.

Paper: Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", arXiv:1511.06434v2 (2016). Implemented: section 3's networks
(strided convolutions in D, fractionally-strided ones in G, no pooling and no hidden fully
connected layer, BatchNorm except at G's output and D's input, ReLU and a Tanh output in G,
LeakyReLU(0.2) in D); section 4's training (weights from N(0, 0.02), Adam at 2e-4 with beta1 0.5,
batch 128, images in [-1, 1]) on the losses of Goodfellow et al. 2014 (D on logits, the
non-saturating G); section 6.1's latent walk. Sections 5 and 6.2-6.3 read this script's runs in
dcgan_analysis.py. Torch code's layers: z -> 4x4 x 8ngf -> 8x8 x 4ngf -> 16x16 x 2ngf -> 32x32 x
ngf -> 64x64 x nc, 4x4 kernels; other --image-size values add or remove a block per factor 2.

Deviations (each also stated where it happens):
  - z ~ N(0, I) and BatchNorm scales from N(1, 0.02), as in the Torch code (Theano code: U(-1, 1));
  - 8ngf = 512 channels at 4x4, as in the Torch code; the paper's Fig. 1 draws 1,024;
  - samples are drawn with BatchNorm in eval mode (running statistics): see sample();
  - the latent walk follows great circles (slerp), not the paper's straight lines (--lerp);
  - LSUN is not de-duplicated (the paper's section 4.1.1 removes near-duplicate images);
  - a run that D wins outright stops at iteration 200 (README, "Runs that end in noise");
    --label-smoothing 0.1 (Salimans et al. 2016) avoided it in our runs but scored no better.
Data: the mnists and cifar10 live on the device; folder datasets and lsun are decoded once into a
uint8 file at the training size (--no-cache: every epoch); --dataset fake: random images.

Run:     python dcgan.py --dataset celeba --dataroot DIR --epochs 25  # DIR/<folder>/*.jpg; or lsun
Smoke:   python dcgan.py --dataset fake --dry-run --output-dir /tmp/dcgan-smoke
Sample:  python dcgan.py --generate 10000 --output-dir OUT   # OUT/samples/*.png and their z
Walk:    python dcgan.py --interpolate --output-dir OUT      # section 6.1
Several processes (one per GPU): torchrun --nproc_per_node 4 dcgan.py --dataset lsun ...
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

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from utils import plot_log, save_gif, save_grid, save_images, ticking, tile, to_uint8

SCRIPT = "dcgan"
DATASETS = ["cifar10", "lsun", "mnist", "fashion-mnist", "celeba", "folder", "imagenet", "lfw",
            "fake"]
IMAGE_SIZES = [32, 64, 128, 256]
FAKE_EPOCH = 10_000  # images per "epoch" of --dataset fake


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
    g = p.add_argument_group("model")
    g.add_argument("--image-size", type=int, choices=IMAGE_SIZES, default=64, help="(paper: 64)")
    g.add_argument("--nz", type=number(int, 1), default=100, help="size of z (paper: 100)")
    g.add_argument("--ngf", type=number(int, 1), default=64, help="G's channels in its last block")
    g.add_argument("--ndf", type=number(int, 1), default=64, help="D's channels in its first block")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=number(int, 1), default=5, help="passes over the training set")
    g.add_argument("--batch-size", type=number(int, 1), default=128,
                   help="images per step, over all processes (paper: 128)")
    g.add_argument("--lr", type=number(float, 0), default=2e-4, help="Adam's rate (paper: 2e-4)")
    g.add_argument("--lr-d", type=number(float, 0), help="D's rate where it differs from --lr")
    g.add_argument("--beta1", type=number(float, 0, 1), default=0.5, help="Adam's (paper: 0.5)")
    g.add_argument("--beta2", type=number(float, 0, 1), default=0.999, help="Adam's beta2")
    g.add_argument("--label-smoothing", type=number(float, 0, 1), default=0.0, metavar="S",
                   help="D's target for real images is 1 - S (Salimans et al. 2016; a deviation: "
                   "0 is the paper's recipe)")
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
                   help="write N images to <output-dir>/samples/, and their z (z.pt)")
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

def train_step(G, D, opt_G, opt_D, x, z, amp=False, smoothing=0.0):
    """One D-step, then one G-step (Algorithm 1 of Goodfellow et al. with k = 1). x: real images,
    z: noise for as many; amp: bfloat16 autocast; smoothing: see (1). Returns (loss_D, loss_G,
    D(x), D(G(z))) on the device: no host reads."""
    # (1) D: the real and the generated batch in separate passes, so that each BatchNorm normalises
    # a pure batch, as in the authors' code; like theirs, each is backpropagated before the next
    # forward, so one graph of D is held at a time. Under DDP, D's gradients are summed locally
    # and reduced once, after the second backward.
    opt_D.zero_grad(set_to_none=True)
    with no_sync(D):
        with autocast(x, amp):
            real_logits = D(x).float()
            # --label-smoothing, a deviation (0 by default): one-sided label smoothing (Salimans
            # et al. 2016, arXiv:1606.03498v1, section 3.4), real target 1 - smoothing
            loss_real = d_loss(real_logits, 1.0 - smoothing)
        loss_real.backward()
    with autocast(x, amp):
        fake = G(z)
        fake_logits = D(fake.detach()).float()
        loss_fake = d_loss(fake_logits, 0.0)
    loss_fake.backward()
    opt_D.step()
    # (2) G: through the updated D, whose weights need no gradients here. D is in training mode in
    # all three passes, so each updates its BatchNorm running statistics: they average two generated
    # batches to one real one. Nothing here runs D in eval mode; anything that did would normalise
    # with that mix.
    with frozen(D) as D_local, autocast(x, amp):
        loss_g = g_loss(D_local(fake).float())
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_G.step()
    d_x, d_g_z = torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()
    return torch.stack([loss_real + loss_fake, loss_g, d_x, d_g_z]).detach()


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
    image depends on its own z alone, and the statistics stay untouched. Deviation: the authors'
    code samples in training mode (batch statistics), which ties each image to its batch."""
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
MODEL_KEYS = ("dataset", "classes", "image_size", "nz", "ngf", "ndf")


def settle(args):
    args.lr_d = args.lr_d or args.lr
    if args.dry_run:
        args.batch_size = min(args.batch_size, 8)
    return args


def no_sync(D):
    """Under DDP: gradients stay on this process until the next backward outside this context."""
    return getattr(D, "no_sync", contextlib.nullcontext)()


def train(args, ckpt):
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
    iteration, elapsed = 0, 0.0
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
                stats = train_step(G_step, D_step, opt_G, opt_D, x, z, args.amp,
                                   args.label_smoothing)
                progress.add(stats, args.batch_size)
                iteration, step = iteration + 1, step + 1
                stopping, saving = world.agree(
                    stop.requested, time.monotonic() - saved_at > 60 * args.checkpoint_every)
                if iteration % log_every == 0 or iteration == last or stopping or saving:
                    progress.line(epoch + 1, iteration, f"[epoch {epoch + 1}/{args.epochs}]"
                                  f"[iter {step}/{iterations}]")
                if first <= 150 < iteration <= 200:  # a run that ends in noise: see noise_check
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


def noise_check(d_g_z):
    """Stops a run whose D(G(z)), averaged over iterations 151-200, is below 0.01: in the runs we
    measured (README, "Runs that end in noise"), each that showed it ended in noise."""
    if d_g_z < 0.01:
        fail(f"D(G(z)) averaged {d_g_z:.4f} over iterations 151-200: D has won, and runs that do "
             "this end in noise. Stopped; try another --seed, or --label-smoothing 0.1", 1)


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
    G.load_state_dict((snapshot(args, args.epoch) if args.epoch else ckpt)["G"])
    return G, device


def generate(args, ckpt):
    """N images as samples/000000.png ..., and their z as samples/z.pt: the z bank from which
    dcgan_analysis.py takes exemplars (row i drew image i)."""
    G, device = load_generator(args, ckpt)
    folder = os.path.join(args.output_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "[0-9]*.png")):  # an earlier, maybe larger, set
        os.remove(old)
    bank = []
    for start in range(0, args.generate, 500):
        bank.append(torch.randn(min(500, args.generate - start), args.nz, device=device))
        save_images(sample(G, bank[-1]), folder, start)
    save({"z": torch.cat(bank).cpu()}, os.path.join(folder, "z.pt"))
    print(f"{SCRIPT}: wrote {args.generate} images and their z (z.pt) to {folder}")


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


MODES = {"generate": generate, "interpolate": interpolate}  # run instead of train() when asked

if __name__ == "__main__":
    main()
