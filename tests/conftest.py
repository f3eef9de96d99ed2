"""Shared test fixtures: run a script's main(argv) in-process, in a fresh temporary directory."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own empty directory: outputs never land in the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def run(capsys):
    """run(main, argv) -> (exit status, stdout, stderr) of one in-process call."""
    def call(main, argv):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err
    return call
