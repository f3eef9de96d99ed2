#!/usr/bin/env python3
"""The original GAN on MNIST: multilayer perceptrons for G and D, dropout in D.

Paper: Goodfellow et al., "Generative Adversarial Networks", arXiv:1406.2661v1 (2014). D ascends
Eq. 1, log D(x) + log(1 - D(G(z))); G ascends log D(G(z)), the non-saturating form of section 3
(--g-loss minimax descends Eq. 1 itself, to see why the paper recommends the change); k D-steps
per G-step as in Algorithm 1 (--d-steps, k = 1 as in the paper's experiments).

Networks (those of the well-known PyTorch MLP tutorial; the paper's G mixed rectifiers and
sigmoids and its D used maxout units, which we replace by LeakyReLU(0.2)):
  G: z (100) -> 256 -> 512 -> 1024 -> 784, LeakyReLU(0.2), Tanh; viewed as 1 x 28 x 28 (plus
     BatchNorm after each hidden layer: a deviation, below).
  D: 784 -> 1024 -> 512 -> 256 -> 1 logit, LeakyReLU(0.2), dropout after each hidden layer.
Dropout is a registered module, so it is off in eval mode; the tutorial builds it inside forward,
where it stays on when sampling.

Where this differs from that tutorial, and why (measured; README.md has the commands):
  - batch 128, not 64: a step costs about the same on a CPU, so an epoch takes ~24 s instead of ~31 s;
  - Adam's rates 1e-3 for G and 4e-4 for D, not 2e-4 for both, and beta1 0, not 0.5; made safe by an
    R1 penalty on D (Mescheder et al. 2018, gamma 10, applied lazily every 4th D-step; --r1 0 turns it
    off). With the tutorial's settings one epoch ends at FID 1028 with 2 of 10 digits; with G's and
    D's rate both 1e-3 and beta1 0.5 at FID 469 (10 epochs: 149). beta1 0 with one rate for both
    reached FID 89 by epoch 8 and then collapsed to 4 digits at epoch 9: D's slower rate (a two
    time-scale update, Heusel et al. 2017, arXiv:1706.08500v6) is what keeps it steady;
  - dropout 0.1, not 0.3 (the paper gives no rate): the best of the rates tried with R1 on D;
  - BatchNorm after G's hidden layers (one epoch at batch 128: FID 488 and 10 digits with it, 805 and
    7 digits without);
  - pictures and --generate use a moving average of G's weights (--ema; --ema 0 uses G itself): after
    10 epochs (one rate, beta1 0.5) FID 155 against G's own 203.
  None of these changes the game of Eq. 1 or Algorithm 1: they are how fast and how smoothly it is played.

MNIST (47 MB) is read once through torchvision into one uint8 tensor on the device, and batches
are taken by indexing it: no DataLoader, no PIL, no per-image transforms.

Run:     python gan_mnist.py --dataroot ../shared/data            # 10 epochs
         python gan_mnist.py --dataset fashion-mnist --dataroot ../shared/data
Smoke:   python gan_mnist.py --dry-run --dataroot ../shared/data --output-dir /tmp/mnist-smoke
Sample:  python gan_mnist.py --generate 10000 --dataroot ../shared/data   # -> output/gan_mnist/samples/

Measured (2-core x86-64 CPU, torch 2.14.1, seed 1, defaults, 10,000 samples from --generate scored by
../shared/tools/mnist_score.py; README.md has the commands):
  MNIST          1 epoch: FID 345, 10/10 digits, 31 s    10 epochs: FID 31.8, 10/10 digits, 243 s
  Fashion-MNIST  1 epoch: FID 195, 9/10 classes, 29 s    10 epochs: FID 58.5, 10/10 classes, 250 s
The tutorial's settings: 1 epoch FID 1028 with 2 digits (34 s here); 10 epochs FID 351.
"""
import argparse
import copy
import csv
import glob
import gzip
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import plot_log, save_gif, save_grid, save_images

SCRIPT = "gan_mnist"


def build_parser():
    p = Parser(description="Goodfellow et al. 2014: an MLP GAN on MNIST.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    g.add_argument("--dataroot", default="./data", help="holds MNIST/raw or FashionMNIST/raw; torchvision "
                   "downloads there when the files are missing")
    g = p.add_argument_group("model")
    g.add_argument("--noise-size", type=positive_int, default=100, help="size of z (tutorial: 100)")
    g.add_argument("--dropout", type=probability, default=0.1, help="D's dropout rate (tutorial: 0.3)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=10, help="passes over the training set")
    g.add_argument("--batch-size", type=positive_int, default=128, help="images per D-step (tutorial: 64)")
    g.add_argument("--learning-rate", "-lr", type=positive_float, default=1e-3, help="G's Adam rate (tutorial: 2e-4)")
    g.add_argument("--learning-rate-d", type=positive_float, default=4e-4,
                   help="D's Adam rate (tutorial: the same as G's, 2e-4)")
    g.add_argument("--beta1", type=probability, default=0.0, help="Adam's beta1 (tutorial: 0.5)")
    g.add_argument("--beta2", type=probability, default=0.999, help="Adam's beta2 (tutorial: 0.999)")
    g.add_argument("--d-steps", type=positive_int, default=1, help="D-steps per G-step: k of Algorithm 1")
    g.add_argument("--g-loss", choices=["non-saturating", "minimax"], default="non-saturating",
                   help="G ascends log D(G(z)) (section 3) or descends log(1 - D(G(z))) (Eq. 1)")
    g.add_argument("--r1", type=non_negative_float, default=10.0, help="R1 weight gamma on D (0: off, as the paper)")
    g.add_argument("--r1-every", type=positive_int, default=4, help="apply R1 every N D-steps, scaled by N (lazy R1)")
    g.add_argument("--ema", type=probability, default=0.999,
                   help="decay of the moving average of G's weights used for pictures and samples (0: off)")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default=os.path.join("output", SCRIPT), help="where everything is written")
    g.add_argument("--log-file", default="log.csv", help="name of the CSV log inside --output-dir")
    g.add_argument("--seed", type=int, default=1, help="seeds python, numpy and torch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto: cuda, then mps, then cpu (replaces the tutorial's --use-cuda)")
    g.add_argument("--log-every", type=positive_int, default=100, help="iterations between log lines")
    g.add_argument("--dry-run", action="store_true", help="2 iterations at batch size 8, writing every output")
    g.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint.pt")
    g.add_argument("--generate", type=positive_int, metavar="N",
                   help="write N images from the checkpoint to <output-dir>/samples/, then exit")
    return p


# Options that may differ between a checkpoint's run and the run that resumes or samples from it;
# and those that must not, because they shape the networks or the data.
RUN_KEYS = ("output_dir", "device", "dry_run", "resume", "generate", "dataroot", "log_file")
MODEL_KEYS = ("dataset", "noise_size")
LOG_COLUMNS = ["epoch", "iteration", "loss_d", "loss_g", "d_x", "d_g_z", "samples_per_s", "elapsed_s"]


# ---- the models ----

class Generator(nn.Module):
    def __init__(self, noise_size=100, image_size=28):
        super().__init__()
        self.image_size = image_size
        # Deviation: BatchNorm after each hidden layer (as DCGAN puts in G). Measured at batch 128, one
        # epoch: FID 488 with all 10 digits with it, 805 with 7 without (README.md).
        self.net = nn.Sequential(
            nn.Linear(noise_size, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.2),    # (N, 256)
            nn.Linear(256, 512), nn.BatchNorm1d(512), nn.LeakyReLU(0.2),           # (N, 512)
            nn.Linear(512, 1024), nn.BatchNorm1d(1024), nn.LeakyReLU(0.2),         # (N, 1024)
            nn.Linear(1024, image_size ** 2), nn.Tanh())                          # (N, 784) in [-1, 1]

    def forward(self, z):
        return self.net(z).view(-1, 1, self.image_size, self.image_size)  # (N, 1, 28, 28)


class Discriminator(nn.Module):
    def __init__(self, image_size=28, dropout=0.3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),                                                           # (N, 784)
            nn.Linear(image_size ** 2, 1024), nn.LeakyReLU(0.2), nn.Dropout(dropout),  # (N, 1024)
            nn.Linear(1024, 512), nn.LeakyReLU(0.2), nn.Dropout(dropout),          # (N, 512)
            nn.Linear(512, 256), nn.LeakyReLU(0.2), nn.Dropout(dropout),           # (N, 256)
            nn.Linear(256, 1))                                                     # (N, 1): a logit

    def forward(self, x):
        return self.net(x).view(-1)                                                # (N,)


# ---- the losses: Goodfellow et al. 2014, Eq. 1 and section 3 ----

def d_loss(real_logits, fake_logits):
    """Eq. 1, D's side: ascend log D(x) + log(1 - D(G(z))), i.e. descend the two cross-entropies."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_loss(fake_logits, variant="non-saturating"):
    if variant == "minimax":
        # Eq. 1, G's side: descend log(1 - D(G(z))) = -BCE(logit, 0). Saturates while D rejects G(z).
        return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    # Section 3: ascend log D(G(z)) instead, i.e. descend -log D(G(z)) = BCE(logit, 1).
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def r1_penalty(real_logits, real_images):
    """Deviation: Mescheder et al. 2018 (arXiv:1801.04406v4), Eq. 9 without its gamma/2:
    E_x ||grad_x D(x)||^2 on real data."""
    grad, = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


# ---- one iteration of Algorithm 1 ----

def train_step(G, D, opt_G, opt_D, real_batches, args, iteration):
    """k = d_steps D-steps (one real batch each), then one G-step. Returns device tensors: no host reads."""
    for k, real in enumerate(real_batches):
        # (1) D: a real batch against a detached fake one, plus the R1 penalty on the real one.
        fake = G(torch.randn(len(real), args.noise_size, device=real.device))
        # Lazy R1 (Karras et al. 2020, arXiv:1912.04958v2, section 4): every r1_every-th D-step, weighted
        # r1_every times as much: the same regularisation on average for a quarter of its cost.
        lazy = args.r1 > 0 and (iteration * args.d_steps + k) % args.r1_every == 0
        real.requires_grad_(lazy)
        real_logits, fake_logits = D(real), D(fake.detach())
        loss_d = d_loss(real_logits, fake_logits)
        penalty = args.r1 * args.r1_every / 2 * r1_penalty(real_logits, real) if lazy else 0
        opt_D.zero_grad(set_to_none=True)
        (loss_d + penalty).backward()
        opt_D.step()
    # (2) G: the last D-step's fake batch again (fresh z each iteration; one G forward saved),
    # through the updated D, whose weights need no gradients here.
    D.requires_grad_(False)
    loss_g = g_loss(D(fake), args.g_loss)
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_G.step()
    D.requires_grad_(True)
    d_x, d_g_z = torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()
    return torch.stack([loss_d, loss_g, d_x, d_g_z]).detach()


def build(args, device):
    G = Generator(args.noise_size).to(device)
    D = Discriminator(dropout=args.dropout).to(device)
    fused = device.type in ("cpu", "cuda")  # one kernel for all of a net's parameters
    opt_G = torch.optim.Adam(G.parameters(), lr=args.learning_rate, betas=(args.beta1, args.beta2), fused=fused)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.learning_rate_d, betas=(args.beta1, args.beta2), fused=fused)
    return G, D, opt_G, opt_D


def train(args, ckpt):
    device = pick_device(args.device)
    seed_everything(args.seed)
    images = load_images(args, device)  # (N, 28, 28) uint8, on the device
    per_iteration = args.batch_size * args.d_steps
    iterations = len(images) // per_iteration  # per epoch; the last partial batch is dropped
    if iterations == 0:
        raise UsageError(f"{len(images)} training images are fewer than --batch-size x --d-steps = {per_iteration}")
    G, D, opt_G, opt_D = build(args, device)
    G_ema = copy.deepcopy(G).requires_grad_(False) if args.ema > 0 else G  # what the pictures show
    fixed_noise = torch.randn(64, args.noise_size, device=device)  # the per-epoch grids use these z
    iteration, elapsed = 0, 0.0
    if ckpt:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        opt_G.load_state_dict(ckpt["opt_G"])
        opt_D.load_state_dict(ckpt["opt_D"])
        G_ema.load_state_dict(ckpt["G_ema"])
        fixed_noise, iteration, elapsed = ckpt["fixed_noise"].to(device), ckpt["iteration"], ckpt["elapsed_s"]
        set_rng_state(ckpt["rng"])
    out = make_output_dir(args.output_dir)
    log = CsvLog(os.path.join(out, args.log_file), LOG_COLUMNS, keep_until=iteration if ckpt else None)
    save_grid(to_model(images[:64]), os.path.join(out, "real.png"))
    total = args.epochs * iterations
    last = min(total, iteration + 2) if args.dry_run else total
    log_every = 1 if args.dry_run else args.log_every
    print(f"{SCRIPT}: {vars(args)}\n{SCRIPT}: {len(images)} images, {iterations} iterations per epoch; "
          f"{'resuming at' if ckpt else 'starting at'} iteration {iteration} of {total} on {device}", flush=True)

    def checkpoint():
        save_checkpoint(out, {
            "script": SCRIPT, "torch_version": str(torch.__version__), "args": vars(args),
            "epoch": iteration // iterations, "iteration": iteration, "elapsed_s": elapsed,
            "G": G.state_dict(), "G_ema": G_ema.state_dict(), "D": D.state_dict(), "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
            "fixed_noise": fixed_noise.cpu(), "rng": get_rng_state()})

    def grid():  # G(fixed z) after (the latest point of) each epoch; the GIF strings them together
        G_ema.eval()
        with torch.no_grad():
            save_grid(G_ema(fixed_noise), os.path.join(out, f"epoch_{-(-iteration // iterations):03d}.png"))
        G_ema.train()

    sums, since = torch.zeros(4, device=device), 0
    start = tick = time.perf_counter()
    elapsed_before = elapsed
    with StopOnSignal() as stop:
        while iteration < last:
            epoch, step = divmod(iteration, iterations)
            order = epoch_order(len(images), args.seed, epoch, device)  # the same after a resume
            for step in range(step, iterations):
                take = order[step * per_iteration:(step + 1) * per_iteration].view(args.d_steps, -1)
                sums += train_step(G, D, opt_G, opt_D, [to_model(images[i]) for i in take], args, iteration)
                if args.ema > 0:
                    update_average(G_ema, G, min(args.ema, (1 + iteration) / (30 + iteration)))
                iteration, since = iteration + 1, since + 1
                if iteration % log_every == 0 or iteration == last or stop.requested:
                    # The only host reads of the loop (they wait for the device): once per log line.
                    now = time.perf_counter()
                    elapsed = elapsed_before + now - start
                    loss_d_, loss_g_, d_x, d_g_z = (sums / since).tolist()
                    if not all(map(np.isfinite, (loss_d_, loss_g_))):
                        raise Diverged(f"loss is {loss_d_} (D), {loss_g_} (G) by iteration {iteration}; "
                                       f"the last good checkpoint is kept in {out}")
                    rate = since * per_iteration / (now - tick)
                    log.write([epoch + 1, iteration, loss_d_, loss_g_, d_x, d_g_z, rate, elapsed])
                    print(f"[epoch {epoch + 1}/{args.epochs}][iter {step + 1}/{iterations}]  loss_D {loss_d_:.3f}  "
                          f"loss_G {loss_g_:.3f}  D(x) {d_x:.3f}  D(G(z)) {d_g_z:.3f}  {rate:,.0f} img/s  "
                          f"ETA {eta((total - iteration) * (now - tick) / since)}", flush=True)
                    sums, since, tick = torch.zeros(4, device=device), 0, now
                if iteration == last or stop.requested:
                    break
            grid()
            checkpoint()
            if stop.requested:
                print(f"{SCRIPT}: stopped at iteration {iteration}; checkpoint saved. Resume with:\n"
                      f"  python {SCRIPT}.py --resume --output-dir {out}", flush=True)
                raise SystemExit(130)
    log.close()
    save_gif(sorted(glob.glob(os.path.join(out, "epoch_*.png"))), os.path.join(out, "progress.gif"))
    plot_log(os.path.join(out, args.log_file), os.path.join(out, "loss.png"), title=f"{SCRIPT} ({args.dataset})")
    print(f"{SCRIPT}: done: {iteration} iterations, {elapsed:.1f} s. Outputs in {out}")


def update_average(G_ema, G, decay):
    """Deviation: pictures and samples come from an exponential moving average of G's weights (Yazici
    et al. 2019, arXiv:1806.04498v2), which smooths the step-to-step jitter of the MLP's outputs. The
    caller ramps the decay as (1 + t) / (30 + t) up to --ema, so that the average spans about the last
    3% of the steps taken: long enough to smooth, short enough not to hold on to early, worse G's."""
    with torch.no_grad():
        for average, current in zip(G_ema.parameters(), G.parameters()):
            average.lerp_(current, 1 - decay)
        for average, current in zip(G_ema.buffers(), G.buffers()):  # BatchNorm's running statistics
            average.copy_(current)


def to_model(images):
    """uint8 images (N, 28, 28) -> floats in [-1, 1], (N, 1, 28, 28): what G makes and D sees."""
    return images.unsqueeze(1).float().div(127.5).sub(1)


def epoch_order(n, seed, epoch, device):
    """A permutation of the n images, a function of (seed, epoch) only: a resumed run sees the same."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).to(device)


def generate(args, ckpt):
    device = pick_device(args.device)
    seed_everything(args.seed)
    G = Generator(args.noise_size).to(device)
    G.load_state_dict(ckpt["G_ema"])  # the average of G's weights (the same as G's with --ema 0)
    G.eval()
    folder = os.path.join(args.output_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "[0-9]*.png")):  # an earlier, maybe larger, set
        os.remove(old)
    with torch.no_grad():
        for start in range(0, args.generate, 1000):
            z = torch.randn(min(1000, args.generate - start), args.noise_size, device=device)
            save_images(G(z), folder, start)
    print(f"{SCRIPT}: wrote {args.generate} images to {folder}")


# ---- plumbing: data, options, checkpoints, logging, signals, errors ----

def load_images(args, device):
    """The training set as one uint8 tensor (N, 28, 28) on the device, read through torchvision."""
    from torchvision import datasets
    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[args.dataset]
    raw = os.path.join(args.dataroot, cls.__name__, "raw")
    names = [os.path.splitext(name)[0] for name, _ in cls.resources]  # e.g. train-images-idx3-ubyte
    try:
        if all(os.path.isfile(os.path.join(raw, n)) or os.path.isfile(os.path.join(raw, n + ".gz")) for n in names):
            # torchvision reads the unpacked files and would unpack .gz ones beside themselves; the
            # folder may be read-only (a shared copy), so unpack them into a temporary folder instead.
            with tempfile.TemporaryDirectory() as tmp:
                os.makedirs(os.path.join(tmp, cls.__name__, "raw"))
                for n in names:
                    src = os.path.join(raw, n)
                    with (open(src, "rb") if os.path.isfile(src) else gzip.open(src + ".gz")) as f, \
                            open(os.path.join(tmp, cls.__name__, "raw", n), "wb") as g:
                        shutil.copyfileobj(f, g)
                images = cls(tmp, train=True).data
        else:
            images = cls(args.dataroot, train=True, download=True).data  # downloads into --dataroot
    except Exception as e:
        raise UsageError(f"cannot load {args.dataset} from {raw} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         f"put {', '.join(n + '[.gz]' for n in names)} there, or let torchvision download them")
    return images.to(device)


class UsageError(Exception):
    """Bad input: main() prints it as one line `error: ...` on stderr and exits with status 2."""


class Diverged(Exception):
    """A NaN or infinite loss: main() prints one line and exits with status 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own complaints become one line too
        raise UsageError(message)


def positive_int(text):
    if not text.lstrip("+").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text):
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def probability(text):
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def get_options(argv):
    """Parse argv. For --resume and --generate, also load the checkpoint: options the command line
    leaves out take the checkpoint's values, and options that shape the networks must match it."""
    parser = build_parser()
    args, ckpt = parser.parse_args(argv), None
    if args.resume and args.generate:
        raise UsageError("--resume and --generate exclude each other")
    path = os.path.join(args.output_dir, "checkpoint.pt")
    if args.resume or args.generate:
        ckpt = load_checkpoint(path)
        saved = {k: v for k, v in ckpt["args"].items() if k not in RUN_KEYS}
        args = parser.parse_args(argv, argparse.Namespace(**saved))
        for key in MODEL_KEYS:
            if getattr(args, key) != ckpt["args"].get(key):
                raise UsageError(f"{path} was trained with --{key.replace('_', '-')} {ckpt['args'].get(key)}, "
                                 f"not {getattr(args, key)}")
    elif os.path.exists(path):
        raise UsageError(f"{path} exists: continue that run with --resume, or choose another --output-dir")
    if args.dry_run:
        args.batch_size = min(args.batch_size, 8)
    return args, ckpt


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise UsageError(f"no checkpoint at {path}: train first, or point --output-dir at the run")
    try:
        with warnings.catch_warnings():  # torch warns before some refusals: the error line says it all
            warnings.simplefilter("ignore")
            # weights_only: opening a checkpoint never runs code from it.
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise UsageError(f"cannot read {path}: damaged, or not a checkpoint of these scripts "
                         "(it is opened with weights_only=True, which refuses anything but tensors and plain data)")
    if not isinstance(ckpt, dict) or "args" not in ckpt:
        raise UsageError(f"{path} is not a checkpoint of these scripts")
    if ckpt.get("script") != SCRIPT:
        raise UsageError(f"{path} is a checkpoint of {ckpt.get('script')}.py, not {SCRIPT}.py")
    return ckpt


def save_checkpoint(out, state):
    """Write to a temporary file, then rename: a crash mid-write never leaves a broken checkpoint."""
    path = os.path.join(out, "checkpoint.pt")
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def make_output_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --output-dir {path}: {e.strerror}")
    if not os.access(path, os.W_OK):
        raise UsageError(f"cannot write to --output-dir {path}")
    return path


def pick_device(name):
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available[name]:
        raise UsageError(f"--device {name}: not available on this machine")
    return torch.device(name)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device


def get_rng_state():
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CsvLog:
    """The CSV log, one row per log line. On resume, rows past the checkpoint are dropped: they are redone."""

    def __init__(self, path, columns, keep_until=None):
        rows = []
        if keep_until is not None and os.path.exists(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if r and int(r[1]) <= keep_until]
        self.file = open(path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerows([columns] + rows)
        self.file.flush()

    def write(self, row):
        self.writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        self.file.flush()

    def close(self):
        self.file.close()


class StopOnSignal:
    """Ctrl-C or SIGTERM asks the loop to stop at the next step boundary (it then checkpoints and exits
    130); a second one stops at once."""

    def __enter__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{SCRIPT}: {signal.Signals(signum).name}: stopping after this step (again to stop now)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def main(argv=None):
    try:
        args, ckpt = get_options(argv)
        if args.generate:
            generate(args, ckpt)
        else:
            train(args, ckpt)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except Diverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        print("error: interrupted twice: stopped without a new checkpoint (the last one is kept)", file=sys.stderr)
        raise SystemExit(130)


if __name__ == "__main__":
    main()
