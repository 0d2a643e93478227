"""Seconds to draw and materialise an evaluation set of few-shot tasks on the CPU.

Loads ``eval.split`` of ``[data]`` once (timed apart), then ``--repeats``
times draws ``eval.tasks`` N-way K-shot Q-query tasks
(:func:`~purer.data.episodes.make_task_list`, a new seed each run) and
materialises all of them as normalised float episodes
(:meth:`~purer.data.episodes.TaskList.batches`), in chunks of each
``--batch`` size. Reports the medians and minima of drawing, materialising
and both. Target: under 1 s for 600 5-way 5-shot 15-query tasks of CIFAR-FS
after loading.

    python -m benchmarks episodes --data cifar-fs --root DIR
    python -m benchmarks episodes --shot 1 --batch 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from benchmarks import options, timing
from purer.data import read_split
from purer.data.episodes import make_task_list
from purer.types import SplitData

# The smallest run (tests/core/test_benchmarks.py).
SMOKE = ["--config", options.TINY_CONFIG, "--repeats", "1", "--warmup", "0", "--batch", "2"]

BASE: dict[str, Any] = {"train": {"way": 5, "shot": 5}, "eval": {"tasks": 600, "query": 15}}


def run_once(split: SplitData, way: int, shot: int, query: int, tasks: int, seed: int,
             batch: int) -> tuple[float, float]:
    """(seconds to draw the task list, seconds to materialise every episode)."""
    start = time.perf_counter()
    task_list = make_task_list(split, way, shot, query, tasks, seed=seed)
    drawn = time.perf_counter()
    checksum = 0.0
    for episodes in task_list.batches(split, "cpu", batch):
        checksum += float(episodes.query[:, 0, 0, 0, 0].sum())  # touch the result
    return drawn - start, time.perf_counter() - drawn


def arguments() -> argparse.ArgumentParser:
    parser = options.parser("episodes", __doc__, repeats=7, warmup=1,
                            shortcuts=("data", "root", "way", "shot", "tasks", "seed"))
    parser.add_argument("--batch", default="10,50",
                        help="tasks per materialised chunk; comma-separated to compare")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    options.prepare(args)
    config = options.run_config(args, BASE)
    start = time.perf_counter()
    split = read_split(config.data, config.eval.split)
    load_s = time.perf_counter() - start
    train, e = config.train, config.eval
    for batch in (int(b) for b in args.batch.split(",")):
        runs = [run_once(split, train.way, train.shot, e.query, e.tasks, seed, batch)
                for seed in range(-args.warmup, args.repeats)][args.warmup:]
        parts = {"draw": [a for a, _ in runs], "materialise": [b for _, b in runs],
                 "total": [a + b for a, b in runs]}
        row = {"benchmark": "episodes", "dataset": config.data.name, "split": e.split,
               "images": len(split), "classes": split.num_classes, "load_s": round(load_s, 3),
               "tasks": e.tasks, "way": train.way, "shot": train.shot, "query": e.query,
               "batch": batch, **timing.machine(torch.device("cpu")),
               **{f"{name}_median_s": statistics.median(v) for name, v in parts.items()},
               **{f"{name}_min_s": min(v) for name, v in parts.items()}, "runs": len(runs)}
        timing.emit(row, args.json_path)
