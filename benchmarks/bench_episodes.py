"""Time making and materialising an evaluation set of few-shot tasks on CPU.

Loads CIFAR-FS meta_test from its npz form, then, ``--runs`` times, draws
``--tasks`` N-way K-shot Q-query tasks (``make_task_list``) and materialises
all of them as normalised float episodes (``TaskList.batches``). Prints the
load time and the median and minimum of the runs. Target: under 1 s for 600
5-way 5-shot 15-query tasks after loading.

    python benchmarks/bench_episodes.py [ROOT] [--tasks 600] [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from purer_plugins.datasets.cifar_fs import CifarFS

from purer.data.episodes import make_task_list
from purer.runtime import tune_allocator

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-fs"


def run_once(split, args: argparse.Namespace, seed: int, batch: int) -> tuple[float, float]:
    """(seconds to draw the task list, seconds to materialise every episode)."""
    start = time.perf_counter()
    tasks = make_task_list(split, args.way, args.shot, args.query, args.tasks, seed=seed)
    drawn = time.perf_counter()
    checksum = 0.0
    for episodes in tasks.batches(split, "cpu", batch):
        checksum += float(episodes.query[:, 0, 0, 0, 0].sum())  # touch the result
    return drawn - start, time.perf_counter() - drawn


def report(runs: list[tuple[float, float]]) -> None:
    rows = {"draw": [a for a, _ in runs], "materialise": [b for _, b in runs],
            "total": [a + b for a, b in runs]}
    for name, values in rows.items():
        print(f"  {name:12s} median {statistics.median(values) * 1e3:8.1f} ms   "
              f"min {min(values) * 1e3:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(DEFAULT_ROOT))
    parser.add_argument("--split", default="meta_test")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--batch", default="10,50",
                        help="tasks per materialised chunk; comma-separated to compare")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    tune_allocator()  # see purer/runtime.py; PURER_MALLOC_TUNING=0 measures without it

    start = time.perf_counter()
    split = CifarFS(CifarFS.Options(root=args.root, layout="npz")).load(args.split)
    load = time.perf_counter() - start
    print(f"loaded {args.split}: {len(split):,} images, {split.num_classes} classes "
          f"in {load:.2f} s (torch threads: {torch.get_num_threads()})")
    for batch in (int(b) for b in args.batch.split(",")):
        run_once(split, args, -1, batch)  # warm-up
        runs = [run_once(split, args, seed, batch) for seed in range(args.runs)]
        print(f"{args.tasks} tasks {args.way}-way {args.shot}-shot {args.query}-query, "
              f"chunks of {batch} tasks, {args.runs} runs (target: total < 1000 ms):")
        report(runs)


if __name__ == "__main__":
    main()
