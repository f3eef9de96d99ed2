"""What the scripts share: image grids, sample files, the progress GIF, the loss plot, and the
progress line of a long phase.

Only what two or more scripts need lives here, and nothing paper-specific: each script keeps its
own models, data, training loop and run plumbing, so that one script plus this file can be copied
out and run.
"""
import csv
import os
import time

import imageio.v3 as iio
import numpy as np
import torch


def to_uint8(images):
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8 array, the form image files take."""
    images = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


def tile(images, nrow=8, padding=2, pad_value=1.0):
    """(N, C, H, W) images -> one (3, H', W') picture, nrow a row, padding-pixel gaps of pad_value.

    Written here rather than taken from torchvision: importing torchvision adds about 160 MB to a
    run's peak memory (measured: 815 against 648 MB for `import torch` alone) and 1.5 s to its
    start, which runs on data made in memory (--dataset fake, gan_gaussian.py) need not pay."""
    images = images.detach().float().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)  # grey -> RGB, so grids and GIF frames are all RGB
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    height, width = rows * (h + padding) + padding, cols * (w + padding) + padding
    grid = torch.full((c, height, width), pad_value)
    for i, image in enumerate(images):
        y, x = divmod(i, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = image
    return grid


def save_grid(images, path, nrow=8):
    """Tile (N, C, H, W) images in [-1, 1] into one PNG, nrow per row, with white gaps."""
    iio.imwrite(path, to_uint8(tile(images, nrow)[None])[0])


def save_images(images, folder, start=0):
    """Write (N, C, H, W) images in [-1, 1] as folder/000000.png, 000001.png, ... from start."""
    for i, image in enumerate(to_uint8(images), start):
        grey = image.shape[-1] == 1
        iio.imwrite(os.path.join(folder, f"{i:06d}.png"), image[..., 0] if grey else image)


def save_gif(frames, path, seconds_per_frame=0.5):
    """Write frames (H, W, 3 uint8 arrays, or paths of equal-sized images) as a looping GIF."""
    frames = [iio.imread(f) if isinstance(f, (str, os.PathLike)) else f for f in frames]
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=round(1000 * seconds_per_frame),
                loop=0)


def pyplot():
    """matplotlib.pyplot, drawing to files only (no window), imported when first needed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi=100):
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def plot_log(csv_path, png_path, title=""):
    """Plot log.csv: the two losses, and D's mean output on real and generated data, by step."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    column = {k: [float(r[k]) for r in rows]
              for k in ("iteration", "loss_d", "loss_g", "d_x", "d_g_z")}
    fig, (top, bottom) = pyplot().subplots(2, 1, figsize=(7, 5.5), sharex=True)
    top.plot(column["iteration"], column["loss_d"], label="loss_D")
    top.plot(column["iteration"], column["loss_g"], label="loss_G")
    top.set_ylabel("loss")
    top.set_title(title)
    bottom.plot(column["iteration"], column["d_x"], label="D(x)")
    bottom.plot(column["iteration"], column["d_g_z"], label="D(G(z))")
    bottom.set_ylabel("mean D output")
    bottom.set_xlabel("iteration")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    save_figure(fig, png_path)


def nearest(samples, images, chunk=500):
    """(distances, indices): for each of samples (N, ...) its nearest neighbour among images
    (M, ...) in Euclidean distance, in chunks of samples (a chunk's distances take chunk x M)."""
    images = images.flatten(1).float()
    found = [torch.cdist(part.flatten(1).float(), images).min(1) for part in samples.split(chunk)]
    return torch.cat([f.values for f in found]), torch.cat([f.indices for f in found])


def ticking(items, what, total, size=1):
    """Yields items (each `size` of the total) and shows the phase's progress as a training loop
    does: done/total, rate and ETA, at most every 10 s and at the end; under torchrun from each
    machine's first process alone."""
    start = shown = time.perf_counter()
    for count, item in enumerate(items, 1):
        yield item
        now, done = time.perf_counter(), min(count * size, total)
        if os.environ.get("LOCAL_RANK", "0") == "0" and (now - shown > 10 or done == total):
            shown, rate = now, done / (now - start)
            left = int((total - done) / rate)
            print(f"{what} {done:,}/{total:,}  {rate:,.0f}/s  ETA {left // 60}:{left % 60:02d}",
                  flush=True)
