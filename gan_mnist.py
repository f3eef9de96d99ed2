#!/usr/bin/env python3
"""The original GAN on MNIST: multilayer perceptrons for G and D, dropout in D.

Paper: Goodfellow et al., "Generative Adversarial Networks", arXiv:1406.2661v1 (2014). D ascends
Eq. 1, log D(x) + log(1 - D(G(z))); G ascends log D(G(z)), the non-saturating form of section 3
(--g-loss minimax descends Eq. 1 itself); k D-steps per G-step as in Algorithm 1 (--d-steps; k = 1
as in the paper's experiments). The networks are those of the well-known PyTorch MLP tutorial:
G: z (100) -> 256 -> 512 -> 1024 -> 784, D: 784 -> 1024 -> 512 -> 256 -> 1 logit, LeakyReLU(0.2).
The paper's G mixed rectifiers and sigmoids and its D used maxout units.

Deviations from the tutorial (each also stated where it happens; README.md has the measurements):
  - batch 128, not 64;
  - Adam at 1e-3 for G and 4e-4 for D with beta1 0, not 2e-4 for both with beta1 0.5, made safe by
    an R1 penalty on D (Mescheder et al. 2018, arXiv:1801.04406v4; gamma 10, lazily every 4th
    D-step; --r1 0 turns it off);
  - dropout 0.1 on D's hidden units, not the tutorial's nn.Dropout() (p 0.5) built inside forward,
    where it stays on when sampling; ours is a registered module, off in eval mode. (The authors'
    mnist.yaml drops 0.2 of D's input and 0.5 of its hidden units, on maxout layers.)
  - BatchNorm after G's hidden layers;
  - pictures and --generate use a moving average of G's weights (--ema; --ema 0: G itself),
    with BatchNorm statistics recomputed for the averaged weights.
None of these changes the game of Eq. 1 or Algorithm 1: they are how fast and smoothly it is played.
MNIST is read once into one uint8 tensor on the device; batches are taken by indexing it.

Run:     python gan_mnist.py --dataroot DIR            # 10 epochs; downloads MNIST into DIR
         python gan_mnist.py --dataset fashion-mnist --dataroot DIR
Smoke:   python gan_mnist.py --dry-run --dataroot DIR --output-dir /tmp/mnist-smoke
Sample:  python gan_mnist.py --generate 10000          # -> output/gan_mnist/samples/
"""
import argparse
import contextlib
import copy
import csv
import glob
import gzip
import math
import os
import signal
import struct
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import plot_log, save_gif, save_grid, save_images

SCRIPT = "gan_mnist"


def build_parser():
    p = Parser("Goodfellow et al. 2014: an MLP GAN on MNIST.")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    g.add_argument("--dataroot", default="./data", help="holds MNIST/raw or FashionMNIST/raw; "
                   "torchvision downloads there when the files are missing")
    g = p.add_argument_group("model")
    g.add_argument("--nz", "--noise-size", type=positive_int, default=100, help="size of z")
    g.add_argument("--dropout", type=probability, default=0.1,
                   help="on D's hidden units (tutorial: 0.5)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=10, help="passes over the training set")
    g.add_argument("--batch-size", type=positive_int, default=128, help="per D-step (tutorial: 64)")
    g.add_argument("--lr", "--learning-rate", "-lr", type=positive_float, default=1e-3,
                   help="G's Adam rate, and D's unless --lr-d (tutorial: 2e-4)")
    g.add_argument("--lr-d", "--learning-rate-d", type=positive_float, default=4e-4,
                   help="D's Adam rate (tutorial: 2e-4)")
    g.add_argument("--beta1", type=probability, default=0.0, help="Adam's beta1 (tutorial: 0.5)")
    g.add_argument("--beta2", type=probability, default=0.999, help="Adam's beta2")
    g.add_argument("--d-steps", type=positive_int, default=1, help="D-steps per G-step: k")
    g.add_argument("--g-loss", choices=["non-saturating", "minimax"], default="non-saturating",
                   help="G ascends log D(G(z)) (section 3) or descends log(1 - D(G(z))) (Eq. 1)")
    g.add_argument("--r1", type=non_negative_float, default=10.0, help="R1 weight (0: off)")
    g.add_argument("--r1-every", type=positive_int, default=4, help="R1 every N D-steps, times N")
    g.add_argument("--ema", type=probability, default=0.999,
                   help="decay of the average of G's weights for pictures and samples (0: off)")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default=os.path.join("output", SCRIPT))
    g.add_argument("--log-file", default="log.csv", help="the CSV log's name in --output-dir")
    g.add_argument("--seed", type=int, default=1, help="seeds torch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto: cuda, then mps, then cpu (the tutorial's --use-cuda)")
    g.add_argument("--log-every", type=positive_int, default=100, help="iterations a log line")
    g.add_argument("--dry-run", action="store_true", help="2 iterations of 8, every output")
    g.add_argument("--resume", action="store_true", help="continue <output-dir>/checkpoint.pt")
    g.add_argument("--snapshot-every", type=count, default=1, metavar="K",
                   help="keep G's weights every K epochs in <output-dir>/snapshots/ (0: never)")
    g.add_argument("--epoch", type=positive_int, metavar="K",
                   help="--generate: from the snapshot of epoch K, not the checkpoint")
    g.add_argument("--generate", type=positive_int, metavar="N",
                   help="write N images from the checkpoint to <output-dir>/samples/")
    return p


# ---- the models ----

class Generator(nn.Module):
    def __init__(self, nz=100, image_size=28):
        super().__init__()
        self.image_size = image_size
        # Deviation: BatchNorm after each hidden layer (as DCGAN puts in G); measured in README.md.
        self.net = nn.Sequential(
            nn.Linear(nz, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.2),         # (N, 256)
            nn.Linear(256, 512), nn.BatchNorm1d(512), nn.LeakyReLU(0.2),        # (N, 512)
            nn.Linear(512, 1024), nn.BatchNorm1d(1024), nn.LeakyReLU(0.2),      # (N, 1024)
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


def update_average(G_ema, G, decay):
    """Deviation: pictures and samples come from an exponential moving average of G's weights
    (Yazici et al. 2019, arXiv:1806.04498v2), which smooths the MLP's step-to-step jitter. The
    caller ramps the decay as (1 + t) / (30 + t) up to --ema: it reaches 0.999 only after 28,970
    steps, so a 10-epoch run (4,680 steps at batch 128) ends at 0.9938 whatever --ema >= that."""
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


# ---- this script's run: the loop, its data, samples ----

# Options a resumed or sampling run may change; options that must match the checkpoint.
RUN_KEYS = ("output_dir", "device", "dry_run", "resume", "generate", "epoch", "dataroot",
            "log_file")
MODEL_KEYS = ("dataset", "nz")


def settle(args):
    if args.dry_run:
        args.batch_size = min(args.batch_size, 8)
    return args


def train(args, ckpt):
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    images = load_images(args, device)  # (N, 28, 28) uint8, on the device
    per_iteration = args.batch_size * args.d_steps
    iterations = len(images) // per_iteration  # per epoch; the last partial batch is dropped
    if iterations == 0:
        fail(f"{len(images)} training images are fewer than --batch-size x --d-steps = "
             f"{per_iteration}")
    G, D = Generator(args.nz).to(device), Discriminator(dropout=args.dropout).to(device)
    fused = device.type in ("cpu", "cuda")  # one kernel for all of a net's parameters
    betas = (args.beta1, args.beta2)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=betas, fused=fused)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, fused=fused)
    G_ema = copy.deepcopy(G).requires_grad_(False) if args.ema > 0 else G  # what pictures show
    fixed_noise = torch.randn(64, args.nz, device=device)  # the per-epoch grids use these z
    iteration, elapsed = 0, 0.0
    if ckpt:
        # With --ema 0 the average is G itself: it must not receive the checkpoint's average.
        restore(ckpt, G=G, D=D, opt_G=opt_G, opt_D=opt_D, **({"G_ema": G_ema} if args.ema else {}))
        fixed_noise, iteration, elapsed = ckpt["fixed_noise"].to(device), ckpt["iteration"], \
            ckpt["elapsed_s"]
    out = make_output_dir(args.output_dir)
    total = args.epochs * iterations
    progress = Progress(os.path.join(out, args.log_file), total, iteration, elapsed, bool(ckpt))
    save_grid(to_model(images[:64]), os.path.join(out, "real.png"))
    last = min(total, iteration + 2) if args.dry_run else total
    log_every = 1 if args.dry_run else args.log_every
    print(f"{SCRIPT}: {vars(args)}\n{SCRIPT}: {len(images)} images, {iterations} iterations per "
          f"epoch; {'resuming at' if ckpt else 'starting at'} iteration {iteration} of {total} on "
          f"{device}", flush=True)
    with StopOnSignal() as stop:
        while iteration < last:
            epoch, step = divmod(iteration, iterations)
            order = epoch_order(len(images), args.seed, epoch, device)  # the same after a resume
            for step in range(step, iterations):
                take = order[step * per_iteration:(step + 1) * per_iteration].view(args.d_steps, -1)
                batches = [(to_model(images[i]), torch.randn(len(i), args.nz, device=device))
                           for i in take]
                progress.add(train_step(G, D, opt_G, opt_D, batches, iteration * args.d_steps,
                                        args.r1, args.r1_every, args.g_loss), per_iteration)
                if args.ema > 0:
                    update_average(G_ema, G, min(args.ema, (1 + iteration) / (30 + iteration)))
                iteration += 1
                if iteration % log_every == 0 or iteration == last or stop.requested:
                    progress.line(epoch + 1, iteration, f"[epoch {epoch + 1}/{args.epochs}]"
                                  f"[iter {step + 1}/{iterations}]")
                if iteration == last or stop.requested:
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
                save_snapshot(args, iteration // iterations, G=G.state_dict(),
                              G_ema=G_ema.state_dict())
            if stop.requested:
                stop.exit(args, f"iteration {iteration}")
    save_gif(sorted(glob.glob(os.path.join(out, "epoch_*.png"))), os.path.join(out, "progress.gif"))
    plot_log(os.path.join(out, args.log_file), os.path.join(out, "loss.png"),
             title=f"{SCRIPT} ({args.dataset})")
    print(f"{SCRIPT}: done: {iteration} iterations, {progress.elapsed:.1f} s. Outputs in {out}")


def to_model(images):
    """uint8 images (N, 28, 28) -> floats in [-1, 1], (N, 1, 28, 28): what G makes and D sees."""
    return images.unsqueeze(1).float().div(127.5).sub(1)


def epoch_order(n, seed, epoch, device):
    """A permutation of the n images, a function of (seed, epoch) alone: resumed runs see it."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def load_images(args, device):
    """The training images as one uint8 tensor (N, 28, 28) on the device, read from the idx file
    (or .gz) in <dataroot>/<MNIST|FashionMNIST>/raw; torchvision downloads it there when missing."""
    folder = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[args.dataset]
    path = os.path.join(args.dataroot, folder, "raw", "train-images-idx3-ubyte")
    try:
        if not (os.path.isfile(path) or os.path.isfile(path + ".gz")):
            from torchvision import datasets
            getattr(datasets, folder)(args.dataroot, train=True, download=True)
        with open(path, "rb") if os.path.isfile(path) else gzip.open(path + ".gz") as f:
            data = f.read()
        magic, n, h, w = struct.unpack(">4I", data[:16])  # idx: 0x0803 = 3-d uint8, then sizes
        assert magic == 0x803 and len(data) == 16 + n * h * w, "not an idx file of images"
        return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).view(n, h, w).to(device)
    except Exception as e:
        fail(f"cannot load {args.dataset} from {os.path.dirname(path)} ({type(e).__name__}: "
             f"{(str(e).splitlines() or [''])[0]}); put train-images-idx3-ubyte[.gz] there, or "
             "let torchvision download it")


def generate(args, ckpt):
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    G = Generator(args.nz).to(device)
    G.load_state_dict(chosen_weights(args, ckpt)["G_ema"])  # the average (G with --ema 0)
    G.eval()
    folder = os.path.join(args.output_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "[0-9]*.png")):  # an earlier, maybe larger, set
        os.remove(old)
    with torch.no_grad():
        for start in range(0, args.generate, 1000):
            z = torch.randn(min(1000, args.generate - start), args.nz, device=device)
            save_images(G(z), folder, start)
    print(f"{SCRIPT}: wrote {args.generate} images to {folder}")


MODES = {"generate": generate}  # what main() runs instead of train() when its option is given

if __name__ == "__main__":
    main()
