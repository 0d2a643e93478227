"""Choose ICFIL's open knobs on meta-val (never on meta-test).

Scores standard meta-testing and a coordinate search over ICFIL's options on
one seeded meta-val task list, with the val-selected checkpoint of a run
(``--run``) or, when no trained run exists, a meta-model initialised by an
initialiser plugin (``--init maml-real``: MAML briefly trained on real
meta-train images). Each stage keeps the best value found so far and varies
one knob; the result is a table of accuracy ± ci95, seconds per task, and
the paired difference (same tasks) to the head-only row ± its ci95, which is
far tighter than the rows' own intervals.

Usage::

    python benchmarks/select_icfil.py --run runs/quick --tasks 200
    python benchmarks/select_icfil.py --init maml-real --init-steps 300
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from purer.data import load_split
from purer.data.episodes import make_task_list
from purer.evaluation.evaluator import ci95, evaluate
from purer.plugins import get_host
from purer.runtime import tune_allocator

STAGES: list[tuple[str, list[Any]]] = [
    ("calib_lr", [1e-4, 1e-3, 1e-2]),
    ("bn_target", ["support", "none"]),
    ("pseudo_per_class", [2, 4, 8]),
    ("synthesis_steps", [10, 30, 100]),
]


def meta_learner(args: argparse.Namespace):
    if args.run:
        from purer.engine.checkpoint import load_meta_learner

        learner, config, info = load_meta_learner(args.run, "best", "cpu")
        return learner, config.data.name, config.data.options.get("root"), \
            f"run {args.run} (best checkpoint, step {info.get('step')})"
    from purer.models import create_model

    torch.manual_seed(0)
    model = create_model("conv4", num_classes=args.way)
    options = {"data": args.data, "root": args.root, "steps": args.init_steps, "way": args.way,
               "shot": args.shot} if args.init == "maml-real" else {}
    get_host().create("initializer", args.init, options).initialize(model, [])
    learner = get_host().create("meta_learner", "maml", {})
    learner.setup(model, torch.device("cpu"))
    return learner, args.data, args.root, f"conv4, init {args.init} {options}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run directory with a best checkpoint")
    parser.add_argument("--init", default="maml-real", help="without --run: initialiser")
    parser.add_argument("--init-steps", type=int, default=300)
    parser.add_argument("--data", default="synthetic-shapes")
    parser.add_argument("--root")
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
    learner, data, root, what = meta_learner(args)
    split = load_split(data, "meta_val", root)
    tasks = make_task_list(split, args.way, args.shot, 15, args.tasks, args.seed,
                           dataset=data, split_name="meta_val")
    host = get_host()
    rows: list[dict[str, Any]] = []
    reference: list[float] = []

    def score(label: str, options: dict[str, Any] | None) -> float:
        calibrator = None if options is None else host.create("calibrator", "icfil", options)
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
    report = {"meta_model": what, "data": data, "split": "meta_val", "way": args.way,
              "shot": args.shot, "tasks": args.tasks, "task_seed": args.seed,
              "threads": torch.get_num_threads(), "chosen": best, "rows": rows}
    Path(args.json).write_text(json.dumps(report, indent=2))
    print("chosen:", best)


if __name__ == "__main__":
    main()
