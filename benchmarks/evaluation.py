"""Seconds of one meta-test evaluation: 600 tasks of 5-way 1-shot, 15 queries, by default.

What is timed is :func:`purer.evaluation.evaluator.evaluate` end to end:
building the episodes from the uint8 split (gather and normalise), the
inner loop, the query predictions (through the calibrator, when it is not a
passthrough) and the accuracies. The split and the task list are made once,
outside the clock. The meta-model is freshly initialised (``train.meta_arch``,
seeded): the cost does not depend on the weights. Any registered
meta-learner or calibrator is timed by naming it (``--meta``,
``--calibrator``), with its options (``--set meta.test_batching=vmap``).
The dataset is ``[data]`` (default: the built-in ``synthetic-shapes``, which
needs no files); the split is ``eval.split``.

    python -m benchmarks evaluation
    python -m benchmarks evaluation --data cifar-fs --root DIR --set meta.test_batching=loop
    python -m benchmarks evaluation --channels-last --precision bf16
    python -m benchmarks evaluation --calibrator icfil --tasks 20 --repeats 1
    python -m benchmarks evaluation --vs-set meta.cpu_workers=1       # side by side
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks import options, timing
from purer.config import RunConfig
from purer.data import read_split
from purer.data.episodes import TaskList, make_task_list
from purer.evaluation.evaluator import EvalResult, evaluate
from purer.interfaces import Calibrator, MetaLearner
from purer.pipeline.build import build_calibrator, build_meta_learner, build_meta_model
from purer.rundir import resolve_device
from purer.types import SplitData

# The smallest run (tests/core/test_benchmarks.py).
SMOKE = ["--config", options.TINY_CONFIG, "--repeats", "1"]

BASE: dict[str, Any] = {"train": {"way": 5, "shot": 1}, "eval": {"tasks": 600, "query": 15}}


class Evaluation:
    """One configuration's evaluation, ready to run: split, tasks, learner, calibrator."""

    def __init__(self, config: RunConfig, device: torch.device, split: SplitData) -> None:
        e, train = config.eval, config.train
        self.config, self.device, self.split = config, device, split
        self.tasks: TaskList = make_task_list(split, train.way, train.shot, e.query, e.tasks,
                                              e.seed)
        torch.manual_seed(config.seed)
        self.learner: MetaLearner = build_meta_learner(config.meta, build_meta_model(train), device)
        calibrator = build_calibrator(config.calibrator, config.inversion)
        self.calibrator: Calibrator | None = None if calibrator.passthrough else calibrator

    def __call__(self, channels_last: bool = False, precision: str = "fp32") -> EvalResult:
        return evaluate(self.learner, self.tasks, self.split, self.device, self.calibrator,
                        self.config.eval.batch_tasks, channels_last=channels_last,
                        precision=precision, description=self.config.meta.name)


def prepared(configs: dict[str, RunConfig], device: torch.device) -> dict[str, Evaluation]:
    """Each variant's evaluation; variants on the same data share the loaded split."""
    splits: dict[str, SplitData] = {}
    out = {}
    for name, config in configs.items():
        key = repr((config.data.model_dump(), config.eval.split))
        if key not in splits:
            splits[key] = read_split(config.data, config.eval.split)
        out[name] = Evaluation(config, device, splits[key])
    return out


def arguments() -> argparse.ArgumentParser:
    parser = options.parser("evaluation", __doc__, repeats=3, warmup=0, versus=True,
                            shortcuts=("data", "root", "meta", "calibrator", "shot", "way", "tasks",
                                       "batch_tasks", "seed", "device"))
    parser.add_argument("--channels-last", action="store_true", help="NHWC images and weights")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: adaptation and prediction under bfloat16 autocast")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    options.prepare(args)
    configs = options.variants(args, BASE)
    config = configs["base"]
    device = resolve_device(config.device)
    runs = prepared(configs, device)
    calls = {name: (lambda i, run=run: run(args.channels_last, args.precision))
             for name, run in runs.items()}
    seconds, results = timing.alternate(calls, args.repeats, args.warmup,
                                        timing.synchronizer(device))
    report = timing.compare(seconds)
    last: EvalResult = results["base"][-1]
    row = {"benchmark": "evaluation", "dataset": config.data.name, "split": config.eval.split,
           "tasks": last.n_tasks, "way": config.train.way, "shot": config.train.shot,
           "meta": config.meta.name, "calibrator": config.calibrator.name,
           "meta_arch": config.train.meta_arch, "channels_last": args.channels_last,
           "precision": args.precision, "settings": args.assignments, "versus": args.versus,
           **timing.machine(device), **report,
           "seconds_per_task": report["median_s"] / max(last.n_tasks, 1),
           "accuracy": round(last.accuracy, 3), "peak_rss_mb": timing.peak_rss_mb()}
    if "vs" in results:
        row["vs"]["accuracy"] = round(results["vs"][-1].accuracy, 3)
    timing.emit(row, args.json_path)
