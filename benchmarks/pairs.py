"""Two variants of the same work, measured side by side in one process.

This project's VM drifts by tens of percent within an hour, more than most
changes worth measuring, so the variants alternate (step by step, or run by
run) and the report gives each one's median and the median of the per-pair
ratios (``True`` over ``False``). ``context(variant)`` is entered around
each timed call (``benchmarks/bench_pooled.py`` patches code out in it).
Used by ``bench_pooled.py`` and ``bench_workers.py``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from purer.data import load_split
from purer.data.episodes import make_task_list
from purer.engine.trainer import ECITrainer
from purer.evaluation.evaluator import evaluate
from purer.interfaces import MetaLearner

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
