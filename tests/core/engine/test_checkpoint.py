"""Checkpoint integrity: digests checked on load, damaged files named in one
line, a fallback to the newest intact checkpoint, and a failed save (a full
disk) that leaves the previous checkpoint in charge."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from run_helpers import metrics, write_config

from purer.engine.checkpoint import load_state
from purer.errors import PurerError
from purer.testing import run_purer


def purer(capsys, *args) -> tuple[int, str]:
    return run_purer(*args), capsys.readouterr().err


def said(err: str) -> str:
    """The console's text with rich's line wrapping undone."""
    return " ".join(err.split())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_zoo) -> Path:
    """An 8-step run: checkpoints at steps 4 and 8 (both kept), best at 4 and 8."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder, tiny_zoo, **{"train.steps": 8})
    assert run_purer("run", "--config", config, "--name", "r", "--no-eval") == 0
    return folder / "runs" / "r"


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run to damage."""
    return Path(shutil.copytree(finished, tmp_path / "r"))


def flip_byte(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_caught_and_resume_replays_from_the_previous_checkpoint(
        run, finished, capsys):
    flip_byte(run / "checkpoints" / "step-8.safetensors")  # inside the tensor data
    code, err = purer(capsys, "run", "--resume", run)
    assert code == 0, err
    assert f"warning: {run / 'checkpoints' / 'step-8.safetensors'}: sha256 mismatch" in said(err)
    assert "resumed at step 4" in said(err)
    assert metrics(run) == metrics(finished)  # steps 5-8 again, the same numbers


DAMAGE = {
    "truncated tensors": ("step-8.safetensors", lambda p: p.write_bytes(p.read_bytes()[:1000]), 4),
    "empty json": ("step-8.json", lambda p: p.write_bytes(b""), 4),
    "missing tensors": ("step-8.safetensors", lambda p: p.unlink(), 4),
    "changed json": ("step-8.json",
                     lambda p: p.write_text(p.read_text().replace('"step"', '"stop"', 1)), 4),
    "broken pointer": ("last.json", lambda p: p.write_text('{"stem": "step-8"'), 8),
    "empty pointer": ("last.json", lambda p: p.write_bytes(b""), 8),
    "missing pointer": ("last.json", lambda p: p.unlink(), 8),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_named_and_the_newest_intact_one_used(run, damage, capsys):
    name, spoil, expected = DAMAGE[damage]
    spoil(run / "checkpoints" / name)
    state, info = load_state(run / "checkpoints", "last")
    assert state["step"] == expected and info["step"] == expected
    warning = said(capsys.readouterr().err)
    assert warning.startswith(f"warning: {run / 'checkpoints' / name}:"), warning


def test_no_intact_checkpoint_is_one_line_naming_the_file(run, capsys):
    for step in (4, 8):
        flip_byte(run / "checkpoints" / f"step-{step}.safetensors")
    code, err = purer(capsys, "run", "--resume", run)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith(f"error: {run / 'checkpoints'}/step-8.safetensors: "
                                              "sha256 mismatch"), err
    assert "no intact 'last' checkpoint" in lines[-1]
    for best in (run / "checkpoints").glob("best-*.safetensors"):
        best.write_bytes(b"")
    code, err = purer(capsys, "eval", run, "--tasks", 2, "--baselines", "none")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith(f"error: {run / 'checkpoints'}/best-"), err


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, tiny_zoo, finished, capsys,
                                                     monkeypatch):
    """A full disk while step 8's checkpoint is written: one line, step 4 intact, resumable."""
    config = write_config(tmp_path, tiny_zoo, **{"train.steps": 8})
    fsync = os.fsync

    def full_disk(fd: int) -> None:
        if "step-8" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    code, err = purer(capsys, "run", "--config", config, "--name", "r", "--no-eval")
    monkeypatch.undo()
    run = tmp_path / "runs" / "r"
    lines = err.strip().splitlines()
    assert code == 2, err
    assert lines[-1].startswith(f"error: {run / 'checkpoints'}/step-8.safetensors: cannot write")
    assert "No space left on device" in lines[-1] and "(step-4) is intact" in lines[-1]
    state, _ = load_state(run / "checkpoints", "last")
    assert state["step"] == 4 and not list((run / "checkpoints").glob(".*.tmp"))
    code, err = purer(capsys, "run", "--resume", run)
    assert code == 0, err
    assert metrics(run) == metrics(finished)


def test_checkpoint_errors_are_purer_errors(run):
    (run / "checkpoints" / "step-8.json").write_text("[]")
    (run / "checkpoints" / "step-4.json").write_text("{")
    with pytest.raises(PurerError, match="step-8.json: not a purer checkpoint"):
        load_state(run / "checkpoints", "last")
