"""Two variants of the same work, measured side by side in one process.

This project's VM drifts by tens of percent within an hour, more than most
changes worth measuring, so the variants alternate (step by step, or run by
run) and the report gives each one's median and the median of the per-pair
ratios (``True`` over ``False``). ``context(variant)`` is entered around
each timed call (``benchmarks/bench_pooled.py`` patches code out in it).
Used by ``bench_pooled.py``, ``bench_pool_grad.py`` and ``bench_workers.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from purer.data import load_split
from purer.data.episodes import make_task_list
from purer.engine.trainer import ECITrainer
from purer.evaluation.evaluator import evaluate
from purer.interfaces import MetaLearner
from purer.runtime import tune_allocator

Context = Callable[[bool], AbstractContextManager]


def no_context(variant: bool) -> AbstractContextManager:
    return contextlib.nullcontext()


def summary(times: dict[bool, list[float]]) -> dict:
    ratios = [on / off for on, off in zip(times[True], times[False])]
    return {"median_on_s": statistics.median(times[True]), "median_off_s": statistics.median(times[False]),
            "median_ratio_on_over_off": statistics.median(ratios), "pairs": len(ratios)}


def time_steps(trainers: dict[bool, ECITrainer], steps: int, warmup: int,
               context: Context = no_context) -> dict:
    """Outer steps of both trainers, alternating; the first ``warmup`` untimed."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for step in range(1, warmup + steps + 1):
        for variant, trainer in trainers.items():
            with context(variant):
                start = time.perf_counter()
                trainer.outer_step(step)
                if step > warmup:
                    times[variant].append(time.perf_counter() - start)
    return summary(times)


def time_evaluations(learners: dict[bool, MetaLearner], runs: int, root: str,
                     context: Context = no_context) -> dict:
    """600 CIFAR-FS 5-way 1-shot test tasks per run and variant, alternating."""
    split = load_split("cifar-fs", "meta_test", root)
    tasks = make_task_list(split, 5, 1, 15, 600, seed=2023)
    times: dict[bool, list[float]] = {False: [], True: []}
    accuracy: dict[bool, float] = {}
    for _ in range(runs):
        for variant, learner in learners.items():
            with context(variant):
                result = evaluate(learner, tasks, split, "cpu", batch_tasks=50)
            times[variant].append(result.seconds)
            accuracy[variant] = result.accuracy
    return {**summary(times), "accuracy_on": accuracy[True], "accuracy_off": accuracy[False]}


def pair_arguments(description: str) -> argparse.ArgumentParser:
    """The options every side-by-side benchmark takes (a script adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40, help="measured steps per variant (0: skip)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-runs", type=int, default=3, help="600-task evaluations per variant (0: skip)")
    parser.add_argument("--root", default="../shared/data/cifar-fs")
    return parser


def patched_code_main(description: str, context: Context) -> None:
    """Command line of a benchmark whose two variants differ by code that
    ``context(False)`` patches out: steps (trainers built inside the context)
    and 600-task evaluations, alternating, printed as JSON."""
    from bench_eval import learner
    from bench_step import arguments as step_arguments
    from bench_step import build

    args = pair_arguments(description).parse_args()
    tune_allocator()
    report: dict = {"threads": torch.get_num_threads(), "shot": args.shot}
    if args.steps:
        step_args = step_arguments().parse_args(["--shot", str(args.shot), "--arch", "conv4",
                                                  "--device", "cpu"])
        trainers = {}
        for enabled in (False, True):
            with context(enabled):
                trainers[enabled] = build(step_args, torch.device("cpu"))
        report["step"] = time_steps(trainers, args.steps, args.warmup, context)
        print(json.dumps(report["step"]), flush=True)
    if args.eval_runs and Path(args.root).is_dir():
        meta = learner("loop")
        report["eval"] = time_evaluations({False: meta, True: meta}, args.eval_runs, args.root, context)
        print(json.dumps(report["eval"]), flush=True)
    print(json.dumps(report))
