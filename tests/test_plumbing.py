"""What every script shares: the run-plumbing block is the same text in each, the paper comes first,
no option is abbreviated, and checkpoints written before the vocabulary was unified still load."""
import importlib
import os
import re

import pytest
import torch

from conftest import ROOT

SCRIPTS = ["gan_gaussian", "gan_mnist", "dcgan", "lsgan"]
BANNER = "# ---- run plumbing: the same in every script ----"


def source(name):
    with open(os.path.join(ROOT, name + ".py")) as f:
        return f.read()


def plumbing(text):
    """From the banner to the next `# ----` line: the block every script carries word for word."""
    start = text.index(BANNER)
    return text[start:text.index("\n# ----", start + len(BANNER)) + 1]


def test_the_plumbing_block_is_the_same_text_in_every_script():
    blocks = {name: plumbing(source(name)) for name in SCRIPTS}
    for name, block in blocks.items():
        assert block == blocks["gan_gaussian"], f"{name}.py's run plumbing differs from gan_gaussian.py's"


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_paper_comes_first_then_one_banner(name):
    """docstring -> options -> models -> losses -> the training step -> the banner -> the rest."""
    text = source(name)
    assert text.count(BANNER) == 1
    banner = text.index(BANNER)
    for paper in ("def build_parser", "class Generator", "def d_loss", "def g_loss", "def train_step"):
        assert text.index(paper) < banner, paper
    assert text.index("def train(") > banner
    docstring = text.split('"""')[1]
    assert len(docstring.splitlines()) <= 30
    assert re.search(r"arXiv:\d{4}\.\d{4,5}v\d", docstring)


@pytest.mark.parametrize("name", SCRIPTS)
def test_lines_fit_in_100_columns(name):
    long = [i for i, line in enumerate(source(name).splitlines(), 1) if len(line) > 100]
    assert len(long) <= 15, long


@pytest.mark.parametrize("name", SCRIPTS)
def test_options_are_never_abbreviated(run, name):
    """`--batch 9` must not be taken as `--batch-size 9`: a mistyped option is an error."""
    module = importlib.import_module(name)
    code, _, err = run(module.main, ["--batch", "9", "--output-dir", "d"])
    assert code == 2 and "unrecognized arguments: --batch" in err and len(err.splitlines()) == 1


def test_a_checkpoint_from_before_the_rewrite_resumes(run):
    """Older checkpoints spell --nz, --lr and --lr-d as noise_size, g_lr and d_lr and also hold
    Python's and NumPy's generator states: they still resume (and sample)."""
    gg = importlib.import_module("gan_gaussian")
    assert run(gg.main, ["--epochs", 4, "--log-every", 2, "--output-dir", "old"])[0] == 0
    ckpt = torch.load("old/checkpoint.pt", weights_only=True)
    args = dict(ckpt["args"])
    args["noise_size"], args["g_lr"], args["d_lr"] = args.pop("nz"), args.pop("lr"), args.pop("lr_d")
    rng = dict(ckpt["rng"], python=(3, tuple(range(625)), None), numpy=["MT19937", torch.zeros(624), 0, 0, 0.0])
    torch.save(dict(ckpt, args=args, rng=rng, epoch=2, iteration=2), "old/checkpoint.pt")
    code, out, err = run(gg.main, ["--resume", "--output-dir", "old"])
    assert code == 0, err
    assert "resuming at epoch 2" in out
    assert run(gg.main, ["--generate", 5, "--output-dir", "old"])[0] == 0
