#!/usr/bin/env python3
"""GAN in 50 lines, done right: a generator learns the 1-D Gaussian N(4, 1.25).

Paper: Goodfellow et al., "Generative Adversarial Networks", arXiv:1406.2661v1 (2014): Algorithm 1
(k D-steps, then a G-step) with the non-saturating G loss of section 3. The toy is D. Nag's
"Generative Adversarial Networks (GANs) in 50 lines of code (PyTorch)" (2017): G turns uniform
noise into numbers; D judges a whole batch of 500 through its four moments (mean, standard
deviation, skewness, excess kurtosis), or, with --preprocess raw, every sample on its own.

Deviations from the tutorial (each also stated where it happens; README.md has the measurements):
  - z is 4 uniform numbers, not 1: from one number G barely bends its map;
  - Adam (lr 2e-3, betas 0.5/0.999) decaying linearly to 0 over the run, not SGD (1e-3, momentum
    0.9) at a constant rate: the game settles instead of circling the equilibrium;
  - an R1 penalty on D (Mescheder et al. 2018, arXiv:1801.04406v4, Eq. 9; --r1 0 turns it off);
  - 1 D-step and 1 G-step per epoch, for 1,000 epochs (2,000 with raw), not 20 + 20 for 5,000;
  - two hidden layers of 32 ELU units in G and D (the tutorial: 5 tanh units in G, 10 sigmoid
    units in D) and D returns a logit.

Run:     python gan_gaussian.py                      # D sees 4 moments; ~9 s on 2 CPU cores
         python gan_gaussian.py --preprocess raw     # D sees samples; learns the shape; ~13 s
Smoke:   python gan_gaussian.py --dry-run --output-dir /tmp/gauss-smoke
Sample:  python gan_gaussian.py --generate 10000     # -> output/gan_gaussian/samples.npy
"""
import argparse
import contextlib
import csv
import math
import os
import signal
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import plot_log, save_gif

SCRIPT = "gan_gaussian"


def build_parser():
    p = Parser("GAN in 50 lines, done right: G learns a 1-D Gaussian.")
    g = p.add_argument_group("data")
    g.add_argument("--mean", type=float, default=4.0, help="mean of the target (tutorial: 4)")
    g.add_argument("--std", type=positive_float, default=1.25, help="its std (tutorial: 1.25)")
    g = p.add_argument_group("model")
    g.add_argument("--preprocess", choices=["moments", "raw"], default="moments",
                   help="what D sees of a batch: its 4 moments (tutorial) or every sample")
    g.add_argument("--nz", "--noise-size", type=positive_int, default=4,
                   help="uniform numbers per z (tutorial: 1)")
    g.add_argument("--hidden-size", type=positive_int, default=32, help="G's and D's hidden width")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, help="epochs of d-steps + g-steps "
                   "[default: 1000 with moments, 2000 with raw; tutorial: 5000]")
    g.add_argument("--batch-size", type=positive_int, default=500, help="samples per batch")
    g.add_argument("--d-steps", type=positive_int, default=1, help="D-steps per epoch: k")
    g.add_argument("--g-steps", type=positive_int, default=1, help="G-steps per epoch")
    g.add_argument("--lr", "--g-lr", type=positive_float, default=2e-3,
                   help="Adam's rate at the start, for G and D")
    g.add_argument("--lr-d", "--d-lr", type=positive_float, help="D's, where it differs")
    g.add_argument("--r1", type=non_negative_float, default=1.0, help="R1 weight gamma (0: off)")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default=os.path.join("output", SCRIPT))
    g.add_argument("--seed", type=int, default=1, help="seeds torch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto: cuda, then mps, then cpu")
    g.add_argument("--log-every", type=positive_int, default=100,
                   help="epochs between log lines and checkpoints")
    g.add_argument("--dry-run", action="store_true", help="2 epochs, writing every output")
    g.add_argument("--resume", action="store_true", help="continue <output-dir>/checkpoint.pt")
    g.add_argument("--snapshot-every", type=count, default=0, metavar="K",
                   help="keep G's weights every K epochs in <output-dir>/snapshots/ (0: never)")
    g.add_argument("--epoch", type=positive_int, metavar="K",
                   help="--generate: from the snapshot of epoch K, not the checkpoint")
    g.add_argument("--generate", type=positive_int, metavar="N",
                   help="write N samples from the checkpoint to <output-dir>/samples.npy")
    return p


# ---- the models ----

class Generator(nn.Module):
    """z ~ U[0, 1]^nz  ->  one number."""

    def __init__(self, nz=4, hidden_size=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(nz, hidden_size), nn.ELU(),           # (N, hidden)
            nn.Linear(hidden_size, hidden_size), nn.ELU(),  # (N, hidden)
            nn.Linear(hidden_size, 1))                      # (N, 1)

    def forward(self, z):
        return self.net(z).view(-1)                         # (N,)


class Discriminator(nn.Module):
    """What D sees of a batch (4 moments, or one sample per row)  ->  one logit per row."""

    def __init__(self, in_features, hidden_size=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden_size), nn.ELU(),  # (M, hidden)
            nn.Linear(hidden_size, hidden_size), nn.ELU(),  # (M, hidden)
            nn.Linear(hidden_size, 1))                      # (M, 1): a logit, no sigmoid

    def forward(self, x):
        return self.net(x).view(-1)                         # (M,)


def moments(x):
    """(M, n) -> (M, 4): mean, std (over n), skewness and excess kurtosis of each row."""
    mean = x.mean(1, keepdim=True)
    diff = x - mean
    std = diff.pow(2).mean(1, keepdim=True).sqrt()
    z = diff / std
    skew, kurt = z.pow(3).mean(1, keepdim=True), z.pow(4).mean(1, keepdim=True) - 3
    return torch.cat([mean, std, skew, kurt], 1)


def preprocess(x, how):
    """A batch of samples (n,) -> D's input: one row of 4 moments, or n rows of 1 sample."""
    return moments(x.view(1, -1)) if how == "moments" else x.view(-1, 1)


# ---- the losses: Goodfellow et al. 2014, Eq. 1 and section 3 ----

def d_loss(logits, target):
    """Eq. 1, D's side, one term per call: D ascends log D(x) + log(1 - D(G(z))), i.e. descends
    BCE(D(x), 1) + BCE(D(G(z)), 0): target 1 for real samples, 0 for generated ones."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def g_loss(logits):
    """Section 3, non-saturating: G ascends log D(G(z)), i.e. descends BCE(D(G(z)), 1)."""
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def r1_penalty(logits, inputs):
    """Deviation: Mescheder et al. 2018, Eq. 9 without its gamma/2: E ||grad D||^2 on real data,
    taken with respect to what D sees (the 4 moments, or the samples with --preprocess raw)."""
    grad, = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


# ---- one epoch: Algorithm 1 ----

def train_step(G, D, opt_G, opt_D, batches, g_noise, how="moments", r1=1.0):
    """k D-steps, one per (x, z) in batches (x real samples, z noise), then one G-step per z in
    g_noise. Returns (loss_D, loss_G, D(x), D(G(z))) and the last generated batch, on the device."""
    for x, z in batches:
        # (1) D: descend Eq. 1's two cross-entropies on a real and a (detached) generated batch,
        # plus gamma/2 times the R1 penalty on the real one.
        real = preprocess(x, how).requires_grad_(r1 > 0)
        real_logits = D(real)
        fake_logits = D(preprocess(G(z).detach(), how))
        loss_d = d_loss(real_logits, 1.0) + d_loss(fake_logits, 0.0)
        penalty = r1 / 2 * r1_penalty(real_logits, real) if r1 > 0 else 0
        opt_D.zero_grad(set_to_none=True)
        (loss_d + penalty).backward()
        opt_D.step()
    with frozen(D):  # (2) G: through the updated D, whose weights need no gradients here
        for z in g_noise:
            fake = G(z)
            loss_g = g_loss(D(preprocess(fake, how)))
            opt_G.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_G.step()
    d_x, d_g_z = torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()
    return torch.stack([loss_d, loss_g, d_x, d_g_z]).detach(), fake.detach()


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


# ---- this script's run: the loop, samples, pictures ----

# Options a resumed or sampling run may change; options that must match the checkpoint.
RUN_KEYS = ("output_dir", "device", "dry_run", "resume", "generate", "epoch")
MODEL_KEYS = ("preprocess", "nz", "hidden_size")


def settle(args):
    """Defaults that depend on other options."""
    args.epochs = args.epochs or {"moments": 1000, "raw": 2000}[args.preprocess]
    args.lr_d = args.lr_d or args.lr
    return args


def train(args, ckpt):
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    G = Generator(args.nz, args.hidden_size).to(device)
    D = Discriminator(4 if args.preprocess == "moments" else 1, args.hidden_size).to(device)
    # Deviation: Adam, not the tutorial's SGD with momentum 0.9. fused: one kernel for all
    # parameters (13% less training time here than the per-tensor loop).
    fused = device.type in ("cpu", "cuda")
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=fused)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.5, 0.999), fused=fused)
    fixed_noise = torch.rand(10000, args.nz, device=device)  # the GIF's histograms use these z
    edges = torch.linspace(args.mean - 4 * args.std, args.mean + 4 * args.std, 61)
    frames, frame_epochs, epoch, elapsed = [], [], 0, 0.0  # frames: histograms of G(fixed_noise)
    if ckpt:
        restore(ckpt, G=G, D=D, opt_G=opt_G, opt_D=opt_D)
        fixed_noise, frames, frame_epochs = ckpt["fixed_noise"].to(device), ckpt["frames"], \
            ckpt["frame_epochs"]
        epoch, elapsed = ckpt["epoch"], ckpt["elapsed_s"]
    out = make_output_dir(args.output_dir)
    moment_columns = [f"{s}_{m}" for s in ("real", "fake") for m in ("mean", "std", "skew", "kurt")]
    progress = Progress(os.path.join(out, "log.csv"), args.epochs, epoch, elapsed, bool(ckpt),
                        unit="samples", columns=moment_columns)
    print(f"{SCRIPT}: {vars(args)}\n{SCRIPT}: {'resuming at' if ckpt else 'starting at'} epoch "
          f"{epoch} of {args.epochs} on {device}")
    last = min(args.epochs, epoch + 2) if args.dry_run else args.epochs
    log_every = 1 if args.dry_run else args.log_every
    n = args.batch_size
    with StopOnSignal() as stop:
        while epoch < last:
            # Deviation: the rates decay linearly to 0 over the run (a function of the epoch, so a
            # resumed run needs no scheduler state).
            for opt, lr in ((opt_D, args.lr_d), (opt_G, args.lr)):
                opt.param_groups[0]["lr"] = lr * (1 - epoch / args.epochs)
            batches = [(torch.randn(n, device=device) * args.std + args.mean,   # x ~ N(mean, std)
                        torch.rand(n, args.nz, device=device)) for _ in range(args.d_steps)]
            g_noise = [torch.rand(n, args.nz, device=device) for _ in range(args.g_steps)]
            stats, fake = train_step(G, D, opt_G, opt_D, batches, g_noise, args.preprocess, args.r1)
            progress.add(stats, n * args.d_steps)
            epoch += 1
            save_snapshot(args, epoch, G=G.state_dict())
            if epoch % log_every == 0 or epoch == last or stop.requested:
                real_m = moments(batches[-1][0].view(1, -1))[0].tolist()
                fake_m = moments(fake.view(1, -1))[0].tolist()
                progress.line(epoch, epoch, f"epoch {epoch}/{args.epochs}", real_m + fake_m,
                              f"  real {fmt(real_m)}  fake {fmt(fake_m)}")
                with torch.no_grad():
                    frames.append(torch.histc(G(fixed_noise).cpu(), 60, *edges[[0, -1]].tolist()))
                frame_epochs.append(epoch)
                save_checkpoint(args, {
                    "epoch": epoch, "iteration": epoch, "elapsed_s": progress.elapsed,
                    "G": G.state_dict(), "D": D.state_dict(), "opt_G": opt_G.state_dict(),
                    "opt_D": opt_D.state_dict(), "fixed_noise": fixed_noise.cpu(),
                    "frames": frames, "frame_epochs": frame_epochs})
            if stop.requested:
                stop.exit(args, f"epoch {epoch}")
    x = sample(G, 10000, args, device)
    write_pictures(x, args, frames, frame_epochs, edges)
    print(f"{SCRIPT}: done in {progress.elapsed:.1f} s of training. 10,000 samples: mean "
          f"{x.mean():.3f} (target {args.mean}), std {x.std():.3f} (target {args.std}), "
          f"KS distance {ks_distance(x, args.mean, args.std):.4f}. Outputs in {out}")


def sample(G, n, args, device):
    G.eval()
    with torch.no_grad():
        x = G(torch.rand(n, args.nz, device=device)).cpu()
    G.train()
    return x


def ks_distance(x, mean, std):
    """Kolmogorov-Smirnov distance between the samples' empirical CDF and N(mean, std)."""
    x = x.double().sort().values
    cdf = 0.5 * (1 + torch.erf((x - mean) / (std * 2 ** 0.5)))
    n = len(x)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - cdf
    below = cdf - torch.arange(0, n, dtype=torch.float64) / n
    return torch.maximum(above, below).max().item()


def write_pictures(x, args, frames, frame_epochs, edges):
    """histogram.png (target density vs samples), progress.gif (a frame per log line), loss.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = args.output_dir
    grid = torch.linspace(*edges[[0, -1]].tolist(), 200)
    density = torch.exp(-((grid - args.mean) / args.std) ** 2 / 2) / (args.std * (2 * np.pi) ** .5)
    width = (edges[1] - edges[0]).item()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bars = ax.stairs(np.zeros(len(edges) - 1), edges.numpy(), fill=True, alpha=0.6,
                     label="generated")
    ax.plot(grid.numpy(), density.numpy(), "k", label=f"target N({args.mean}, {args.std})")
    ax.set_ylim(0, 1.8 * density.max().item())
    ax.legend(loc="upper right")

    def draw(counts, title):  # only the bar heights and the title change between frames
        bars.set_data((counts / max(counts.sum().item(), 1) / width).numpy())
        ax.set_title(title)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()

    gif = [draw(counts, f"G(fixed z), epoch {e}") for counts, e in zip(frames, frame_epochs)]
    save_gif(gif, os.path.join(out, "progress.gif"), seconds_per_frame=0.25)
    draw(torch.histc(x, 60, *edges[[0, -1]].tolist()), f"{args.preprocess}: 10,000 samples")
    fig.savefig(os.path.join(out, "histogram.png"), dpi=100)
    plt.close(fig)
    plot_log(os.path.join(out, "log.csv"), os.path.join(out, "loss.png"),
             title=f"{SCRIPT} ({args.preprocess})")


def generate(args, ckpt):
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    G = Generator(args.nz, args.hidden_size).to(device)
    G.load_state_dict(chosen_weights(args, ckpt)["G"])
    x = sample(G, args.generate, args, device)
    path = os.path.join(args.output_dir, "samples.npy")
    np.save(path, x.numpy())
    print(f"{SCRIPT}: wrote {len(x)} samples to {path}: mean {x.mean():.4f}, std {x.std():.4f}, "
          f"KS distance to N({args.mean}, {args.std}) {ks_distance(x, args.mean, args.std):.4f}")


def fmt(values):
    return " ".join(f"{v:.2f}" for v in values)


MODES = {"generate": generate}  # what main() runs instead of train() when its option is given

if __name__ == "__main__":
    main()
