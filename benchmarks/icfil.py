"""ICFIL seconds per task at meta-test: the shipped defaults against the old ones, same tasks.

Both variants score the same seeded task list (5-way 1-shot, 15 queries, the
``eval.split`` of ``[data]``), alternating run by run in one process, so a
shared machine's drift hits both alike; the report gives each variant's
median seconds per task, its accuracy ± ci95, and the median of the per-pair
ratios. ``old`` is ICFIL as it shipped before the speed work (4 pseudo
images per class, 30 synthesis steps with the support-statistics BN term,
the tasks of a batch one after the other on all intra-op threads); ``new`` is the current defaults. With
``--run DIR`` the meta-model is the run's val-selected checkpoint (accuracy
then means something); without it a freshly initialised one (the cost does
not depend on the weights). ``--neighbour`` keeps one busy Python process
running beside the measurement, as on a machine shared with another job.

``--threads-study`` times the current defaults three ways instead, on two
cores: the tasks of a batch on two worker threads of one intra-op thread
each (``threads = 2``, ``cpu_workers = 2``), one task at a time on two
intra-op threads (``threads = "all"``), and one thread in all (``threads =
1``, the default).

    python -m benchmarks icfil --run runs/quick --tasks 100
    python -m benchmarks icfil --threads 1 --neighbour
    python -m benchmarks icfil --threads-study --neighbour --tasks 20
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from contextlib import contextmanager
from typing import Any

import torch

from benchmarks import options, timing
from purer.config import RunConfig
from purer.data import read_split
from purer.data.episodes import make_task_list
from purer.evaluation.evaluator import EvalResult, evaluate
from purer.interfaces import MetaLearner
from purer.parallel import intra_op_threads
from purer.pipeline.build import build_calibrator, build_meta_learner, build_meta_model
from purer.rundir import resolve_device

SMOKE = ["--config", options.TINY_CONFIG, "--repeats", "1"]

# ICFIL's options before the speed work (the "today's code").
OLD = ["calibrator.pseudo_per_class=4", "calibrator.synthesis_steps=30",
       "calibrator.bn_target=support", "calibrator.calib_steps=1", "calibrator.head_steps=100",
       "calibrator.batching=auto", "calibrator.cpu_workers=1", "calibrator.threads=all"]

# --threads-study: name -> (calibrator.threads, calibrator.cpu_workers), the process
# keeping its own thread count (two on a 2-core machine)
STUDY: dict[str, tuple[str, int]] = {"2 workers x 1 thread": ("2", 2),
                                     "1 worker x 2 threads": ("all", 1), "1 thread": ("1", 1)}

BASE: dict[str, Any] = {"train": {"way": 5, "shot": 1}, "eval": {"tasks": 100, "query": 15},
                        "calibrator": {"name": "icfil"}}


@contextmanager
def neighbour(on: bool):
    """A busy process beside the measurement, while the block runs."""
    if not on:
        yield
        return
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        busy.kill()
        busy.wait()


def learner_and_config(args: Any, device: torch.device) -> tuple[MetaLearner, RunConfig, str]:
    if args.run:
        from purer.pipeline.final import load_meta_learner

        learner, run_config, info = load_meta_learner(args.run, "best", device)
        layers = {"data": run_config.data.model_dump(), "inversion":
                  run_config.inversion.model_dump(), "train": {"meta_arch":
                                                               run_config.train.meta_arch}}
        config = options.run_config(args, {**BASE, **layers})
        return learner, config, f"run {args.run} (best, step {info.get('step')})"
    config = options.run_config(args, BASE)
    torch.manual_seed(config.seed)
    learner = build_meta_learner(config.meta, build_meta_model(config.train), device)
    return learner, config, "fresh meta-model"


def main(argv: list[str] | None = None) -> None:
    parser = options.parser("icfil", __doc__, repeats=3, warmup=0,
                            shortcuts=("data", "root", "shot", "way", "tasks", "batch_tasks",
                                       "seed", "device"))
    parser.add_argument("--run", help="a run directory: score its val-selected checkpoint")
    parser.add_argument("--neighbour", action="store_true",
                        help="keep one busy process running beside the measurement")
    parser.add_argument("--threads-study", action="store_true",
                        help="time the defaults on 2 workers x 1 thread, 1 x 2 and 1 x 1")
    args = parser.parse_args(argv)
    options.prepare(args)
    device = resolve_device("cpu" if args.device is None else args.device)
    learner, config, what = learner_and_config(args, device)
    e = config.eval
    split = read_split(config.data, e.split)
    tasks = make_task_list(split, config.train.way, config.train.shot, e.query, e.tasks, e.seed)
    if args.threads_study:
        names = list(STUDY)
        sections = {name: options.run_config(args, BASE, [f"calibrator.threads={count}",
                                                          f"calibrator.cpu_workers={workers}"])
                    .calibrator for name, (count, workers) in STUDY.items()}
        threads = {name: torch.get_num_threads() for name in names}
    else:
        names = ["new", "old"]
        sections = {"new": config.calibrator, "old": options.run_config(args, BASE, OLD).calibrator}
        threads = {name: torch.get_num_threads() for name in names}

    def run(name: str) -> EvalResult:
        calibrator = build_calibrator(sections[name], config.inversion)  # fresh noise streams
        try:
            with intra_op_threads(threads[name]):
                return evaluate(learner, tasks, split, device, calibrator, e.batch_tasks,
                                description=f"icfil {name}")
        finally:
            if getattr(calibrator, "pool", None) is not None:
                calibrator.pool.close()

    with neighbour(args.neighbour):
        seconds, results = timing.alternate({name: (lambda i, name=name: run(name))
                                             for name in names}, args.repeats, args.warmup)
    row: dict[str, Any] = {"benchmark": "icfil", "meta_model": what, "dataset": config.data.name,
                           "split": e.split, "tasks": len(tasks), "way": config.train.way,
                           "shot": config.train.shot, "neighbour": args.neighbour,
                           **timing.machine(device)}
    for name in names:
        last = results[name][-1]
        summary = timing.summary(seconds[name])
        row[name] = {**summary, "seconds_per_task": summary["median_s"] / len(tasks),
                     "accuracy": round(last.accuracy, 2), "ci95": round(last.ci95, 2),
                     "torch_threads": threads[name], "options": sections[name].model_dump()}
        row[f"{name.replace(' ', '_')}_per_task_s"] = round(row[name]["seconds_per_task"], 4)
    first = names[0]
    for name in names[1:]:
        ratios = [o / n for o, n in zip(seconds[name], seconds[first])]
        row[f"median_ratio_{name}_over_{first}"] = round(statistics.median(ratios), 3)
    for name in names:
        r = row[name]
        print(f"{name}: {r['seconds_per_task']:.4f} s per task (median of {r['runs']}), "
              f"accuracy {r['accuracy']:.2f} ± {r['ci95']:.2f} %", file=sys.stderr)
    timing.emit(row, args.json_path)
