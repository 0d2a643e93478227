"""A run across processes (torch.distributed, gloo on the CPU) equals the
one-process run step by step, survives the SIGKILL of a rank with an exact
resume, and a failing rank takes the job down with one line.

Equivalence is to float tolerance, not bitwise: each rank sums the
meta-gradients of its half of the episode batch, and the ranks add the two
halves, so the sum over episodes is associated differently, (e1 + e2) +
(e3 + e4) instead of ((e1 + e2) + e3) + e4 (docs/distributed.md). The
inversion itself is exact: each teacher's memory is stepped by its owner
with the same numbers as in one process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from run_helpers import (
    CHILD_ENV,
    PURER,
    last_step,
    metrics,
    run_purer,
    wait_for_metrics,
    write_config,
)

from purer.cli.launch import without_nproc
from purer.config import ZooBuildOptions
from purer.distributed import World, balance
from purer.errors import ConfigError
from purer.testing import tiny_meta_train
from purer.zoo.build import build_zoo

# Relative tolerance of every logged number of a 2-process run against the
# 1-process one; measured differences are ~1e-7 (float32 rounding).
RTOL = 1e-4

# 8 steps: the gradient switch fires at steps 3 and 6 (start=2, window=2),
# a checkpoint every 2 steps for the SIGKILL test.
CHANGES = {"train.steps": 8, "train.checkpoint_every": 2, "train.val_every": 4,
           "train.image_every": 4}


def close(one: list[dict], two: list[dict]) -> None:
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        assert a.keys() == b.keys(), a["step"]
        for key, value in a.items():
            if isinstance(value, float):
                assert math.isclose(value, b[key], rel_tol=RTOL, abs_tol=1e-6), (a["step"], key,
                                                                                   value, b[key])
            else:
                assert value == b[key], (a["step"], key)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, tiny_zoo: Path) -> tuple[Path, list, list]:
    folder = tmp_path_factory.mktemp("distributed")
    config = write_config(folder, tiny_zoo, **CHANGES)
    run_purer("run", "--no-eval", "--config", str(config), "--name", "one")
    run_purer("run", "--no-eval", "--config", str(config), "--name", "two", "--nproc", "2")
    return config, metrics(folder / "runs" / "one"), metrics(folder / "runs" / "two")


@pytest.mark.slow
def test_two_processes_give_the_one_process_metrics_step_by_step(two_runs):
    _, one, two = two_runs
    assert [r["switch"] for r in one] == [False, False, True, False, False, True, False, False]
    assert "inv_reversed" in one[2]  # the switch's reversed loss crossed ranks
    close(one, two)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found + [g for c in found for g in _children(c)]


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the ranks through /proc")
def test_sigkill_of_a_rank_stops_the_job_and_resume_replays_it(tmp_path, two_runs):
    config, _, reference = two_runs
    killed = tmp_path / "runs" / "killed"
    proc = subprocess.Popen([*PURER, "run", "--no-eval", "--config", str(config), "--out",
                             str(tmp_path / "runs"), "--name", "killed", "--nproc", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=CHILD_ENV)
    wait_for_metrics(killed, 3)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)  # no hang: the launcher stops the other rank
    assert proc.returncode == 2, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: rank 1 of 2 failed") and "SIGKILL" in line, line
    saved = last_step(killed)
    assert 2 <= saved < 8
    run_purer("run", "--resume", str(killed), "--nproc", "2")
    assert metrics(killed) == reference  # the same distributed run, bit for bit


def test_a_resume_with_another_number_of_processes_is_refused(tmp_path, two_runs):
    config, _, _ = two_runs
    run = config.parent / "runs" / "two"
    done = run_purer("run", "--resume", str(run), "--steps", "9", check=False)
    assert done.returncode == 2
    assert "saved by a run on 2 processes; resume it the same way" in done.stderr


# ------------------------------------------------------------------ the world's helpers
def test_balance_gives_heavy_teachers_their_own_rank():
    assert balance([1.0, 1.0, 10.0, 1.0], 2) == [[2], [0, 1, 3]]
    assert balance([1.0, 1.0, 1.0, 1.0], 2) == [[0, 2], [1, 3]]
    assert all(balance([3.0, 2.0, 1.0], 3))  # every rank gets a teacher


def test_world_of_one_process_is_the_identity():
    world = World()
    x = torch.arange(4.0, requires_grad=True)
    assert world.all_reduce_sum(x) is x and world.gather_rows(x)[0] is x
    assert world.split(5) == (0, 5) and world.broadcast_object("a") == "a" and not world.any(False)
    world.check_same("config", "anything")


def test_without_nproc_keeps_the_rest_of_the_command_line():
    assert without_nproc(["run", "--nproc", "2", "--steps", "3"]) == ["run", "--steps", "3"]
    assert without_nproc(["run", "--nproc=2", "--name", "x"]) == ["run", "--name", "x"]


def _ranks(rank: int, size: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    world = World(rank, size)
    result: dict = {"split": world.split(5)}
    # rows of different lengths per rank, differentiable: d/dx of sum(gathered * weight)
    x = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)
    pieces = world.gather_rows(x)
    loss = sum(((k + 1) * p).sum() for k, p in enumerate(pieces)) * (rank + 1)
    loss.backward()
    result["shapes"] = [list(p.shape) for p in pieces]
    result["grad"] = x.grad.tolist()
    try:
        world.check_same("the run configuration", f"config of rank {rank}")
        result["mismatch"] = None
    except ConfigError as exc:
        result["mismatch"] = str(exc)
    torch.set_num_threads(1)
    zoo = build_zoo(ZooBuildOptions(**ZOO), "synthetic-shapes", None, Path(out) / "zoo", "cpu",
                    loader=tiny_meta_train, world=world)
    result["zoo"] = [[t.name, t.heldout_accuracy] for t in zoo.teachers]
    result["eval"] = _scores(world)
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


ZOO = {"scenario": "ss", "teachers": 3, "arch": ["conv4"], "arch_kwargs": {"conv4": {"width": 8}},
       "epochs": 1, "batch_size": 64}


def _scores(world: World) -> list[float]:
    """Per-task accuracies of a fresh meta-model on 10 tasks, scored by ``world``."""
    from purer.data.episodes import make_task_list
    from purer.evaluation.evaluator import evaluate
    from purer.models import create_model
    from purer.plugins import get_host

    torch.manual_seed(0)
    learner = get_host().create("meta_learner", "maml", {})
    learner.setup(create_model("conv4", num_classes=5, width=8), torch.device("cpu"))
    split = tiny_meta_train("synthetic-shapes")
    tasks = make_task_list(split, 5, 1, 3, 10, seed=0)
    return evaluate(learner, tasks, split, "cpu", batch_tasks=4, world=world).accuracies


def test_gather_rows_zoo_build_and_evaluation_across_two_ranks(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_ranks, args=(2, init, str(tmp_path)), nprocs=2, start_method="spawn")
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert [r["split"] for r in results] == [[0, 3], [3, 5]]
    assert results[0]["shapes"] == results[1]["shapes"] == [[1, 2], [2, 2]]
    # rank r's rows are weighted (r + 1) in every rank's loss, which rank s scales by (s + 1)
    assert results[0]["grad"] == [[3.0, 3.0]]
    assert results[1]["grad"] == [[6.0, 6.0]] * 2
    for r in results:
        assert r["mismatch"] == ("the run configuration: differs between ranks (rank 0 and "
                                 "rank(s) 1); start every rank with the same configuration")
    # zoo build: teacher i on rank i mod 2, the manifest of one process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = build_zoo(ZooBuildOptions(**ZOO), "synthetic-shapes", None, tmp_path / "zoo1", "cpu",
                        loader=tiny_meta_train)
        scores = _scores(World())
    finally:
        torch.set_num_threads(threads)
    assert results[0]["zoo"] == results[1]["zoo"] == [[t.name, t.heldout_accuracy]
                                                      for t in one.teachers]
    # evaluation: each rank scores 5 of the 10 tasks; gathered, the one-process list
    assert results[0]["eval"] == results[1]["eval"]
    assert results[0]["eval"] == pytest.approx(scores, abs=1e-4)
