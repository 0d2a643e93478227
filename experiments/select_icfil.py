"""Choose ICFIL's open knobs on meta-val (never on meta-test).

Scores standard meta-testing and a coordinate search over ICFIL's options on
one seeded meta-val task list, with the val-selected checkpoint of a run
(``--run``) or, when no trained run exists, a fresh meta-model: the ``real``
baseline (``--init real``, the default: the learner briefly meta-trained on
real meta-train images, :mod:`purer.pipeline.real_data`) or an initialiser
that needs no teachers (``--init random``). ICFIL synthesises with the
run's ``[inversion]`` terms (the defaults without ``--run``). Each stage
keeps the best value found so far and varies one knob; the result is a
table of accuracy ± ci95, seconds per task, and the paired difference (same
tasks) to the head-only row ± its ci95, which is far tighter than the rows'
own intervals.

Usage::

    python experiments/select_icfil.py --run runs/quick --tasks 200
    python experiments/select_icfil.py --init real --init-steps 300
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from purer.config import PluginSection, RunConfig, build_config
from purer.data import read_split
from purer.data.episodes import make_task_list
from purer.errors import ConfigError
from purer.evaluation.evaluator import ci95, evaluate
from purer.interfaces import MetaLearner
from purer.pipeline.build import build_inversion
from purer.pipeline.real_data import REAL_DATA, train_on_real_data
from purer.plugins import get_host
from purer.runtime import tune_allocator

STAGES: list[tuple[str, list[Any]]] = [
    ("calib_lr", [1e-4, 1e-3, 1e-2]),
    ("bn_target", ["support", "none"]),
    ("pseudo_per_class", [2, 4, 8]),
    ("synthesis_steps", [10, 30, 100]),
]


def meta_learner(args: argparse.Namespace) -> tuple[MetaLearner, RunConfig, str]:
    """(learner, the configuration it comes with, what it is)."""
    device = torch.device("cpu")
    if args.run:
        from purer.pipeline.final import load_meta_learner

        learner, config, info = load_meta_learner(args.run, "best", device)
        return learner, config, f"run {args.run} (best checkpoint, step {info.get('step')})"
    data = {"name": args.data, **({"root": args.root} if args.root else {})}
    config = build_config({"data": data, "train": {"way": args.way, "shot": args.shot,
                                                   "steps": args.init_steps}}, host=get_host())
    if args.init == REAL_DATA:
        learner = train_on_real_data(config, args.way, args.shot, device)
        return learner, config, f"{config.train.meta_arch}, the real-data baseline " \
                                     f"({args.init_steps} steps)"
    from purer.pipeline.build import build_meta_learner, build_meta_model, initialize

    if get_host().get("initializer", args.init).needs_teachers:
        raise ConfigError(f"--init {args.init}: needs a teacher zoo; give --run, or --init "
                          f"{REAL_DATA} or an initialiser that needs no teachers")
    torch.manual_seed(config.seed)
    model = build_meta_model(config.train)
    initialize(model, PluginSection(name=args.init), [])
    return build_meta_learner(config.meta, model, device), config, \
        f"{config.train.meta_arch}, init {args.init}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run directory with a best checkpoint")
    parser.add_argument("--init", default=REAL_DATA, help=f"without --run: '{REAL_DATA}' (the "
                        "learner trained on real data) or an initialiser that needs no teachers")
    parser.add_argument("--init-steps", type=int, default=300,
                        help=f"outer steps of --init {REAL_DATA}")
    parser.add_argument("--data", default="synthetic-shapes")
    parser.add_argument("--root", help="dataset folder (default: $PURER_DATA_DIR/<dataset>)")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7, help="task-list seed (meta-val)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", default="icfil_selection.json")
    parser.add_argument("--stages", help="JSON list of [knob, [values]] replacing the default search")
    args = parser.parse_args()
    tune_allocator()  # see purer/runtime.py; PURER_MALLOC_TUNING=0 measures without it
    if args.threads:
        torch.set_num_threads(args.threads)
    learner, config, what = meta_learner(args)
    data = config.data
    split = read_split(data, "meta_val")
    tasks = make_task_list(split, args.way, args.shot, 15, args.tasks, args.seed,
                           dataset=data.name, split_name="meta_val")
    host = get_host()
    rows: list[dict[str, Any]] = []
    reference: list[float] = []

    inversion = build_inversion(config.inversion)

    def score(label: str, options: dict[str, Any] | None) -> float:
        calibrator = None
        if options is not None:
            calibrator = host.create("calibrator", "icfil", options)
            calibrator.setup(inversion)
        result = evaluate(learner, tasks, split, "cpu", calibrator, batch_tasks=25,
                          description=label)
        if options is not None and not reference:
            reference.extend(result.accuracies)  # paired differences are against this row
        delta = [a - b for a, b in zip(result.accuracies, reference)] if reference else []
        row = {"label": label, "options": options, "accuracy": round(result.accuracy, 2),
               "ci95": round(result.ci95, 2), "seconds_per_task": round(result.seconds_per_task, 3),
               "paired_delta": round(sum(delta) / len(delta), 2) if delta else None,
               "paired_ci95": round(ci95(delta), 2) if delta else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return result.accuracy

    score("no calibration", None)
    score("head only (calib_steps=0, synthesis_steps=0)", {"calib_steps": 0, "synthesis_steps": 0})
    best: dict[str, Any] = {}
    for knob, values in (json.loads(args.stages) if args.stages else STAGES):
        results = {}
        for value in values:
            options = {**best, knob: value}
            results[value] = score(f"{knob}={value}", options)
        best[knob] = max(results, key=results.get)
    report = {"meta_model": what, "data": data.name, "split": "meta_val", "way": args.way,
              "shot": args.shot, "tasks": args.tasks, "task_seed": args.seed,
              "threads": torch.get_num_threads(), "chosen": best, "rows": rows}
    Path(args.json).write_text(json.dumps(report, indent=2))
    print("chosen:", best)


if __name__ == "__main__":
    main()
