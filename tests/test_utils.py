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


def test_ticking_shows_done_total_rate_and_eta_at_most_every_10_s_and_at_the_end(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(utils.time, "perf_counter", lambda: clock[0])

    def batches():  # 20 batches of 100, one a second
        for second in range(1, 21):
            clock[0] = float(second)
            yield second
    assert list(utils.ticking(batches(), "decoded", 2000, 100)) == list(range(1, 21))
    assert capsys.readouterr().out.splitlines() == ["decoded 1,100/2,000  100/s  ETA 0:09",
                                                    "decoded 2,000/2,000  100/s  ETA 0:00"]
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun, each machine's first process alone
    assert list(utils.ticking(batches(), "decoded", 2000, 100)) == list(range(1, 21))
    assert capsys.readouterr().out == ""


def test_nearest_finds_a_planted_duplicate_among_the_images():
    torch.manual_seed(0)
    images = torch.rand(300, 1, 28, 28) * 2 - 1
    samples = torch.rand(7, 1, 28, 28) * 2 - 1
    samples[4] = images[123]
    distance, index = utils.nearest(samples, images, chunk=3)
    assert index[4] == 123 and distance[4] == pytest.approx(0, abs=1e-3)
    brute = torch.cdist(samples.flatten(1), images.flatten(1))
    assert torch.equal(index, brute.argmin(1)) and torch.allclose(distance, brute.min(1).values, atol=1e-4)
