#!/usr/bin/env python3
"""LSGAN: least-squares losses for D and G, on the paper's network or on DCGAN's.

Paper: Mao, Li, Xie, Lau, Wang and Smolley, "Least Squares Generative Adversarial Networks",
arXiv:1611.04076v3 (2017).

The method, Eq. 2:  min_D 1/2 E_x[(D(x) - b)^2] + 1/2 E_z[(D(G(z)) - a)^2],  min_G 1/2 E_z[(D(G(z)) - c)^2].
D outputs a raw score (no Sigmoid); a is the target for fakes, b for real data, c the score G wants.
--coding 0-1-1 (a=0, b=1, c=1: G wants its samples scored as real) is what the authors' released code
uses and our default; --coding pearson (a=-1, b=1, c=0) meets the conditions b - c = 1 and b - a = 2
under which Eq. 2 minimises the Pearson chi^2 divergence (section 3.2).
--loss bce trains the same networks with the regular GAN loss (sigmoid cross-entropy, non-saturating G).

Networks: --arch dcgan (default) is dcgan.py's network, so that the loss is the only difference from
dcgan.py; --arch lsgan is the paper's scene network (Fig. 3): z of 1024 -> fully connected 7x7x256 ->
3x3 transposed convolutions, stride 2 and 1 alternating -> 112x112; D: 5x5 stride-2 convolutions
64-128-256-512 with BatchNorm after the first, LeakyReLU(0.2), a linear score. Here it starts from
(size/16)^2, so 112 gives the paper's and 64 starts from 4x4. At 64x64 one training step costs
4.96 GFLOP per image against the DCGAN network's 2.27 (torch.utils.flop_counter), which is why it
is not the default on a CPU.
Hyper-parameters: Adam with beta1 0.5 (section 4.1, after DCGAN). --arch lsgan defaults to the
authors' released train_lsun.py: learning rate 1e-3, batch 64, z of 1024 (drawn there from U(-1, 1),
here from N(0, 1)); --arch dcgan keeps DCGAN's 2e-4 and batch 128.

The stability experiment (section 4.3): --dataset mixture8 is a 2-D mixture of 8 Gaussians on a
circle (radius 2, sigma 0.02), learnt by small MLPs (two hidden layers of 128 tanh units each, z of
256, batch 512, Adam lr 1e-3 for G and 1e-4 for D, as in the authors' mixture script); --loss ls|bce
compares the losses on the same networks. A run writes scatter plots and metrics.json: modes covered
(>= 1% of samples within 3 sigma of a centre) and the share of samples within 3 sigma of any centre.

Everything else (data, devices, --amp/--channels-last/--compile, torchrun, the run contract) is
dcgan.py's: `diff dcgan.py lsgan.py` shows the losses, the networks and the mixture.

Run:     python lsgan.py --dataset mnist --dataroot ../shared/data --epochs 1
         python lsgan.py --arch lsgan --image-size 112 --dataset lsun --classes church_outdoor --dataroot ~/lsun
         python lsgan.py --dataset mixture8 --loss bce --seed 3
Smoke:   python lsgan.py --dataset fake --dry-run --output-dir /tmp/lsgan-smoke
Sample:  python lsgan.py --generate 10000 --output-dir output/lsgan   # -> output/lsgan/samples/

Measured (2-core x86-64 CPU, torch 2.14.1; README.md has the commands): mixture8, defaults (10,000
steps, ~60 s a run), seeds 1-5: --loss ls covered 8/8 modes in 5/5 seeds, 64.6-89.0% of samples
within 3 sigma of a centre (median 85.7%); --loss bce 8/8 in 4/5 seeds, seed 2 lost a mode with only
32.7% near a centre (median 85.8%). MNIST at 64x64, defaults (--arch dcgan, 0-1-1, score layer at
N(0, 0.002)), seed 1, --epochs 1: 977 s, 61 img/s, FID 594 with 9 of 10 digits (the tenth, 0, at
1.6% of samples, under the scorer's 2% cut); seed 2: 1,068 s, FID 545, 10/10. dcgan.py's BCE on the
same network and steps: FID 530, 10/10. With DCGAN's N(0, 0.02) score layer the same run failed: FID
1249 with 2 of 10 digits, grey blurs. What else was tried, 312 steps each, scored the same way: D's
BatchNorm over one mixed real+fake batch, FID 1259 with 1 digit; --lr 1e-4, 1284 with 1 digit; the
score layer at 0.002, 733 with 8 digits (dcgan.py at step 312 of its epoch: 788 with 9).
"""
import argparse
import contextlib
import csv
import glob
import gzip
import json
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

SCRIPT = "lsgan"
DATASETS = ["cifar10", "lsun", "mnist", "fashion-mnist", "celeba", "folder", "imagenet", "lfw", "fake", "mixture8"]
IMAGE_SIZES = {"dcgan": [32, 64, 128, 256], "lsgan": [32, 64, 112, 128, 256]}
CODINGS = {"0-1-1": (0.0, 1.0, 1.0), "pearson": (-1.0, 1.0, 0.0)}  # (a, b, c) of Eq. 2
FAKE_EPOCH = 10_000  # images per "epoch" of --dataset fake
MIXTURE_EPOCH = 512_000  # points per "epoch" of --dataset mixture8 (1,000 batches of 512)
MIXTURE_RADIUS, MIXTURE_SIGMA = 2.0, 0.02
INIT_STD = 0.02  # std of the image networks' initial weights (DCGAN, section 4)
# Defaults that depend on the network or the data (None in the parser): nz, lr, lr-d, batch size, epochs.
DEFAULTS = {"dcgan": (100, 2e-4, None, 128, 5), "lsgan": (1024, 1e-3, None, 64, 5), "mixture8": (256, 1e-3, 1e-4, 512, 10)}


def build_parser():
    p = Parser(description="Mao et al. 2017: least-squares GAN on torchvision datasets and a 2-D mixture.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="cifar10",
                   help="cifar10, mnist and fashion-mnist download into --dataroot; the others must be there")
    g.add_argument("--dataroot", default="./data", help="where the dataset is (or is downloaded to)")
    g.add_argument("--classes", default="bedroom", help="LSUN categories, comma separated: bedroom -> bedroom_train_lmdb")
    g.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader processes (folder datasets, lsun)")
    g = p.add_argument_group("loss")
    g.add_argument("--loss", choices=["ls", "bce"], default="ls", help="least squares (Eq. 2) or the regular GAN loss")
    g.add_argument("--coding", choices=list(CODINGS), default="0-1-1",
                   help="a-b-c of Eq. 2: 0-1-1 (authors' code) or pearson (a=-1, b=1, c=0)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=["dcgan", "lsgan"], default="dcgan",
                   help="dcgan.py's network, or the paper's scene network (Fig. 3)")
    g.add_argument("--image-size", type=int, default=64, help=f"dcgan: {IMAGE_SIZES['dcgan']}; lsgan: "
                   f"{IMAGE_SIZES['lsgan']} (paper: 112)")
    g.add_argument("--nz", type=positive_int, help="size of z (default: 100 dcgan, 1024 lsgan, 256 mixture8)")
    g.add_argument("--ngf", type=positive_int, default=64, help="--arch dcgan: G's channels in its last block")
    g.add_argument("--ndf", type=positive_int, default=64, help="--arch dcgan: D's channels in its first block")
    g.add_argument("--score-std", type=positive_float,
                   help="image networks: std of the initial weights of D's score layer (default: 0.002 for "
                   "--loss ls on --arch dcgan, a deviation measured in the docstring; 0.02 otherwise, as DCGAN "
                   "section 4 and the authors' code)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, help="passes over the training set (default: 5; 10 of 1,000 steps for mixture8)")
    g.add_argument("--batch-size", type=positive_int,
                   help="per step, over all processes (default: 128 dcgan, 64 lsgan, 512 mixture8)")
    g.add_argument("--lr", type=positive_float, help="Adam's rate for G, and D (default: 2e-4 dcgan, "
                   "1e-3 lsgan and mixture8)")
    g.add_argument("--lr-d", type=positive_float, help="D's rate when it differs (default: --lr; 1e-4 mixture8)")
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
MODEL_KEYS = ("dataset", "classes", "arch", "image_size", "nz", "ngf", "ndf")
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



class LSGANGenerator(nn.Module):
    """--arch lsgan: the paper's scene G (Fig. 3a), z -> fc -> (size/16)^2 x 256 -> 3x3 transposed
    convolutions, stride 2 and 1 alternating -> image. At 112x112 this is exactly the paper's."""

    def __init__(self, nz=1024, nc=3, image_size=64):
        super().__init__()
        self.start = image_size // 16
        self.fc = nn.Sequential(nn.Linear(nz, 256 * self.start ** 2, bias=False),   # (N, 256 s^2), s = size/16
                                nn.BatchNorm1d(256 * self.start ** 2), nn.ReLU(inplace=True))

        def up(cin, cout, stride):  # 3x3 transposed convolution: stride 2 doubles H and W, stride 1 keeps them
            return [nn.ConvTranspose2d(cin, cout, 3, stride, 1, output_padding=stride - 1, bias=False),
                    nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
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
    """--arch lsgan: the paper's scene D (Fig. 3b): 5x5 stride-2 convolutions 64-128-256-512, BatchNorm
    after the first, LeakyReLU(0.2), then a linear layer to one raw score (no Sigmoid)."""

    def __init__(self, nc=3, image_size=64):
        super().__init__()

        def down(cin, cout, bn=True):  # 5x5, stride 2: halves H and W
            return [nn.Conv2d(cin, cout, 5, 2, 2, bias=not bn)] + ([nn.BatchNorm2d(cout)] if bn else []) + \
                   [nn.LeakyReLU(0.2, inplace=True)]
        self.net = nn.Sequential(
            *down(nc, 64, bn=False),   # (N, 64, size/2, size/2)    no BN on D's input layer
            *down(64, 128),            # (N, 128, size/4, size/4)
            *down(128, 256),           # (N, 256, size/8, size/8)
            *down(256, 512),           # (N, 512, size/16, size/16) at 112: 7x7
            nn.Flatten(),
            nn.Linear(512 * (image_size // 16) ** 2, 1))       # (N, 1): a raw score

    def forward(self, x):
        return self.net(x).view(-1)                            # (N,)

class MixtureGenerator(nn.Module):
    """mixture8: z (256) -> 128 -> 128 -> a 2-D point, tanh hidden units (the authors' mixture script)."""

    def __init__(self, nz=256, hidden=128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(nz, hidden), nn.Tanh(),       # (N, 128)
                                 nn.Linear(hidden, hidden), nn.Tanh(),   # (N, 128)
                                 nn.Linear(hidden, 2))                   # (N, 2): a point in the plane

    def forward(self, z):
        return self.net(z)


class MixtureDiscriminator(nn.Module):
    """mixture8: a 2-D point -> 128 -> 128 -> one raw score, tanh hidden units."""

    def __init__(self, hidden=128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(),        # (N, 128)
                                 nn.Linear(hidden, hidden), nn.Tanh(),   # (N, 128)
                                 nn.Linear(hidden, 1))                   # (N, 1)

    def forward(self, x):
        return self.net(x).view(-1)                                      # (N,)


def init_weights(module):
    """Image networks: weights from N(0, 0.02) (DCGAN, section 4; the authors' code does the same);
    BatchNorm scale N(1, 0.02), shift 0. The mixture MLPs keep PyTorch's default initialisation."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ---- the losses ----

def d_loss(scores, real, loss="ls", coding="0-1-1"):
    """D's loss, one term per call: `real` says whether the scores are of real or generated images."""
    if loss == "bce":
        # The regular GAN (Eq. 1 of Goodfellow et al.): D ascends log D(x) + log(1 - D(G(z))), i.e. descends
        # BCE(D(x), 1) + BCE(D(G(z)), 0), on logits.
        return F.binary_cross_entropy_with_logits(scores, torch.full_like(scores, float(real)))
    a, b, _ = CODINGS[coding]
    # Eq. 2, D's side: 1/2 E_x[(D(x) - b)^2] + 1/2 E_z[(D(G(z)) - a)^2]: the mean of the squares, on raw scores.
    return 0.5 * (scores - (b if real else a)).pow(2).mean()


def g_loss(fake_scores, loss="ls", coding="0-1-1"):
    if loss == "bce":
        # The regular GAN's non-saturating G (Goodfellow et al., section 3): descend -log D(G(z)).
        return F.binary_cross_entropy_with_logits(fake_scores, torch.ones_like(fake_scores))
    _, _, c = CODINGS[coding]
    # Eq. 2, G's side: 1/2 E_z[(D(G(z)) - c)^2].
    return 0.5 * (fake_scores - c).pow(2).mean()


# ---- one iteration ----

def train_step(G, D, D_local, opt_G, opt_D, real, args, amp):
    """One D-step then one G-step on a batch. Returns device tensors: no host reads here."""
    z = torch.randn(len(real), args.nz, device=real.device)  # this process's share of the batch
    # (1) D: the real and the generated batch in separate forward passes, so that each BatchNorm
    # normalises a pure batch, as in the authors' code; each is backpropagated before the next forward,
    # so one graph of D is held at a time (lower peak memory; README.md). Under DDP, D's gradients are
    # summed locally and reduced once, after the second.
    opt_D.zero_grad(set_to_none=True)
    with getattr(D, "no_sync", contextlib.nullcontext)():
        with amp.autocast():
            real_scores = D(real)
            loss_real = d_loss(real_scores.float(), True, args.loss, args.coding)
        amp.backward(loss_real)
    with amp.autocast():
        fake = G(z)
        fake_scores = D(fake.detach())
        loss_fake = d_loss(fake_scores.float(), False, args.loss, args.coding)
    amp.backward(loss_fake)
    amp.step(opt_D)
    loss_d = loss_real + loss_fake
    # (2) G: through the updated D. D's weights need no gradients here (saves their computation);
    # under DDP the local module is used, as D's gradients are not reduced in this step.
    D_local.requires_grad_(False)
    with amp.autocast():
        loss_g = g_loss(D_local(fake).float(), args.loss, args.coding)
    opt_G.zero_grad(set_to_none=True)
    amp.backward(loss_g)
    amp.step(opt_G)
    D_local.requires_grad_(True)
    # Logged as D(x) and D(G(z)): probabilities for bce, the raw scores for ls (compare with a and b).
    squash = torch.sigmoid if args.loss == "bce" else (lambda scores: scores)
    d_x, d_g_z = squash(real_scores.float()).mean(), squash(fake_scores.float()).mean()
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


def networks(args, nc):
    if args.dataset == "mixture8":
        return MixtureGenerator(args.nz), MixtureDiscriminator()
    if args.arch == "lsgan":
        return LSGANGenerator(args.nz, nc, args.image_size), LSGANDiscriminator(nc, args.image_size)
    return Generator(args.nz, args.ngf, nc, args.image_size), Discriminator(args.ndf, nc, args.image_size)


def build(args, nc, device):
    G, D = networks(args, nc)
    G, D = G.to(device), D.to(device)
    if args.dataset != "mixture8":
        G.apply(init_weights)
        D.apply(init_weights)
        # Deviation (--score-std): on DCGAN's network the least-squares D starts with its score layer at
        # N(0, 0.002), a tenth of DCGAN's 0.02. That layer sums 8,192 inputs at 64x64, so at 0.02 the first
        # scores spread with std ~1 around the 0/1 targets and the squares blow up: in one epoch of MNIST
        # at 0.02, loss_D 3-6 and loss_G 7-16 over steps 10-44 and a collapse to 2 digits (FID 1249); at
        # 0.002 the losses stay below 1 from the start (see the docstring for the measured epoch).
        with torch.no_grad():
            D.net[-1].weight.mul_(args.score_std / INIT_STD)  # N(0, 0.02) rescaled: no extra random draws
    if args.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    # fused Adam: one kernel updates all of a network's parameters (CPU and CUDA; MPS uses foreach).
    fused = device.type in ("cpu", "cuda")
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), fused=fused)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(args.beta1, args.beta2), fused=fused)
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
    fixed_noise = torch.randn(2000 if args.dataset == "mixture8" else 64, args.nz, device=device)  # for the pictures
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
        save_picture(data.real_sample(len(fixed_noise)), os.path.join(out, "real.png"), args, "real data")
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
            epoch = -(-iteration // iterations)
            save_picture(sample(G, fixed_noise), os.path.join(out, f"epoch_{epoch:03d}.png"), args, f"epoch {epoch}")

    sums, since = torch.zeros(4, device=device), 0
    start = tick = time.perf_counter()
    elapsed_before, first, stopping = elapsed, iteration, False
    with StopOnSignal() as stop:
        while iteration < last:
            epoch, step = divmod(iteration, iterations)
            for real in data.batches(epoch, step, args.batch_size, world):
                if args.channels_last and real.dim() == 4:
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
        if args.dataset == "mixture8":
            scores = mixture_scores(sample(G, torch.randn(10_000, args.nz, device=device)))
            with open(os.path.join(out, "metrics.json"), "w") as f:
                json.dump(scores, f)
            world.say(f"{SCRIPT}: mixture8 ({args.loss}): {scores['modes']} of 8 modes covered, "
                      f"{scores['share_within_3sigma']:.1%} of samples within 3 sigma of a centre")
    done = iteration - first
    world.say(f"{SCRIPT}: done: {iteration} iterations, {elapsed:.1f} s in all; this session {done} iterations, "
              f"{done * args.batch_size / max(elapsed - elapsed_before, 1e-9):,.1f} img/s. Outputs in {out}")


def load_generator(args, ckpt, device):
    G = networks(args, channels_of(args.dataset))[0].to(device)
    G.load_state_dict(ckpt["G"])
    return G


def generate(args, ckpt, device):
    seed_everything(args.seed)
    G = load_generator(args, ckpt, device)
    if args.dataset == "mixture8":  # points, not images: one array
        path = os.path.join(args.output_dir, "samples.npy")
        np.save(path, sample(G, torch.randn(args.generate, args.nz, device=device)).cpu().numpy())
        print(f"{SCRIPT}: wrote {args.generate} points to {path}")
        return
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
    if args.dataset == "mixture8":
        raise UsageError("--interpolate walks between images; mixture8 makes points")
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

def save_picture(samples, path, args, title=""):
    """Images as a grid; mixture8's points as a scatter plot over the 8 centres."""
    if args.dataset != "mixture8":
        return save_grid(samples, path)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points, centres = samples.detach().float().cpu().numpy(), mixture_centres().numpy()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, color="tab:blue")
    ax.scatter(centres[:, 0], centres[:, 1], s=30, marker="x", color="tab:red")
    ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", title=f"{args.loss}: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def mixture_centres():
    angles = torch.arange(8) * (2 * math.pi / 8)
    return MIXTURE_RADIUS * torch.stack([angles.cos(), angles.sin()], 1)   # (8, 2)


def mixture_scores(points):
    """A mode is covered when >= 1% of the points lie within 3 sigma of its centre."""
    distance = torch.cdist(points.float().cpu(), mixture_centres())       # (N, 8)
    near = distance <= 3 * MIXTURE_SIGMA
    per_mode = near.float().mean(0)
    return {"modes": int((per_mode >= 0.01).sum()), "share_within_3sigma": near.any(1).float().mean().item(),
            "share_per_mode": [round(v, 4) for v in per_mode.tolist()]}


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
        if self.args.dataset == "mixture8":  # fresh points every step: a centre at random, plus N(0, sigma^2)
            centres = mixture_centres().to(self.device)
            for _ in range(step, iterations):
                pick = torch.randint(0, 8, (batch_size // world.size,), device=self.device)
                yield centres[pick] + MIXTURE_SIGMA * torch.randn(len(pick), 2, device=self.device)
            return
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
        if self.args.dataset == "mixture8":
            g = torch.Generator().manual_seed(0)
            return mixture_centres()[torch.randint(0, 8, (n,), generator=g)] + MIXTURE_SIGMA * torch.randn(n, 2, generator=g)
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
    if args.dataset == "mixture8":
        return Data(args, device, MIXTURE_EPOCH, 2)
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
    nz, lr, lr_d, batch_size, epochs = DEFAULTS["mixture8" if args.dataset == "mixture8" else args.arch]
    args.nz, args.lr, args.batch_size, args.epochs = args.nz or nz, args.lr or lr, args.batch_size or batch_size, args.epochs or epochs
    args.lr_d = args.lr_d or lr_d or args.lr
    if args.score_std is None:
        args.score_std = 0.002 if args.loss == "ls" and args.arch == "dcgan" else INIT_STD
    sizes = IMAGE_SIZES[args.arch]
    if args.dataset != "mixture8" and args.image_size not in sizes:
        raise UsageError(f"--image-size {args.image_size}: --arch {args.arch} takes {', '.join(map(str, sizes))} "
                         "(each (de)convolution block doubles or halves the size)")
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
