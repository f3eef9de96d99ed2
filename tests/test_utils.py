"""utils.py: the grid tiling matches torchvision's make_grid pixel for pixel, without importing it."""
import os
import subprocess
import sys

import pytest
import torch
from torchvision.utils import make_grid

import utils


@pytest.mark.parametrize("n, channels, nrow", [(64, 3, 8), (10, 1, 4), (7, 3, 8), (3, 1, 8)])
def test_tile_matches_torchvision(n, channels, nrow):
    images = torch.rand(n, channels, 9, 7) * 2 - 1
    assert torch.equal(utils.tile(images, nrow), make_grid(images, nrow=nrow, padding=2, pad_value=1.0))


def test_fake_runs_do_not_import_torchvision(tmp_path):
    """torchvision costs ~160 MB of peak memory: a --dataset fake run must not load it."""
    code = ("import sys, dcgan; dcgan.main(['--dataset', 'fake', '--dry-run', '--output-dir', sys.argv[1]]); "
            "assert 'torchvision' not in sys.modules, 'torchvision was imported'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], check=True, capture_output=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
