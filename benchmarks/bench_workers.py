"""Side by side: CPU training step and evaluation with the work spread over
worker threads (``cpu_workers``, one intra-op thread each) and without
(``cpu_workers=1``: one teacher, episode or task at a time on all threads).

Both variants live in one process and alternate step by step (evaluation:
run by run), so the machine's drift hits both alike; the report gives each
variant's median and the median of the per-pair ratios (see
``purer/parallel.py`` for why threads help on a small CPU).

    python benchmarks/bench_workers.py --shot 1 --steps 40
    python benchmarks/bench_workers.py --shot 5 --steps 40 --eval-runs 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_eval import learner
from bench_pooled import summary
from bench_step import arguments as step_arguments
from bench_step import build

from purer.data import load_split
from purer.data.episodes import make_task_list
from purer.evaluation.evaluator import evaluate
from purer.runtime import tune_allocator

VARIANTS = {False: "1", True: "auto"}  # summary()'s keys: True is the variant measured against False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40, help="measured steps per variant (0: skip)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-runs", type=int, default=3, help="600-task evaluations per variant (0: skip)")
    parser.add_argument("--workers", default="auto", help="cpu_workers of the threaded variant")
    parser.add_argument("--zoo", default=None, help="teachers from this zoo (default: random Conv4s)")
    parser.add_argument("--root", default="../shared/data/cifar-fs")
    args = parser.parse_args()
    VARIANTS[True] = args.workers
    tune_allocator()
    report: dict = {"threads": torch.get_num_threads(), "shot": args.shot, "workers": args.workers}
    if args.steps:
        zoo = ["--zoo", args.zoo] if args.zoo else []
        trainers = {threaded: build(step_arguments().parse_args(
            ["--shot", str(args.shot), "--arch", "conv4", "--device", "cpu", "--cpu-workers", workers, *zoo]),
            torch.device("cpu")) for threaded, workers in VARIANTS.items()}
        times: dict[bool, list[float]] = {False: [], True: []}
        for step in range(1, args.warmup + args.steps + 1):
            for threaded, trainer in trainers.items():
                start = time.perf_counter()
                trainer.outer_step(step)
                if step > args.warmup:
                    times[threaded].append(time.perf_counter() - start)
        report["step"] = summary(times)
        print(json.dumps(report["step"]), flush=True)
    if args.eval_runs and Path(args.root).is_dir():
        split = load_split("cifar-fs", "meta_test", args.root)
        tasks = make_task_list(split, 5, 1, 15, 600, seed=2023)
        learners = {threaded: learner("loop", cpu_workers=workers) for threaded, workers in VARIANTS.items()}
        times, accuracy = {False: [], True: []}, {}
        for _ in range(args.eval_runs):
            for threaded, meta in learners.items():
                result = evaluate(meta, tasks, split, "cpu", batch_tasks=50)
                times[threaded].append(result.seconds)
                accuracy[threaded] = result.accuracy
        report["eval"] = {**summary(times), "accuracy_on": accuracy[True], "accuracy_off": accuracy[False]}
        print(json.dumps(report["eval"]), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
