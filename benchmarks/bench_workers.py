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

import json
from pathlib import Path

import torch
from bench_eval import learner
from bench_step import arguments as step_arguments
from bench_step import build
from pairs import pair_arguments, time_evaluations, time_steps

from purer.runtime import tune_allocator


def main() -> None:
    parser = pair_arguments(__doc__.splitlines()[0])
    parser.add_argument("--workers", default="auto", help="cpu_workers of the threaded variant")
    parser.add_argument("--zoo", default=None, help="teachers from this zoo (default: random Conv4s)")
    args = parser.parse_args()
    variants = {False: "1", True: args.workers}  # True is the variant measured against False
    tune_allocator()
    report: dict = {"threads": torch.get_num_threads(), "shot": args.shot, "workers": args.workers}
    if args.steps:
        zoo = ["--zoo", args.zoo] if args.zoo else []
        trainers = {threaded: build(step_arguments().parse_args(
            ["--shot", str(args.shot), "--arch", "conv4", "--device", "cpu", "--cpu-workers", workers, *zoo]),
            torch.device("cpu")) for threaded, workers in variants.items()}
        report["step"] = time_steps(trainers, args.steps, args.warmup)
        print(json.dumps(report["step"]), flush=True)
    if args.eval_runs and Path(args.root).is_dir():
        learners = {threaded: learner("loop", cpu_workers=workers) for threaded, workers in variants.items()}
        report["eval"] = time_evaluations(learners, args.eval_runs, args.root)
        print(json.dumps(report["eval"]), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
