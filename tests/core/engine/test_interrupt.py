"""Interrupted runs resume exactly: after SIGKILL at any moment, and after
Ctrl-C in every phase of a step, which saves a completed step and says which.

Every run is a process of its own, as a user would run them. SIGINT is sent
by the process to itself from inside the chosen phase (interrupt_child.py),
so where it lands does not depend on timing.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from run_helpers import (
    CHILD_ENV,
    PURER,
    RESUME_CHANGES,
    last_step,
    metrics,
    run_purer,
    wait_for_metrics,
    write_config,
)

CHILD = [sys.executable, str(Path(__file__).with_name("interrupt_child.py"))]


@dataclass
class Reference:
    """An uninterrupted run that interrupted and resumed runs must replay."""

    config: Path
    metrics: list[dict]


@pytest.fixture(scope="module")
def resume_reference(tmp_path_factory: pytest.TempPathFactory, tiny_zoo: Path) -> Reference:
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder, tiny_zoo, **RESUME_CHANGES)
    run_purer("run", "--no-eval", "--config", str(config), "--name", "whole")
    return Reference(config, metrics(folder / "runs" / "whole"))


@pytest.mark.slow
def test_resume_after_sigkill_replays_the_uninterrupted_run(tmp_path, resume_reference):
    killed = tmp_path / "runs" / "killed"
    proc = subprocess.Popen([*PURER, "run", "--no-eval", "--config", str(resume_reference.config),
                             "--out", str(tmp_path / "runs"), "--name", "killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=CHILD_ENV)
    wait_for_metrics(killed, 7)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    saved = last_step(killed)
    assert 4 <= saved < 24
    run_purer("run", "--resume", str(killed))
    assert metrics(killed) == resume_reference.metrics

# (where SIGINT lands, the step the interrupted process must save)
CHAIN = [
    ("inversion:2", 2),  # inside the inversion of step 2 (the step's draws are taken)
    ("meta:3", 5),  # inside the meta step of step 5 (the memory has moved, the meta-model not yet)
    ("validation:1", 6),  # inside the validation of step 6
    ("checkpoint:1", 8),  # between the tensors file and the JSON of step 8's checkpoint
    ("pictures:1", 12),  # inside the pictures of step 12
    ("meta:2,checkpoint:1", 14),  # twice: in step 14's meta step, then in the save it causes
]


@pytest.mark.slow
def test_ctrl_c_in_every_phase_saves_a_completed_step_and_resumes_exactly(tmp_path,
                                                                           resume_reference):
    run = tmp_path / "runs" / "chain"
    for number, (triggers, saved) in enumerate(CHAIN):
        args = (["run", "--resume", str(run)] if number else
                ["run", "--no-eval", "--config", str(resume_reference.config),
                 "--out", str(tmp_path / "runs"), "--name", "chain"])
        done = run_purer(*args, command=CHILD, env={"PURER_TEST_SIGINT": triggers}, check=False)
        assert done.returncode == 130, (triggers, done.stderr[-3000:])
        said = re.findall(r"interrupted: saved step (\d+)", done.stderr)
        assert said == [str(saved)], (triggers, done.stderr[-3000:])
        assert last_step(run) == saved, triggers
        # the metrics of every completed step, validation included, and no other
        assert metrics(run) == resume_reference.metrics[:saved], triggers
    run_purer("run", "--resume", str(run))
    assert metrics(run) == resume_reference.metrics


@pytest.mark.slow
def test_ctrl_c_before_the_first_step_or_in_the_final_evaluation(tmp_path, resume_reference):
    out = tmp_path / "runs"
    start = ["run", "--config", str(resume_reference.config), "--out", str(out), "--steps", "2"]
    done = run_purer(*start, "--name", "setup", command=CHILD,
                     env={"PURER_TEST_SIGINT": "setup:1"}, check=False)
    assert done.returncode == 130 and "interrupted before the first step; nothing was saved" \
        in done.stderr, done.stderr[-3000:]
    assert not (out / "setup").exists()  # no half-made run folder
    done = run_purer(*start, "--name", "final", "--set", "eval.tasks=2", command=CHILD,
                     env={"PURER_TEST_SIGINT": "final evaluation:1"}, check=False)
    assert done.returncode == 130 and "interrupted during the final evaluation; training is " \
        "complete" in done.stderr, done.stderr[-3000:]
    assert last_step(out / "final") == 2 and not (out / "final" / "results.json").exists()
