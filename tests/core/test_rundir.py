"""Atomic writes: complete files or none, with the user's umask for permissions."""

import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from purer.rundir import atomic_save_tensors, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_follow_the_umask_not_mkstemps_0600(tmp_path, umask_022):
    text, weights = tmp_path / "a" / "results.json", tmp_path / "zoo" / "t000.safetensors"
    atomic_write_text(text, "{}")
    atomic_save_tensors(weights, {"w": torch.ones(2)})
    for path in (text, weights):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert text.read_text() == "{}"
    assert torch.equal(load_file(weights)["w"], torch.ones(2))
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary left behind
