#!/usr/bin/env python3
"""DCGAN: deep convolutional G and D, trained as in Radford et al.

Paper: Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", arXiv:1511.06434v2 (2016).

What is implemented (section 3's guidelines, section 4's training details):
  - all-convolutional G and D: fractionally-strided (transposed) convolutions in G, strided ones in
    D, no pooling, no hidden fully connected layer; BatchNorm everywhere except G's output and D's
    input; ReLU in G with a Tanh output, LeakyReLU(0.2) in D; no convolution bias (BatchNorm follows);
  - weights from N(0, 0.02); Adam, lr 2e-4, beta1 0.5; batch 128; images scaled to [-1, 1];
  - D returns a logit and both losses are cross-entropies on logits; G uses the non-saturating loss;
  - --interpolate: the latent-space walk of section 6.1.

The layer list is that of the authors' Torch implementation (4x4 kernels throughout: z -> 4x4 x
8ngf -> 8x8 x 4ngf -> 16x16 x 2ngf -> 32x32 x ngf -> 64x64 x nc), not that of their Theano code
(5x5 kernels, 128 filters in the first D layer, z drawn uniformly). Other --image-size values add or
remove one (de)convolution block per factor 2, with at most 8 ngf (8 ndf) channels in a block.

Deviations (each is also stated where it happens):
  - z ~ N(0, I) (Torch code) rather than U(-1, 1) (Theano code);
  - BatchNorm scales start from N(1, 0.02), as in the Torch code (the paper names no BN init);
  - samples are drawn with BatchNorm in eval mode (running statistics): see sample().

Data: mnist, fashion-mnist and cifar10 are held in memory as one uint8 tensor on the device and
resized there, a batch at a time; folder datasets (celeba, folder, imagenet, lfw) and lsun are read
by DataLoader workers (resize + center crop in PIL, uint8) and scaled to [-1, 1] on the device.
--dataset fake makes random uint8 batches directly on the device (for timing the model alone).

Run:     python dcgan.py                                  # CIFAR-10 at 64x64, downloaded to ./data
         python dcgan.py --dataset lsun --classes bedroom --dataroot ~/lsun --epochs 5
         python dcgan.py --dataset celeba --dataroot ../shared/data/celeba_sample --epochs 5
Smoke:   python dcgan.py --dataset fake --dry-run --output-dir /tmp/dcgan-smoke
Sample:  python dcgan.py --generate 10000 --output-dir output/dcgan   # -> output/dcgan/samples/
Walk:    python dcgan.py --interpolate --output-dir output/dcgan      # -> interpolation.png, .gif
Several processes (one per GPU): torchrun --nproc_per_node 4 dcgan.py --dataset lsun ...

Measured (2-core x86-64 CPU, torch 2.14.1; README.md has the commands): MNIST at 64x64, defaults,
seed 1, --epochs 1 (468 steps of 128): 1,030 s, 58 img/s; 10,000 samples score FID 530 with all
10 digits present (../shared/tools/mnist_score.py; its real-data floor is 1.57). With the common
example's --batch-size 64 (937 steps): FID 381 (seed 1) and 389 (seed 2), 10/10 both. CelebA
sample (10,000 faces), --epochs 3: 468 s, 64 img/s, rough faces (README.md shows the grid and walks).
On the CPU, --dataset fake at batch 64: 58.0-60.8 img/s, 1.16-1.21x the common PyTorch example's
step run beside it (three undisturbed rounds; README.md), peaking at 1.02-1.04 GB.
"""
import argparse
import contextlib
import csv
import glob
import gzip
import math
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
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from utils import plot_log, save_gif, save_grid, save_images, tile, to_uint8

SCRIPT = "dcgan"
DATASETS = ["cifar10", "lsun", "mnist", "fashion-mnist", "celeba", "folder", "imagenet", "lfw", "fake"]
IMAGE_SIZES = [32, 64, 128, 256]
FAKE_EPOCH = 10_000  # images per "epoch" of --dataset fake


def build_parser():
    p = Parser(description="Radford et al. 2015: DCGAN on torchvision datasets.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="cifar10",
                   help="cifar10, mnist and fashion-mnist download into --dataroot; the others must be there")
    g.add_argument("--dataroot", default="./data", help="where the dataset is (or is downloaded to)")
    g.add_argument("--classes", default="bedroom", help="LSUN categories, comma separated: bedroom -> bedroom_train_lmdb")
    g.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader processes (folder datasets, lsun)")
    g = p.add_argument_group("model")
    g.add_argument("--image-size", type=int, default=64, help=f"one of {IMAGE_SIZES} (paper: 64)")
    g.add_argument("--nz", type=positive_int, default=100, help="size of z (paper: 100)")
    g.add_argument("--ngf", type=positive_int, default=64, help="G's channels in its last block (Torch code: 64)")
    g.add_argument("--ndf", type=positive_int, default=64, help="D's channels in its first block (Torch code: 64)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=5, help="passes over the training set")
    g.add_argument("--batch-size", type=positive_int, default=128,
                   help="images per step, over all processes (paper: 128)")
    g.add_argument("--lr", type=positive_float, default=2e-4, help="Adam's rate (paper: 2e-4)")
    g.add_argument("--beta1", type=probability, default=0.5, help="Adam's beta1 (paper: 0.5)")
    g.add_argument("--beta2", type=probability, default=0.999, help="Adam's beta2 (paper: Adam's default)")
    g = p.add_argument_group("speed")
    g.add_argument("--amp", action="store_true", help="autocast to bfloat16 (float16 + GradScaler on GPUs without bf16)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout for images and weights (default: on for the CPU, off elsewhere)")
    g.add_argument("--compile", action="store_true", help="torch.compile G and D (slow first steps)")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default=os.path.join("output", SCRIPT), help="where everything is written")
    g.add_argument("--seed", type=int, default=1, help="seeds python, numpy and torch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="auto: cuda, then mps, then cpu")
    g.add_argument("--log-every", type=positive_int, default=50, help="iterations between log lines")
    g.add_argument("--dry-run", action="store_true", help="2 iterations at batch size <= 8, writing every output")
    g.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint.pt")
    g.add_argument("--generate", type=positive_int, metavar="N",
                   help="write N images from the checkpoint to <output-dir>/samples/, then exit")
    g.add_argument("--interpolate", action="store_true",
                   help="write the latent walk of section 6.1 from the checkpoint, then exit")
    return p


# Options that may differ between a checkpoint's run and the run that resumes or samples from it;
# and those that must not, because they shape the networks or the data.
RUN_KEYS = ("output_dir", "device", "dry_run", "resume", "generate", "interpolate", "dataroot", "workers",
            "amp", "channels_last", "compile")
MODEL_KEYS = ("dataset", "classes", "image_size", "nz", "ngf", "ndf")
LOG_COLUMNS = ["epoch", "iteration", "loss_d", "loss_g", "d_x", "d_g_z", "samples_per_s", "elapsed_s"]


# ---- the models ----

def channels(width, blocks):
    """Channels of the 4x4 block, then of each doubling: [8w, 4w, 2w, w] at 64x64 (3 blocks)."""
    return [width * min(8, 2 ** (blocks - i)) for i in range(blocks + 1)]


class Generator(nn.Module):
    def __init__(self, nz=100, ngf=64, nc=3, image_size=64):
        super().__init__()
        blocks = int(math.log2(image_size)) - 3  # 64x64: 4 -> 8 -> 16 -> 32, then the output layer
        ch = channels(ngf, blocks)
        layers = [nn.ConvTranspose2d(nz, ch[0], 4, 1, 0, bias=False),               # (N, 8ngf, 4, 4)
                  nn.BatchNorm2d(ch[0]), nn.ReLU(inplace=True)]
        for i in range(1, blocks + 1):                                               # each doubles H, W:
            layers += [nn.ConvTranspose2d(ch[i - 1], ch[i], 4, 2, 1, bias=False),   # (N, 4ngf, 8, 8) ...
                       nn.BatchNorm2d(ch[i]), nn.ReLU(inplace=True)]                 # ... (N, ngf, 32, 32)
        layers += [nn.ConvTranspose2d(ch[-1], nc, 4, 2, 1, bias=False), nn.Tanh()]  # (N, nc, 64, 64)
        self.net = nn.Sequential(*layers)

    def forward(self, z):                          # z: (N, nz)
        return self.net(z[:, :, None, None])       # (N, nc, image_size, image_size) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(self, ndf=64, nc=3, image_size=64):
        super().__init__()
        blocks = int(math.log2(image_size)) - 3
        ch = channels(ndf, blocks)[::-1]           # [ndf, 2ndf, 4ndf, 8ndf] at 64x64
        layers = [nn.Conv2d(nc, ch[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]  # (N, ndf, 32, 32), no BN
        for i in range(1, blocks + 1):                                               # each halves H, W:
            layers += [nn.Conv2d(ch[i - 1], ch[i], 4, 2, 1, bias=False),            # (N, 2ndf, 16, 16) ...
                       nn.BatchNorm2d(ch[i]), nn.LeakyReLU(0.2, inplace=True)]       # ... (N, 8ndf, 4, 4)
        layers += [nn.Conv2d(ch[-1], 1, 4, 1, 0, bias=False)]                       # (N, 1, 1, 1): a logit
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


# ---- the losses (Goodfellow et al. 2014, which the paper trains with) ----

def d_loss(logits, real):
    """D ascends log D(x) + log(1 - D(G(z))) (Eq. 1 of Goodfellow et al.), i.e. descends the cross-entropies
    BCE(D(x) logit, 1) + BCE(D(G(z)) logit, 0). One term per call: `real` picks the target, 1 or 0."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))


def g_loss(fake_logits):
    """Non-saturating G: ascend log D(G(z)), i.e. descend BCE(D(G(z)) logit, 1) (Goodfellow et al., section 3)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ---- one iteration ----

def train_step(G, D, D_local, opt_G, opt_D, real, args, amp):
    """One D-step then one G-step on a batch. Returns device tensors: no host reads here."""
    z = torch.randn(len(real), args.nz, device=real.device)  # this process's share of the batch
    # (1) D: the real and the generated batch in separate forward passes, so that each BatchNorm
    # normalises a pure batch, as in the authors' code; like theirs, each is backpropagated before the
    # next forward, so one graph of D is held at a time (peak memory ~40 MB lower at batch 64, 64x64;
    # README.md). Under DDP, D's gradients are summed locally and reduced once, after the second.
    opt_D.zero_grad(set_to_none=True)
    with getattr(D, "no_sync", contextlib.nullcontext)():
        with amp.autocast():
            real_logits = D(real)
            loss_real = d_loss(real_logits.float(), real=True)
        amp.backward(loss_real)
    with amp.autocast():
        fake = G(z)
        fake_logits = D(fake.detach())
        loss_fake = d_loss(fake_logits.float(), real=False)
    amp.backward(loss_fake)
    amp.step(opt_D)
    loss_d = loss_real + loss_fake
    # (2) G: through the updated D. D's weights need no gradients here (saves their computation);
    # under DDP the local module is used, as D's gradients are not reduced in this step.
    D_local.requires_grad_(False)
    with amp.autocast():
        loss_g = g_loss(D_local(fake).float())
    opt_G.zero_grad(set_to_none=True)
    amp.backward(loss_g)
    amp.step(opt_G)
    D_local.requires_grad_(True)
    d_x, d_g_z = torch.sigmoid(real_logits.float()).mean(), torch.sigmoid(fake_logits.float()).mean()
    return torch.stack([loss_d, loss_g, d_x, d_g_z]).detach()


class Amp:
    """--amp: autocast to bfloat16; where the GPU lacks bf16, float16 with a GradScaler (fp16's range
    needs loss scaling, bf16's does not). Without --amp, plain float32."""

    def __init__(self, enabled, device):
        self.enabled, self.device_type = enabled, device.type
        self.dtype = torch.bfloat16
        if enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            self.dtype = torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=enabled and self.dtype == torch.float16)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def backward(self, loss):
        self.scaler.scale(loss).backward()

    def step(self, optimizer):
        self.scaler.step(optimizer)
        self.scaler.update()


def sample(G, z):
    """G(z) for pictures and --generate, with BatchNorm in eval mode (running statistics).

    Eval mode makes each image a function of its own z alone, whatever else is in the batch, and leaves
    the running statistics untouched. The authors' code samples in training mode (batch statistics);
    measured on MNIST after one epoch of dcgan.py, the two score alike (FID 527 eval, 525 batch)."""
    was_training = G.training
    G.eval()
    with torch.no_grad():
        images = G(z)
    G.train(was_training)
    return images


def build(args, nc, device):
    G = Generator(args.nz, args.ngf, nc, args.image_size).to(device)
    D = Discriminator(args.ndf, nc, args.image_size).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    if args.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    # fused Adam: one kernel updates all of a network's parameters (CPU and CUDA; MPS uses foreach).
    fused = device.type in ("cpu", "cuda")
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), fused=fused)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), fused=fused)
    return G, D, opt_G, opt_D


def train(args, ckpt, world):
    device = world.device
    if args.channels_last is None:
        # On the CPU, NHWC is the default: oneDNN's convolutions run faster on it and the run
        # peaks lower (batch 64: 63.9 against 56.8 img/s, 1.12 against 1.16 GB; README.md). Elsewhere opt-in.
        args.channels_last = device.type == "cpu"
    seed_everything(args.seed)
    data = load_data(args, device)
    if args.batch_size % world.size:
        raise UsageError(f"--batch-size {args.batch_size} is not divisible by the {world.size} processes")
    iterations = data.size // args.batch_size  # per epoch; the last partial batch is dropped
    if iterations == 0:
        raise UsageError(f"{data.size} training images are fewer than --batch-size {args.batch_size}")
    G, D, opt_G, opt_D = build(args, data.channels, device)
    fixed_noise = torch.randn(64, args.nz, device=device)  # the per-epoch grids use these z
    iteration, elapsed = 0, 0.0
    if ckpt:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        opt_G.load_state_dict(ckpt["opt_G"])
        opt_D.load_state_dict(ckpt["opt_D"])
        fixed_noise, iteration, elapsed = ckpt["fixed_noise"].to(device), ckpt["iteration"], ckpt["elapsed_s"]
        set_rng_state(ckpt["rng"])
    if world.size > 1:  # every process draws its own z: one seed, offset by rank and position
        torch.manual_seed(args.seed * 1_000_003 + iteration * 101 + world.rank)
    G_step, D_step, D_local = G, D, D
    if args.compile:
        G_step, D_step = torch.compile(G), torch.compile(D)
        D_local = D_step
        world.say(f"{SCRIPT}: torch.compile: G and D compile during the first steps")
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device.type == "cuda" else None
        G_step, D_step = DDP(G_step, device_ids=ids), DDP(D_step, device_ids=ids)
    amp = Amp(args.amp, device)
    if args.amp:
        world.say(f"{SCRIPT}: autocast to {amp.dtype}" + (" with a GradScaler" if amp.scaler.is_enabled() else ""))
    if args.channels_last:
        world.say(f"{SCRIPT}: channels-last memory layout")
    out, log = args.output_dir, None
    if world.rank == 0:  # process 0 alone writes
        make_output_dir(out)
        log = CsvLog(os.path.join(out, "log.csv"), LOG_COLUMNS, keep_until=iteration if ckpt else None)
        save_grid(data.real_sample(64), os.path.join(out, "real.png"))
    total = args.epochs * iterations
    last = min(total, iteration + 2) if args.dry_run else total
    log_every = 1 if args.dry_run else args.log_every
    world.say(f"{SCRIPT}: {vars(args)}\n{SCRIPT}: {data.size} images, {iterations} iterations of {args.batch_size} "
              f"per epoch{f' over {world.size} processes' if world.size > 1 else ''}; "
              f"{'resuming at' if ckpt else 'starting at'} iteration {iteration} of {total} on {device}")

    def checkpoint():
        if world.rank == 0:
            save_checkpoint(out, {
                "script": SCRIPT, "torch_version": str(torch.__version__), "args": vars(args),
                "epoch": iteration // iterations, "iteration": iteration, "elapsed_s": elapsed,
                "G": G.state_dict(), "D": D.state_dict(), "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                "fixed_noise": fixed_noise.cpu(), "rng": get_rng_state()})

    def grid():  # G(fixed z) after (the latest point of) each epoch; the GIF strings them together
        if world.rank == 0:
            save_grid(sample(G, fixed_noise), os.path.join(out, f"epoch_{-(-iteration // iterations):03d}.png"))

    sums, since = torch.zeros(4, device=device), 0
    start = tick = time.perf_counter()
    elapsed_before, first, stopping = elapsed, iteration, False
    with StopOnSignal() as stop:
        while iteration < last:
            epoch, step = divmod(iteration, iterations)
            for real in data.batches(epoch, step, args.batch_size, world):
                if args.channels_last:
                    real = real.contiguous(memory_format=torch.channels_last)
                sums += train_step(G_step, D_step, D_local, opt_G, opt_D, real, args, amp)
                iteration, since, step = iteration + 1, since + 1, step + 1
                stopping = world.agree(stop.requested)
                if iteration % log_every == 0 or iteration == last or stopping:
                    # The only host reads of the loop (they wait for the device): once per log line.
                    now = time.perf_counter()
                    elapsed = elapsed_before + now - start
                    loss_d_, loss_g_, d_x, d_g_z = (world.mean(sums) / since).tolist()
                    if not all(map(np.isfinite, (loss_d_, loss_g_))):
                        raise Diverged(f"loss is {loss_d_} (D), {loss_g_} (G) by iteration {iteration}; "
                                       f"the last good checkpoint is kept in {out}")
                    rate = since * args.batch_size / (now - tick)
                    if log:
                        log.write([epoch + 1, iteration, loss_d_, loss_g_, d_x, d_g_z, rate, elapsed])
                    world.say(f"[epoch {epoch + 1}/{args.epochs}][iter {step}/{iterations}]  loss_D {loss_d_:.3f}  "
                              f"loss_G {loss_g_:.3f}  D(x) {d_x:.3f}  D(G(z)) {d_g_z:.3f}  {rate:,.0f} img/s  "
                              f"ETA {eta((total - iteration) * (now - tick) / since)}")
                    sums, since, tick = torch.zeros(4, device=device), 0, now
                if iteration == last or stopping:
                    break
            grid()
            checkpoint()
            if stopping:
                world.say(f"{SCRIPT}: stopped at iteration {iteration}; checkpoint saved. Resume with:\n"
                          f"  python {SCRIPT}.py --resume --output-dir {out}")
                raise SystemExit(130)
    if world.rank == 0:
        log.close()
        save_gif(sorted(glob.glob(os.path.join(out, "epoch_*.png"))), os.path.join(out, "progress.gif"))
        plot_log(os.path.join(out, "log.csv"), os.path.join(out, "loss.png"), title=f"{SCRIPT} ({args.dataset})")
    done = iteration - first
    world.say(f"{SCRIPT}: done: {iteration} iterations, {elapsed:.1f} s in all; this session {done} iterations, "
              f"{done * args.batch_size / max(elapsed - elapsed_before, 1e-9):,.1f} img/s. Outputs in {out}")


def load_generator(args, ckpt, device):
    G = Generator(args.nz, args.ngf, channels_of(args.dataset), args.image_size).to(device)
    G.load_state_dict(ckpt["G"])
    return G


def generate(args, ckpt, device):
    seed_everything(args.seed)
    G = load_generator(args, ckpt, device)
    folder = os.path.join(args.output_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "[0-9]*.png")):  # an earlier, maybe larger, set
        os.remove(old)
    for start in range(0, args.generate, 500):
        z = torch.randn(min(500, args.generate - start), args.nz, device=device)
        save_images(sample(G, z), folder, start)
    print(f"{SCRIPT}: wrote {args.generate} images to {folder}")


def interpolate(args, ckpt, device, rows=8, steps=10):
    """Section 6.1, 'walking in the latent space': each row goes in a straight line from one random z
    to another; smooth changes along a row (rather than sudden jumps) suggest G has not memorised."""
    seed_everything(args.seed)
    G = load_generator(args, ckpt, device)
    ends = torch.randn(2, rows, args.nz, device=device)
    t = torch.linspace(0, 1, steps, device=device)[None, :, None]                # (1, steps, 1)
    z = ends[0][:, None] * (1 - t) + ends[1][:, None] * t                        # (rows, steps, nz)
    images = sample(G, z.reshape(rows * steps, args.nz))                         # row-major: row r, step s
    save_grid(images, os.path.join(args.output_dir, "interpolation.png"), nrow=steps)
    frames = images.view(rows, steps, *images.shape[1:]).transpose(0, 1)         # one frame per step
    pictures = [to_uint8(tile(f, nrow=rows // 2)[None])[0] for f in frames]
    save_gif(pictures + pictures[-2:0:-1], os.path.join(args.output_dir, "interpolation.gif"), seconds_per_frame=0.2)
    print(f"{SCRIPT}: wrote interpolation.png ({rows} walks of {steps} steps) and interpolation.gif to {args.output_dir}")


# ---- data ----

def channels_of(dataset):
    return 1 if dataset in ("mnist", "fashion-mnist") else 3


class Data:
    """The training images, handed out as batches in [-1, 1] on the device, in an order that is a
    function of (seed, epoch) alone, so that a resumed run continues exactly where it stopped.

    Under torchrun each process takes every world.size-th image of each global batch (what
    DistributedSampler does for a whole epoch), so the same global batches are seen whatever the
    number of processes, and a checkpoint written by N processes resumes in any other number."""

    def __init__(self, args, device, size, channels, images=None, dataset=None):
        self.args, self.device, self.size, self.channels = args, device, size, channels
        self.images, self.dataset = images, dataset   # a uint8 tensor on the device, or a Dataset

    def order(self, epoch):
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.args.seed * 100003 + epoch))

    def batches(self, epoch, step, batch_size, world):
        iterations = self.size // batch_size
        if self.args.dataset == "fake":  # random uint8 images made where they are used: no PIL, no copies
            shape = (batch_size // world.size, self.channels, self.args.image_size, self.args.image_size)
            for _ in range(step, iterations):
                yield to_model(torch.randint(0, 256, shape, dtype=torch.uint8, device=self.device))
            return
        order = self.order(epoch)
        take = [order[i * batch_size:(i + 1) * batch_size][world.rank::world.size] for i in range(step, iterations)]
        if self.images is not None:
            for index in take:
                yield self.resize(to_model(self.images[index.to(self.device)]))
            return
        from torch.utils.data import DataLoader
        loader = DataLoader(self.dataset, batch_sampler=[t.tolist() for t in take], num_workers=self.args.workers,
                            pin_memory=self.device.type == "cuda", worker_init_fn=ignore_signals,
                            collate_fn=stack_images)
        for batch in loader:
            yield to_model(batch.to(self.device, non_blocking=True))

    def resize(self, images):
        """In-memory datasets come at their own size (28 or 32): resized on the device, per batch."""
        size = self.args.image_size
        if images.shape[-1] == size:
            return images
        return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    def real_sample(self, n):
        if self.args.dataset == "fake":
            return to_model(torch.randint(0, 256, (n, 3, self.args.image_size, self.args.image_size),
                                          dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
        if self.images is not None:
            return self.resize(to_model(self.images[:n]))
        return to_model(torch.stack([self.dataset[i][0] for i in range(min(n, self.size))]))


def to_model(images):
    """uint8 images (N, C, H, W) in 0..255 -> floats in [-1, 1]: what G makes and D sees."""
    return images.float().div(127.5).sub(1)


def stack_images(items):
    return torch.stack([image for image, _ in items])


def ignore_signals(worker_id):
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which checkpoints and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def load_data(args, device):
    if args.dataset == "fake":
        return Data(args, device, FAKE_EPOCH, 3)
    if args.dataset in ("mnist", "fashion-mnist"):
        images = load_mnist(args)[:, None]                                      # (N, 1, 28, 28) uint8
        return Data(args, device, len(images), 1, images=images.to(device))
    if args.dataset == "cifar10":
        from torchvision.datasets import CIFAR10
        try:
            data = CIFAR10(args.dataroot, train=True, download=not os.path.isdir(
                os.path.join(args.dataroot, "cifar-10-batches-py"))).data           # (N, 32, 32, 3) uint8
        except Exception as e:
            raise UsageError(f"cannot load cifar10 from {args.dataroot}/cifar-10-batches-py ({one_line(e)}); "
                             "put the python version of CIFAR-10 there, or let torchvision download it")
        images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()           # (N, 3, 32, 32)
        return Data(args, device, len(images), 3, images=images.to(device))
    from torchvision import datasets, transforms
    size = args.image_size
    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    if args.dataset == "lsun":
        classes = [c if c.endswith(("_train", "_val")) else c + "_train" for c in args.classes.split(",") if c]
        missing = [c for c in classes if not os.path.isdir(os.path.join(args.dataroot, c + "_lmdb"))]
        if not classes or missing:
            raise UsageError(f"LSUN: no {', '.join(c + '_lmdb' for c in missing or ['<class>_train'])} in --dataroot "
                             f"{args.dataroot}; download with the LSUN project's download.py "
                             "(github.com/fyu/lsun: python download.py -c bedroom), unzip into --dataroot "
                             "so that it holds bedroom_train_lmdb/{data.mdb,lock.mdb}, and pass --classes bedroom")
        try:
            dataset = datasets.LSUN(args.dataroot, classes=classes, transform=transform)
        except Exception as e:
            raise UsageError(f"cannot read LSUN {','.join(classes)} in {args.dataroot} ({one_line(e)})")
    else:
        layout = {"celeba": "<dataroot>/img_align_celeba/*.jpg (the aligned images of CelebA, any one sub-folder)",
                  "lfw": "<dataroot>/<person>/*.jpg (the lfw folder of the LFW archive)",
                  "imagenet": "<dataroot>/<class>/*.JPEG (e.g. ILSVRC's train folder)",
                  "folder": "<dataroot>/<any sub-folder>/<images>"}[args.dataset]
        try:
            dataset = datasets.ImageFolder(args.dataroot, transform=transform)
        except Exception as e:
            raise UsageError(f"{args.dataset}: no images in --dataroot {args.dataroot} ({one_line(e)}); "
                             f"expected {layout}")
    if len(dataset) == 0:
        raise UsageError(f"{args.dataset}: no images in --dataroot {args.dataroot}")
    return Data(args, device, len(dataset), 3, dataset=dataset)


def load_mnist(args):
    """MNIST or Fashion-MNIST's training images as one uint8 tensor (N, 28, 28), through torchvision."""
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
                return cls(tmp, train=True).data
        return cls(args.dataroot, train=True, download=True).data  # downloads into --dataroot
    except Exception as e:
        raise UsageError(f"cannot load {args.dataset} from {raw} ({one_line(e)}); "
                         f"put {', '.join(n + '[.gz]' for n in names)} there, or let torchvision download them")


def one_line(e):
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


# ---- several processes (torchrun) ----

class World:
    """This process's place among those torchrun started (one process alone without torchrun)."""

    def __init__(self, device_name):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.flags = None
        self.device = pick_device(device_name)
        if self.size > 1:
            if self.device.type == "cuda":  # one GPU per process
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
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

    def close(self):
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ---- plumbing: options, checkpoints, logging, signals, errors ----

class UsageError(Exception):
    """Bad input: main() prints it as one line `error: ...` on stderr and exits with status 2."""


class Diverged(Exception):
    """A NaN or infinite loss: main() prints one line and exits with status 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own complaints become one line too
        raise UsageError(message)


def non_negative_int(text):
    if not text.lstrip("+").isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def positive_int(text):
    if not text.lstrip("+").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def to_float(text):
    """The number in text, or NaN (which every range check below rejects)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def positive_float(text):
    value = to_float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def probability(text):
    value = to_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def get_options(argv):
    """Parse argv. For --resume, --generate and --interpolate, also load the checkpoint: options the
    command line leaves out take the checkpoint's values, and those that shape the networks must match."""
    parser = build_parser()
    args, ckpt = parser.parse_args(argv), None
    if sum(map(bool, (args.resume, args.generate, args.interpolate))) > 1:
        raise UsageError("--resume, --generate and --interpolate exclude each other")
    path = os.path.join(args.output_dir, "checkpoint.pt")
    if args.resume or args.generate or args.interpolate:
        ckpt = load_checkpoint(path)
        saved = {k: v for k, v in ckpt["args"].items() if k not in RUN_KEYS}
        args = parser.parse_args(argv, argparse.Namespace(**saved))
        for key in MODEL_KEYS:
            if getattr(args, key) != ckpt["args"].get(key):
                raise UsageError(f"{path} was trained with --{key.replace('_', '-')} {ckpt['args'].get(key)}, "
                                 f"not {getattr(args, key)}")
    elif os.path.exists(path):
        raise UsageError(f"{path} exists: continue that run with --resume, or choose another --output-dir")
    if args.image_size not in IMAGE_SIZES:
        raise UsageError(f"--image-size {args.image_size}: must be one of {', '.join(map(str, IMAGE_SIZES))} "
                         "(each (de)convolution block doubles or halves the size, from 4x4)")
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
    world = None
    try:
        args, ckpt = get_options(argv)
        if args.generate or args.interpolate:
            (generate if args.generate else interpolate)(args, ckpt, pick_device(args.device))
        else:
            world = World(args.device)
            train(args, ckpt, world)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except Diverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        print("error: interrupted twice: stopped without a new checkpoint (the last one is kept)", file=sys.stderr)
        raise SystemExit(130)
    finally:
        if world is not None:
            world.close()


if __name__ == "__main__":
    main()
