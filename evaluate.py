#!/usr/bin/env python3
"""Score generated MNIST or Fashion-MNIST images: the figures docs/RESULTS.md quotes.

    python evaluate.py SAMPLES --dataset mnist --dataroot DIR   # SAMPLES: PNG folder or .npy
    python evaluate.py --real --dataset mnist --dataroot DIR    # the real-vs-real floor
    python evaluate.py SAMPLES --parzen --dataroot DIR          # Goodfellow et al.'s Table 1

The classifier ships beside this script (evaluate_<dataset>.pt: a small CNN that --train-classifier
trained, seeded, on the CPU). Every score is printed with its weights' fingerprint (SHA-256, 12 hex
digits): scores compare only under one. It runs in float64: the same samples score the same on
any machine. Printed:
  - classifier FID: the Frechet distance between the Gaussians fitted to the 128-d features of
    the samples and of the 10,000 test images. It is NOT the Inception FID of other papers: never
    put the two side by side. Lower is better; --real gives the floor (10,000 training images);
  - classes covered: classes predicted for >= 2% of the samples;
  - class balance: the smallest and largest predicted share (0.10 each when balanced);
  - confidence: the mean of the classifier's top softmax probability.
Samples: PNGs (any size: made grey and resized to 28x28 with antialiasing) or a .npy of images,
uint8 or floats in [-1, 1]; at least 1,000 (a 128-d covariance needs many); RESULTS.md: 10,000.
--parzen: instead, the GAN paper's Parzen-window log-likelihood of the test images (see parzen()).
"""
import argparse
import hashlib
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
MIN_SAMPLES = 1000
EPOCHS, BATCH, SEED = 10, 128, 0
PARZEN_SAMPLES, PARZEN_VALID = 10_000, slice(50_000, 51_000)  # parzen_ll.py's


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),    # (N, 16, 13, 13)
            nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),   # (N, 32, 5, 5)
            nn.Flatten(), nn.Linear(32 * 5 * 5, 128), nn.ReLU())  # (N, 128): the FID features
        self.head = nn.Linear(128, 10)                          # (N, 10) logits

    def forward(self, x):
        return self.head(self.features(x))


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_split(args, train):
    """uint8 images (N, 28, 28) and labels of a split, through torchvision (it downloads)."""
    from torchvision import datasets
    try:
        data = getattr(datasets, FOLDERS[args.dataset])(args.dataroot, train, download=True)
    except Exception as e:
        fail(f"cannot load {args.dataset} into or from --dataroot {args.dataroot} "
             f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})")
    return data.data, data.targets


def to_input(images):
    """uint8 (N, 28, 28) -> floats (N, 1, 28, 28) in [-1, 1], as the scripts' G makes them."""
    return images.unsqueeze(1).float().div(127.5).sub(1)


def fingerprint(net):
    """The first 12 hex digits of the SHA-256 of the weights (names and float32 bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode() + tensor.float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def classifier(args):
    """The classifier at --classifier (by default the shipped one), in float64, and its file."""
    if not os.path.isfile(args.classifier):
        fail(f"no classifier at {args.classifier}: --train-classifier makes one")
    net = Classifier()
    try:
        saved = torch.load(args.classifier, map_location="cpu", weights_only=True)
        net.load_state_dict(saved["classifier"])
    except Exception:
        fail(f"cannot read {args.classifier}: damaged, or not a classifier of evaluate.py")
    if saved["dataset"] != args.dataset:
        fail(f"{args.classifier} classifies {saved['dataset']}, not {args.dataset}")
    saved["fingerprint"] = fingerprint(net)
    return net.double().eval(), saved


def train_classifier(args):
    """--train-classifier: a new classifier (CPU, seeded) into --classifier, never over a file."""
    if os.path.exists(args.classifier):
        fail(f"{args.classifier} exists: name a new file with --classifier")
    (images, labels), (test_images, test_labels) = load_split(args, True), load_split(args, False)
    torch.manual_seed(SEED)
    net = Classifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.time()
    for epoch in range(EPOCHS):
        print(f"evaluate: epoch {epoch + 1}/{EPOCHS} at {time.time() - start:.0f} s", flush=True)
        order = torch.randperm(len(images))
        for i in range(0, len(images), BATCH):
            take = order[i:i + BATCH]
            loss = F.cross_entropy(net(to_input(images[take])), labels[take])
            opt.zero_grad()
            loss.backward()
            opt.step()
    weights, stamp = net.state_dict(), fingerprint(net)  # float32: .double() makes new tensors
    predicted = predict(net.double().eval(), to_input(test_images))[1].argmax(1)
    accuracy = (predicted == test_labels).double().mean().item()
    torch.save({"classifier": weights, "test_accuracy": accuracy, "dataset": args.dataset,
                "torch_version": str(torch.__version__)}, args.classifier + ".tmp")
    os.replace(args.classifier + ".tmp", args.classifier)
    print(f"evaluate: {args.classifier}: {args.dataset} classifier {stamp}, trained in "
          f"{time.time() - start:.0f} s, test accuracy {accuracy:.4f}")


@torch.no_grad()
def predict(net, x):
    """(features (N, 128), logits (N, 10)) in batches, in float64 (the net must be too)."""
    feats = torch.cat([net.features(x[i:i + 1000].double()) for i in range(0, len(x), 1000)])
    return feats.double(), net.head(feats).double()


def frechet(a, b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to features a, b;
    Tr (S_a S_b)^(1/2): the sum of the roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    root_a = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * cross).item()


def load_samples(path, minimum):
    """Samples as floats (N, 1, 28, 28) in [-1, 1]."""
    if os.path.isdir(path):
        import imageio.v3 as iio
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(".png"))
        if not names:
            fail(f"no .png files in {path}")
        try:
            arrays = [iio.imread(os.path.join(path, n)) for n in names]
            grey = np.stack([a.mean(-1) if a.ndim == 3 else a for a in arrays])  # RGB -> grey
        except Exception as e:  # unreadable, or of different sizes
            fail(f"cannot read the images in {path} as one batch ({type(e).__name__}: {e})")
        x = torch.from_numpy(grey.astype(np.float64)).unsqueeze(1) / 127.5 - 1
    elif path.endswith(".npy") and os.path.isfile(path):
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as e:
            fail(f"cannot read {path} ({type(e).__name__}: {e})")
        x = torch.from_numpy(np.asarray(array, dtype=np.float64))
        x = x / 127.5 - 1 if array.dtype == np.uint8 else x
        x = x.view(-1, 28, 28) if x.dim() == 2 and x.shape[1] == 784 else x
        x = x.unsqueeze(1) if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            fail(f"{path}: expected images (N, 28, 28), (N, C, H, W) or (N, 784), not "
                 f"{tuple(array.shape)}")
        x = x.mean(1, keepdim=True)
    else:
        fail(f"{path}: not a folder of PNGs nor a .npy file")
    if len(x) < minimum:
        fail(f"{len(x):,} samples in {path}: at least {minimum:,} needed (RESULTS.md: 10,000)")
    if x.shape[-1] != 28 or x.shape[-2] != 28:
        x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1, 1)


def parzen_log_likelihood(points, centres, sigma):
    """log mean_i N(x; c_i, sigma^2 I) = log mean_i exp(-|x - c_i|^2 / (2 sigma^2)) - d log(sigma
    sqrt(2 pi)) of each point x (rows) for each sigma (columns), in float64."""
    sigma, centres = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1), centres.double()
    rows = [torch.logsumexp(-torch.cdist(part, centres)[..., None].square() / (2 * sigma ** 2), 1)
            for part in points.double().split(250)]  # each (250, S)
    normaliser = points.shape[1] * torch.log(sigma * np.sqrt(2 * np.pi))
    return torch.cat(rows) - np.log(len(centres)) - normaliser


def parzen(samples, train_images, test_images):
    """Goodfellow et al. 2014, Table 1, as parzen_ll.py: pixels in [0, 1]; of logspace(-1, 0, 10),
    the sigma with the best mean log-likelihood of training images 50,000-50,999 (the authors'
    validation split's first 1,000). Returns the test images' mean, its standard error, sigma."""
    centres = samples[:PARZEN_SAMPLES].flatten(1).add(1).div(2)
    sigmas = torch.logspace(-1, 0, 10, dtype=torch.float64)
    valid = train_images[PARZEN_VALID].flatten(1).div(255)
    sigma = sigmas[parzen_log_likelihood(valid, centres, sigmas).mean(0).argmax()]
    test = parzen_log_likelihood(test_images.flatten(1).div(255), centres, sigma)[:, 0]
    return test.mean().item(), test.std(correction=0).item() / np.sqrt(len(test)), sigma.item()


def score(net, samples, reference):
    feats, logits = predict(net, samples)
    probs = logits.softmax(1)
    shares = torch.bincount(probs.argmax(1), minlength=10).double() / len(samples)
    return {"classifier_fid": frechet(feats, reference),
            "classes_covered": int((shares >= 0.02).sum()),
            "smallest_share": shares.min().item(), "largest_share": shares.max().item(),
            "confidence": probs.max(1).values.mean().item(), "samples": len(samples)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("samples", nargs="?", help="a folder of PNGs or a .npy of images")
    p.add_argument("--dataset", choices=list(FOLDERS), default="mnist")
    p.add_argument("--dataroot", default="./data", help="holds MNIST/ or FashionMNIST/")
    p.add_argument("--real", action="store_true", help="score 10,000 training images: the floor")
    p.add_argument("--parzen", action="store_true", help="the GAN paper's Parzen log-likelihood")
    p.add_argument("--classifier", help="default: the shipped evaluate_<dataset>.pt beside this")
    p.add_argument("--train-classifier", action="store_true", help="train one into --classifier")
    p.error = fail  # one line, exit 2
    args = p.parse_args(argv)
    args.classifier = args.classifier or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), f"evaluate_{args.dataset}.pt")
    if args.train_classifier:
        return train_classifier(args)
    if bool(args.samples) == args.real:
        fail("give SAMPLES or --real, not both or neither")
    if args.parzen:
        return parzen_report(args)
    samples = None if args.real else load_samples(args.samples, MIN_SAMPLES)
    net, saved = classifier(args)
    test_images, _ = load_split(args, train=False)
    reference, _ = predict(net, to_input(test_images))
    if args.real:
        images, _ = load_split(args, train=True)
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))[:10000]
        samples = to_input(images[pick])
    result = score(net, samples, reference)
    print(f"{args.samples or 'real training images'} ({result['samples']} samples; {args.dataset} "
          f"classifier {saved['fingerprint']}, test accuracy {saved['test_accuracy']:.4f}):\n"
          f"  classifier FID   {result['classifier_fid']:.2f}\n"
          f"  classes covered  {result['classes_covered']}/10 (>= 2% of samples each)\n"
          f"  class shares     {result['smallest_share']:.3f} .. {result['largest_share']:.3f}\n"
          f"  confidence       {result['confidence']:.3f}")
    return result


def parzen_report(args):
    """--parzen: of SAMPLES (their first 10,000), or with --real of training images 0-9,999."""
    samples = None if args.real else load_samples(args.samples, PARZEN_SAMPLES)
    train_images, test_images = load_split(args, True)[0], load_split(args, False)[0]
    if len(train_images) < PARZEN_VALID.stop:
        fail(f"--parzen picks sigma on training images 50,000-50,999: {len(train_images)} here")
    samples = to_input(train_images[:PARZEN_SAMPLES]) if args.real else samples
    mean, error, sigma = parzen(samples, train_images, test_images)
    print(f"{args.samples or 'real training images'}: Parzen log-likelihood of the test images "
          f"{mean:.1f} +- {error:.1f} (sigma {sigma:.3f}; the paper's Table 1, MNIST: 225 +- 2)")


if __name__ == "__main__":
    main()
