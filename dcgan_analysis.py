#!/usr/bin/env python3
"""What a dcgan.py run learned: the DCGAN paper's sections 5 and 6, one sub-command each.

Paper: Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", arXiv:1511.06434v2 (2016). Beside dcgan.py as the authors keep
generate.lua and arithmetic.lua beside main.lua: each sub-command reads RUN/checkpoint.pt (and the
z bank RUN/samples/z.pt that `dcgan.py --generate N` keeps), writes into RUN and exits.
  index        index.png: the z bank's first 256 samples, numbered, to pick exemplars from
  nearest      4.1: each sample's nearest training image, and the mean distance: nearest.png
  classify     5.1-5.2: a linear L2-SVM on D's features, D's as initialised, pixels: classify.json
  visualize-d  6.2, Fig. 5: guided backpropagation of D's last block: d_features.png
  forget       6.3.1, Fig. 6: drop the maps of G that draw what boxes mark: forget.png
  arithmetic   6.3.2, Fig. 7: arithmetic on the mean z of exemplars: arithmetic.png
Deviations (each also stated where it happens):
  - D's features come from the dataset D learned, not ImageNet-1k; C is chosen on 5,000 held-out
    training images (the paper: 10,000);
  - D's BatchNorm runs in eval mode on statistics of real images alone;
  - visualize-d shows the 8 strongest units; forget reads G's 16x16 block (the paper dropped 200
    maps, more than its 32x32 block has); arithmetic's noise is rescaled to our N(0, 1) z.

Run:  python dcgan.py --generate 256 --output-dir RUN
      python dcgan_analysis.py index --output-dir RUN
      python dcgan_analysis.py nearest --output-dir RUN [--dataroot DIR]
      python dcgan_analysis.py classify --output-dir RUN [--labels 1000 --draws 3 --dataroot DIR]
      python dcgan_analysis.py visualize-d --output-dir RUN [--dataroot DIR]
      python dcgan_analysis.py forget BOXES.json --output-dir RUN
      python dcgan_analysis.py arithmetic "3,17,40 - 5,8,21 + 9,33,61" --output-dir RUN
"""
import argparse
import glob
import json
import math
import os
import re

import imageio.v3 as iio
import torch
import torch.nn as nn
import torch.nn.functional as F

import dcgan
from dcgan import fail
import utils
from utils import save_grid, tile, to_uint8


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        fail(message)


def build_parser():
    p = Parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    commands = p.add_subparsers(dest="command", required=True)

    def command(name, help, data=False):
        c = commands.add_parser(name, help=help, allow_abbrev=False)
        c.add_argument("--output-dir", default=os.path.join("output", "dcgan"), help="the run")
        c.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
        if data:
            c.add_argument("--dataroot", help="where the data is (default: the run's)")
            c.add_argument("--workers", type=dcgan.number(int, 0), help="decoding processes")
        return c
    command("index", "index.png: the z bank's first 256 samples, numbered")
    command("nearest", "4.1: the z bank's samples beside their nearest training images", data=True)
    c = command("classify", "5.1: a linear L2-SVM on D's features", data=True)
    c.add_argument("--labels", type=dcgan.number(int, 1), default=1000,
                   help="labelled training images, as many per class (paper: 1,000)")
    c.add_argument("--draws", type=dcgan.number(int, 1), default=3, help="draws of the labels")
    command("visualize-d", "6.2: guided backpropagation of D's last block", data=True)
    c = command("forget", "6.3.1: drop the maps of G that draw what the boxes mark")
    c.add_argument("boxes", help='BOXES.json: {"<z bank index>": [[x0, y0, x1, y1], ...], ...}')
    c = command("arithmetic", "6.3.2: arithmetic on the mean z of z-bank samples")
    c.add_argument("terms", help='z-bank indices: "A - B + C", each a comma-separated list')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    ckpt = dcgan.load(os.path.join(args.output_dir, "checkpoint.pt"), "checkpoint")
    run = argparse.Namespace(**{**ckpt["args"], **{k: v for k, v in vars(args).items()
                                                   if v is not None}})
    run.cache, device = False, dcgan.pick_device(args.device)  # a few images: no uint8 cache
    COMMANDS[args.command](run, ckpt, device)


# ---- the z bank and G ----

def z_bank(run):
    """dcgan.py --generate's z, (N, nz): row i drew samples/<i>.png."""
    path = os.path.join(run.output_dir, "samples", "z.pt")
    if not os.path.isfile(path):
        fail(f"no z bank at {path}: run dcgan.py --generate N first (it keeps its samples' z)")
    return dcgan.load(path, "z bank")["z"]


def bank_index(text, count, where):
    if not (str(text).strip().isdigit() and int(text) < count):
        fail(f"{where}: {str(text).strip()!r} is not a sample of the z bank (0 to {count - 1}: "
             "the numbers of --generate's files and index.png)")
    return int(text)


def generator(run, ckpt, device):
    G = dcgan.Generator(run.nz, run.ngf, dcgan.channels_of(run.dataset), run.image_size)
    G.load_state_dict(ckpt["G"])
    return G.to(device)


def index(run, ckpt, device, count=256, nrow=16, strip=12):
    """The first `count` samples of --generate, tiled nrow a row, each with its number under it."""
    from PIL import Image, ImageDraw
    names = sorted(glob.glob(os.path.join(run.output_dir, "samples", "[0-9]*.png")))[:count]
    if not names:
        fail(f"no samples in {run.output_dir}/samples: run dcgan.py --generate N first")
    images = torch.stack([torch.as_tensor(iio.imread(name)) for name in names]).float()
    images = (images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)) / 127.5 - 1
    size = images.shape[-1]
    cells = F.pad(images.expand(-1, 3, -1, -1), (0, 0, 0, strip), value=1.0)
    picture = Image.fromarray(to_uint8(tile(cells, nrow)[None])[0])
    draw = ImageDraw.Draw(picture)
    for i in range(len(images)):
        row, column = divmod(i, nrow)
        draw.text((column * (size + 2) + 4, row * (size + strip + 2) + size + 2), str(i),
                  fill=(0, 0, 0))
    picture.save(os.path.join(run.output_dir, "index.png"))
    print(f"dcgan_analysis: wrote index.png: samples 0 to {len(images) - 1}, numbered")


def nearest(run, ckpt, device, shown=32):
    """Section 4.1 (and the GAN paper's Fig. 2): does G copy its training images? nearest.png: the
    z bank's first 32 samples, each followed by its nearest training image (Euclidean, pixels at
    the run's size); and the mean distance to the nearest training image of the z bank's samples
    and of as many held-out images, which no network saw. Labelled datasets, as classify."""
    G, bank = generator(run, ckpt, device).eval(), z_bank(run)
    train, _, test, _ = labelled(run)
    samples = torch.cat([dcgan.sample(G, z.to(device)).cpu() for z in bank.split(256)])
    held_out = torch.cat([x.cpu() for x in images(run, test, torch.arange(min(len(bank),
                                                                             len(test))), device)])
    points = torch.cat([samples, held_out])
    best, start = torch.full((len(points),), math.inf), 0
    found = torch.zeros(len(points), dtype=torch.long)  # the index of each point's nearest
    for batch in images(run, train, torch.arange(len(train)), device):
        distance, which = utils.nearest(points, batch.cpu())
        closer = distance < best
        best[closer], found[closer] = distance[closer], (which + start)[closer]
        start += len(batch)
    shown = min(shown, len(samples))
    neighbours = torch.cat(list(images(run, train, found[:shown], device))).cpu()
    pairs = torch.stack([samples[:shown], neighbours], 1).flatten(0, 1)  # sample, its neighbour
    save_grid(pairs, os.path.join(run.output_dir, "nearest.png"))
    print(f"dcgan_analysis: wrote nearest.png; mean L2 distance to the nearest training image: "
          f"{len(samples):,} samples {best[:len(samples)].mean():.2f}, {len(held_out):,} held-out "
          f"images {best[len(samples):].mean():.2f}")


# ---- D's features ----

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


def two_ds(run, ckpt, device):
    """D as trained, and D as this seed initialised it (build() after the seed, as train() does)."""
    D = dcgan.Discriminator(run.ndf, dcgan.channels_of(run.dataset), run.image_size).to(device)
    D.load_state_dict(ckpt["D"])
    torch.manual_seed(run.seed)
    return {"trained D": D, "random D": dcgan.build(run, D.net[0].in_channels, device)[1]}


def real_statistics(D, batches):
    """D in eval mode on BatchNorm statistics of real images alone (a cumulative average over
    `batches`), as D's real batches were normalised in training: D's running averages mix two
    generated batches to each real one (dcgan.train_step)."""
    for m in D.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    D.train()
    with torch.no_grad():
        for x in batches:
            D(x)
    return D.eval()


def labelled(run):
    """uint8 images (N, C, H, W) and labels of the training and test split. folder, imagenet: no
    test split; 20% of the images (up to 10,000), drawn by the seed, are held out instead."""
    if run.dataset in ("mnist", "fashion-mnist", "cifar10"):
        return (*dcgan.labelled(run), *dcgan.labelled(run, train=False))
    if run.dataset not in ("folder", "imagenet"):
        fail(f"{run.command} needs labels, and {run.dataset} has none here: use mnist, "
             "fashion-mnist, cifar10, or folder/imagenet with one sub-folder per class")
    from torch.utils.data import Subset
    data = dcgan.load_data(run, None).dataset
    if len(data.classes) < 2:
        fail(f"classify: {run.dataroot} holds one class; it needs a sub-folder per class")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(run.seed))
    cut, targets = min(10_000, len(data) // 5), torch.tensor(data.targets)
    test, train = order[:cut], order[cut:]
    return Subset(data, train.tolist()), targets[train], Subset(data, test.tolist()), targets[test]


def images(run, source, index, device):
    """Images `index` of source (uint8 images, or a dataset decoded now) in [-1, 1], 256 a batch."""
    from torch.utils.data import Subset
    for part in index.split(256):
        if isinstance(source, torch.Tensor):
            x = source[part]
        else:
            x = torch.cat(list(dcgan.decoder(Subset(source, part.tolist()), run.workers,
                                             torch.device("cpu"), batch_size=256)))
            if len(x) < len(part):  # its label would go to the next image
                fail("classify needs every labelled image: delete or replace the one left out")
        yield dcgan.resize(dcgan.to_model(x.to(device)), run.image_size)


def features(D, batches):
    """Every D block's output max-pooled to 4x4, flattened and concatenated; D None: the pixels."""
    with torch.no_grad():
        return torch.cat([x.flatten(1).cpu() if D is None else torch.cat(
            [F.adaptive_max_pool2d(b, 4).flatten(1) for b in d_blocks(D, x)], 1).cpu()
            for x in batches])


def svm_loss(scores, norm2, labels, C):
    """Section 5.1's L2-SVM, one-vs-rest (squared hinge, bias not penalised): 1/2 |W|^2 +
    C sum_i sum_k max(0, 1 - t_ik s_ik)^2, t_ik = 1 for i's class and -1 for the others."""
    t = F.one_hot(labels, scores.shape[1]) * 2.0 - 1
    return 0.5 * norm2 + C * F.relu(1 - t * scores).square().sum()


def linear_fit(x, labels, C):
    """The L2-SVM's W (features + 1, classes), the last row the bias, by L-BFGS from 0. The
    optimum lies in the rows' span (the representer theorem): the fit runs on A, W = x^T A,
    through the rows' Gram matrix, 1,000 x 1,000 where x is 1,000 x 15,360. Not scikit-learn's
    LinearSVC: on these features it took 30-180 s a fit (45 fits), this whole table 4 minutes."""
    gram, classes = x @ x.T, int(labels.max()) + 1
    A = torch.zeros(len(x) + 1, classes, requires_grad=True)
    opt = torch.optim.LBFGS([A], max_iter=500, tolerance_change=1e-7, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        scores = gram @ A[:-1]
        value = svm_loss(scores + A[-1], (A[:-1] * scores).sum(), labels, C)
        value.backward()
        return value
    opt.step(objective)
    return torch.cat([x.T @ A[:-1], A[-1:]]).detach()


def accuracy_of(W, x, labels):
    return ((x @ W[:-1] + W[-1]).argmax(1) == labels).float().mean().item()


def classify(run, ckpt, device, grid=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)):
    """Sections 5.1-5.2: a linear L2-SVM (squared hinge, one-vs-rest: svm_loss) on features(),
    from --labels training images, as many per class (the paper's SVHN protocol: 1,000),
    standardised on them (std floored at 0.1 of its mean); C from `grid` by the accuracy on
    5,000 other training images; test accuracy for --draws draws of the labels. Rows: trained D,
    the same D as initialised, the pixels D sees. Deviation: the paper's D learned ImageNet-1k and
    classified CIFAR-10 and SVHN; here D has seen the images (not the labels) it classifies."""
    train, y, test, test_y = labelled(run)
    classes = int(y.max()) + 1
    n, order = run.labels // classes, torch.randperm(len(y), generator=torch.Generator(
        ).manual_seed(run.seed))
    held, pool, draws = order[:min(5000, len(y) // 4)], order[min(5000, len(y) // 4):], []
    members = [pool[y[pool] == c] for c in range(classes)]
    if n == 0 or min(map(len, members)) < n:
        fail(f"--labels {run.labels}: {n} a class for {classes} classes, and the fewest training "
             f"images of a class (outside the held-out ones) is {min(map(len, members))}")
    for k in range(run.draws):
        g = torch.Generator().manual_seed(run.seed * 1000 + k)
        draws.append(torch.cat([m[torch.randperm(len(m), generator=g)[:n]] for m in members]))
    rows = {}
    for name, D in [*two_ds(run, ckpt, device).items(), ("pixels", None)]:
        if D is not None:
            real_statistics(D, images(run, train, held, device))
        x = features(D, images(run, train, torch.cat(draws), device)).split(n * classes)
        held_x = features(D, images(run, train, held, device))
        test_x = features(D, images(run, test, torch.arange(len(test_y)), device))
        rows[name] = {"features": x[0].shape[1], "accuracy": []}
        for part, draw in zip(x, draws):
            mean, std = part.mean(0), part.std(0)  # a floor: no near-constant feature blows up
            std = std.clamp_min(0.1 * std.mean())
            fits = [linear_fit((part - mean) / std, y[draw], C) for C in grid]
            best = max(fits, key=lambda W: accuracy_of(W, (held_x - mean) / std, y[held]))
            rows[name]["accuracy"].append(accuracy_of(best, (test_x - mean) / std, test_y))
        accuracy = rows[name]["accuracy"]
        rows[name].update(mean=sum(accuracy) / len(accuracy), spread=max(accuracy) - min(accuracy))
    path = os.path.join(run.output_dir, "classify.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"dataset": run.dataset, "epoch": ckpt["epoch"], "labels": n * classes,
                   "held_out": len(held), "test_images": len(test_y), "rows": rows}, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"dcgan_analysis: test accuracy of a linear L2-SVM on {n * classes} labels "
          f"({run.draws} draws, {len(test_y)} test images): mean (max - min) of the draws")
    for name, row in rows.items():
        print(f"  {name:9} {row['features']:6d} features  {100 * row['mean']:5.1f}% "
              f"({100 * row['spread']:.1f})")
    print(f"dcgan_analysis: wrote {path}")


def visualize_d(run, ckpt, device, units=8, top=8):
    """Section 6.2, Fig. 5: guided backpropagation of D's last block. A row per unit of the
    `units` that respond most (mean of their strongest position) to 1,024 real images: its `top`
    images, as the input gradients of its strongest response; trained D left, initial D right.
    The paper shows its first 6 units; ours are the strongest, so that none is dead."""
    real = dcgan.load_data(run, device).real_sample(1024).to(device)
    top, maps = min(top, len(real)), []
    for D in two_ds(run, ckpt, device).values():
        real_statistics(D, real.split(128))
        with torch.no_grad():
            response = torch.cat([d_blocks(D, x)[-1].flatten(2).amax(2) for x in real.split(128)])
        for unit in response.mean(0).topk(units).indices:                # (images, 8ndf) above
            x = real[response[:, unit].topk(top).indices].clone().requires_grad_(True)
            d_blocks(D, x, guided=True)[-1][:, unit].flatten(1).amax(1).sum().backward()
            g = x.grad - x.grad.mean((1, 2, 3), keepdim=True)
            maps.append(g / (3 * g.flatten(1).std(1)[:, None, None, None] + 1e-12))
    rows = [torch.cat([maps[i], torch.ones_like(maps[i][:1]), maps[units + i]])
            for i in range(units)]
    save_grid(torch.cat(rows), os.path.join(run.output_dir, "d_features.png"), nrow=2 * top + 1)
    print(f"dcgan_analysis: wrote d_features.png: a row per unit, its {top} strongest images; "
          "trained D left, D as initialised right")


# ---- G's maps and z ----

def read_boxes(path, count, size):
    """BOXES.json: {"<z bank index>": [[x0, y0, x1, y1], ...], ...}: pixel boxes on samples."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        data = f"{type(e).__name__}: {e};"

    def box(b):
        return (isinstance(b, list) and len(b) == 4 and all(type(v) in (int, float) for v in b)
                and 0 <= b[0] < b[2] <= size and 0 <= b[1] < b[3] <= size)
    if not (isinstance(data, dict) and data and all(isinstance(v, list) and v and all(map(box, v))
                                                    for v in data.values())):
        fail(f"forget {path}: {data if isinstance(data, str) else 'not'} one JSON object mapping "
             f"z-bank indices to lists of [x0, y0, x1, y1] boxes, 0 <= x0 < x1 <= {size}, "
             f"0 <= y0 < y1 <= {size}")
    return {bank_index(key, count, f"forget {path}"): value for key, value in data.items()}


def forget(run, ckpt, device, n=10):
    """Section 6.3.1, Fig. 6: BOXES.json marks an object on z-bank samples; a logistic regression
    (scikit-learn's, L2-regularised) on G's second-highest block (16x16 at 64x64) tells its
    positions inside a box from as many random ones outside; the maps with a positive weight are
    zeroed everywhere; n new z drawn with them and without. The block: the paper dropped 200 maps,
    more than its 32x32 block has (128), so its 16x16 one (256)."""
    from sklearn.linear_model import LogisticRegression
    G, bank = generator(run, ckpt, device), z_bank(run)
    boxes = read_boxes(run.boxes, len(bank), run.image_size)
    block, seen = [m for m in G.net if isinstance(m, nn.ReLU)][-2], []  # (N, 2ngf, 16, 16)
    hook = block.register_forward_hook(lambda module, inputs, out: seen.append(out.float().cpu()))
    dcgan.sample(G, bank[list(boxes)].to(device))
    hook.remove()
    side, C = seen[0].shape[-1], seen[0].shape[1]
    centre = (torch.arange(side) + 0.5) * run.image_size / side  # of each position, in pixels
    inside = torch.zeros(len(boxes), side, side, dtype=torch.bool)
    for i, marked in enumerate(boxes.values()):
        for x0, y0, x1, y1 in marked:
            rows_in, columns_in = (centre >= y0) & (centre < y1), (centre >= x0) & (centre < x1)
            inside[i] |= rows_in[:, None] & columns_in[None]
    positives, outside = inside.flatten().nonzero()[:, 0], (~inside).flatten().nonzero()[:, 0]
    if not len(positives) or not len(outside):
        fail(f"forget {run.boxes}: the boxes cover {'no' if not len(positives) else 'every'} "
             f"position of G's {side}x{side} block: draw boxes over an object, not the image")
    g = torch.Generator().manual_seed(run.seed)
    negatives = outside[torch.randperm(len(outside), generator=g)[:len(positives)]]
    positions = seen[0].permute(0, 2, 3, 1).reshape(-1, C)
    fit = LogisticRegression(max_iter=10_000).fit(
        torch.cat([positions[positives], positions[negatives]]).numpy(),
        [1] * len(positives) + [0] * len(negatives))
    weight = torch.as_tensor(fit.coef_[0])
    drop, z = (weight > 0).nonzero()[:, 0], torch.randn(n, run.nz, generator=g).to(device)
    keep = (weight <= 0).float().to(device)[None, :, None, None]
    with_them = dcgan.sample(G, z)
    hook = block.register_forward_hook(lambda module, inputs, out: out * keep)
    without = dcgan.sample(G, z)
    hook.remove()
    save_grid(torch.cat([with_them, without]), os.path.join(run.output_dir, "forget.png"), n)
    print(f"dcgan_analysis: dropped {len(drop)} of {C} maps of G's {side}x{side} block "
          f"({len(positives)} positions in the boxes): {drop.tolist()}\n"
          "dcgan_analysis: wrote forget.png (with them, without)")


def parse_terms(text, count):
    """"1,2,3 - 4,5,6 + 7,8,9" -> [(1, [1, 2, 3]), (-1, [4, 5, 6]), (1, [7, 8, 9])]."""
    if not re.fullmatch(r"\s*[\d\s,]+(\s*[-+][\d\s,]+)*", text):
        fail(f"arithmetic {text!r}: expected terms of z-bank indices joined by + and -, each a "
             "comma-separated list (its z are averaged), e.g. \"3,17,40 - 5,8,21 + 9,33,61\"")
    parts = re.split(r"([-+])", "+" + text)[1:]
    terms = [(1 if sign == "+" else -1, [bank_index(i, count, "arithmetic") for i in
                                         term.split(",")]) for sign, term in zip(parts[::2],
                                                                                 parts[1::2])]
    if len(terms) > 8 or max(len(indices) for _, indices in terms) > 8:
        fail(f"arithmetic {text!r}: at most 8 terms of 8 indices (a figure row each)")
    return terms


def latent_sum(bank, terms):
    """y = sum over the terms of sign * the mean of their z: mean(A) - mean(B) + mean(C)."""
    return sum(sign * bank[indices].mean(0) for sign, indices in terms)


def arithmetic(run, ckpt, device, radius=0.25 * math.sqrt(3)):
    """Section 6.3.2, Fig. 7: y = latent_sum() of the terms (the paper averages 3 exemplars per
    concept: one alone was unstable); G(y) and 8 neighbours y + U(-radius, radius). Deviation:
    radius 0.25 sqrt 3, the paper's 0.25 on U(-1, 1) z rescaled to our N(0, 1) z. Rows: each
    term's exemplars and, last, G(their mean z); G(y) and its neighbours; the paper's pixel
    baseline: each term's mean image and, last, the same arithmetic on those images."""
    G, bank = generator(run, ckpt, device), z_bank(run)
    terms = parse_terms(run.terms, len(bank))
    y = latent_sum(bank, terms)
    noise = torch.rand(8, run.nz, generator=torch.Generator().manual_seed(run.seed))
    picture = [*dcgan.sample(G, torch.cat([y[None], y + (2 * noise - 1) * radius]).to(device))]
    blank, pixels = torch.ones_like(picture[0]), []
    for _, indices in terms:
        exemplars = dcgan.sample(G, bank[indices].to(device))
        mean_z = dcgan.sample(G, bank[indices].mean(0, keepdim=True).to(device))[0]
        picture[-9:-9] = [*exemplars, *[blank] * (8 - len(indices)), mean_z]
        pixels.append(exemplars.mean(0))
    result = sum(sign * image for (sign, _), image in zip(terms, pixels)).clamp(-1, 1)
    picture += [*pixels, *[blank] * (8 - len(pixels)), result]
    save_grid(torch.stack(picture), os.path.join(run.output_dir, "arithmetic.png"), nrow=9)
    print("dcgan_analysis: wrote arithmetic.png: a row per term (exemplars, G(mean z)); G(y) and "
          "8 neighbours; pixels (each term's mean image, their arithmetic)")


COMMANDS = {"index": index, "nearest": nearest, "classify": classify, "visualize-d": visualize_d,
            "forget": forget, "arithmetic": arithmetic}

if __name__ == "__main__":
    main()
