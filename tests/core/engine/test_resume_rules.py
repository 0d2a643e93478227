"""What ``purer run --resume`` keeps, takes and refuses; relative paths; one run per folder."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from run_helpers import CHILD_ENV, PURER, metrics, write_config

from purer.rundir import RunDir
from purer.testing import run_purer


def purer(capsys, *args: str) -> tuple[int, str]:
    """``purer ARGS`` in this process: (exit status, stderr)."""
    return run_purer(*args), capsys.readouterr().err


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    return errors[0]


def steps(run: Path) -> list[int]:
    return [r["step"] for r in metrics(run)]


def saved_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_resume_keeps_the_runs_flags_and_takes_what_keeps_the_trajectory(tmp_path, tiny_zoo,
                                                                          capsys):
    config = write_config(tmp_path, tiny_zoo)
    run = tmp_path / "runs" / "r"
    code, err = purer(capsys, "run", "--config", config, "--name", "r", "--no-eval", "--steps", 4)
    assert code == 0, err
    # extending --steps is taken and said; the run's own --no-eval is kept
    code, err = purer(capsys, "run", "--resume", run, "--steps", 6)
    assert code == 0, err
    assert "train.steps 4 -> 6" in err
    assert steps(run) == list(range(1, 7))
    assert saved_config(run)["train"]["steps"] == 6
    assert not (run / "results.json").exists()
    # fewer steps than done: refused
    code, err = purer(capsys, "run", "--resume", run, "--steps", 3)
    assert code == 2 and "already at step 6" in error_line(err)
    # --eval overrides the run's flag (and the evaluation options may change)
    code, err = purer(capsys, "run", "--resume", run, "--eval", "--set", "eval.tasks=4",
                      "--set", "eval.baselines=[]")
    assert code == 0, err
    assert json.loads((run / "results.json").read_text())["tasks"] == 4


def test_resume_refuses_trajectory_changes_unless_forced(tmp_path, tiny_zoo, capsys):
    config = write_config(tmp_path, tiny_zoo)
    run = tmp_path / "runs" / "r"
    assert purer(capsys, "run", "--config", config, "--name", "r", "--no-eval", "--steps", 2)[0] \
        == 0
    before = (run / "config.json").read_text()
    for args, named in ((["--set", "inverter.lr=0.1"], "inverter.lr"), (["--seed", "4"], "seed"),
                        (["--shot", "2"], "train.shot")):
        code, err = purer(capsys, "run", "--resume", run, *args)
        line = error_line(err)
        assert code == 2 and named in line and "--force" in line, line
    for args, flag in ((["--name", "x"], "--name"), (["--preset", "quickstart"], "--preset")):
        code, err = purer(capsys, "run", "--resume", run, *args)
        assert code == 2 and error_line(err).startswith(f"error: {flag}:")
    assert (run / "config.json").read_text() == before and steps(run) == [1, 2]
    code, err = purer(capsys, "run", "--resume", run, "--set", "inverter.lr=0.1", "--steps", 3,
                      "--force")
    assert code == 0, err
    assert "forced" in err and saved_config(run)["inverter"]["lr"] == 0.1
    assert steps(run) == [1, 2, 3]


def test_relative_paths_are_stored_resolved(tmp_path, tiny_zoo, capsys, monkeypatch):
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    config = write_config(tmp_path, tiny_zoo)
    monkeypatch.chdir(first)
    zoo = os.path.relpath(tiny_zoo, first)
    code, err = purer(capsys, "run", "--config", config, "--zoo", zoo, "--out", "runs",
                      "--name", "r", "--no-eval", "--steps", 2)
    assert code == 0, err
    run = first / "runs" / "r"
    assert saved_config(run)["zoo"]["path"] == str(tiny_zoo.absolute())
    monkeypatch.chdir(elsewhere)
    code, err = purer(capsys, "run", "--resume", run, "--steps", 3)
    assert code == 0, err
    code, err = purer(capsys, "eval", run, "--tasks", 4, "--baselines", "average")
    assert code == 0, err  # `average` loads the zoo


def test_reusing_a_run_name_is_refused_and_changes_nothing(tmp_path, tiny_zoo, capsys):
    config = write_config(tmp_path, tiny_zoo)
    run = tmp_path / "runs" / "r"
    assert purer(capsys, "run", "--config", config, "--name", "r", "--no-eval", "--steps", 2)[0] \
        == 0
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err = purer(capsys, "run", "--config", config, "--name", "r", "--no-eval", "--seed", 5)
    assert code == 2 and "already holds a run" in error_line(err)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_a_running_run_cannot_be_resumed_twice(tmp_path, tiny_zoo, capsys):
    config = write_config(tmp_path, tiny_zoo)
    run = tmp_path / "runs" / "r"
    assert purer(capsys, "run", "--config", config, "--name", "r", "--no-eval", "--steps", 2)[0] \
        == 0
    holder = RunDir.open(run)
    holder.claim()  # as the process running it would
    try:
        code, err = purer(capsys, "run", "--resume", run, "--steps", 3)
        line = error_line(err)
        assert code == 2 and f"in use by another purer process (pid {os.getpid()})" in line
    finally:
        holder.release()
    assert steps(run) == [1, 2]


@pytest.mark.slow
def test_two_runs_started_with_one_name_at_once_one_is_refused(tmp_path, tiny_zoo):
    config = write_config(tmp_path, tiny_zoo)
    command = [*PURER, "run", "--config", str(config), "--name", "same", "--no-eval",
               "--steps", "4"]
    procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=CHILD_ENV) for _ in range(2)]
    results = sorted((p.wait(), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    refused = results[1][1].strip().splitlines()[-1]
    assert refused.startswith("error:") and ("in use" in refused or "already holds" in refused)
    assert steps(tmp_path / "runs" / "same") == [1, 2, 3, 4]
