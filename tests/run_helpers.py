"""Shared by the engine tests: a tiny run configuration, and running ``purer``
as a user would, in processes of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from purer.config import RunConfig, build_config, to_toml
from purer.plugins import get_host

TINY = {
    "seed": 3,
    "data": {"name": "synthetic-shapes", "images_per_class": 60},
    "train": {"steps": 12, "val_every": 4, "val_tasks": 8, "checkpoint_every": 4, "image_every": 6,
              "query": 3, "meta_arch_kwargs": {"width": 8}},
    "curriculum": {"name": "gradient-switch", "start": 2, "window": 2},
    "eval": {"batch_tasks": 8},
}

# The resume tests' run: 24 steps, a checkpoint every 4, validation and
# pictures every 6, teachers and episodes on two worker threads (as `auto`
# gives on a 2-core CPU).
RESUME_CHANGES = {"train.steps": 24, "train.checkpoint_every": 4, "train.val_every": 6,
                  "inverter.cpu_workers": 2, "meta.cpu_workers": 2}

# One intra-op thread: tiny models, and no slowdown when the machine is busy.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PURER = [sys.executable, "-m", "purer.cli.main"]


def write_config(folder: Path, zoo: Path, name: str = "run.toml", **changes) -> Path:
    config = json.loads(json.dumps(TINY))
    config["zoo"] = {"path": str(zoo)}
    config["out"] = str(folder / "runs")
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = folder / name
    path.write_text(to_toml(build_config(config, host=get_host())))
    return path


def metrics(run: Path) -> list[dict]:
    """The run's metric lines without the wall-clock seconds."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds", None)
    return rows


def last_step(run: Path) -> int:
    return json.loads((run / "checkpoints" / "last.json").read_text())["step"]


def run_purer(*args: str, command: list[str] = PURER, env: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """``purer ARGS`` in a new process; stderr is captured (the console's messages)."""
    done = subprocess.run([*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env={**CHILD_ENV, **(env or {})})
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def stopped_and_resumed(config: RunConfig, stop_after: int, name: str = "part") -> Path:
    """Run ``config`` as run ``name`` up to step ``stop_after``, then finish it
    in a new trainer resumed from the checkpoint; the run's folder."""
    from purer.pipeline.build import build_trainer
    from purer.rundir import RunDir

    config = config.model_copy(deep=True)
    config.name = name
    run = RunDir.create(config)
    first = build_trainer(config, run, torch.device("cpu"))
    first.config.train.steps = stop_after
    first.train()
    second = build_trainer(RunDir.open(run.path).load_config(), RunDir.open(run.path),
                           torch.device("cpu"))
    second.resume()
    assert second.step == stop_after
    second.train()
    return run.path


def wait_for_metrics(run: Path, lines: int, timeout_s: float = 240) -> None:
    """Until the run (in another process) has logged ``lines`` metric lines,
    or ``timeout_s`` passed (the caller's assertions then tell)."""
    deadline = time.monotonic() + timeout_s
    path = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.01)
