"""Side by side: CPU training step and evaluation with and without the
memory-traffic shortcuts of Conv4's first blocks.

The shortcuts (all the same math, only rounding differs):

* moments from PyTorch's batch-norm statistics kernel instead of two sums
  (``purer.losses._moment_values``);
* a folded teacher's BN tap and the max-pool after it as one step with one
  backward buffer (``purer.teacher_view._fuse_taps_with_pools``);
* Conv4's BatchNorm-ReLU-max-pool computed on the pooled map
  (``purer.batch_norm.norm_relu_maxpool``), in MAML's meta step and at
  meta-test.

Both variants live in one process and alternate step by step (evaluation:
run by run), so the machine's drift hits both alike; the report gives each
variant's median and the median of the per-pair ratios.

    python benchmarks/bench_pooled.py --shot 1 --steps 40
    python benchmarks/bench_pooled.py --shot 5 --steps 40 --eval-runs 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import purer_plugins.architectures as architectures
import torch
from bench_eval import learner
from bench_step import arguments as step_arguments
from bench_step import build
from pairs import time_evaluations, time_steps

from purer import losses, teacher_view
from purer.runtime import tune_allocator


@contextlib.contextmanager
def shortcuts(enabled: bool) -> Iterator[None]:
    if enabled:
        yield
        return
    with mock.patch.object(losses, "_moment_values", losses.summed_moments), \
            mock.patch.object(teacher_view, "_fuse_taps_with_pools", lambda traced: None), \
            mock.patch.object(architectures, "norm_relu_maxpool", lambda *args: None):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40, help="measured steps per variant (0: skip)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-runs", type=int, default=3, help="600-task evaluations per variant (0: skip)")
    parser.add_argument("--root", default="../shared/data/cifar-fs")
    args = parser.parse_args()
    tune_allocator()
    report: dict = {"threads": torch.get_num_threads(), "shot": args.shot}
    if args.steps:
        step_args = step_arguments().parse_args(["--shot", str(args.shot), "--arch", "conv4",
                                                  "--device", "cpu"])
        trainers = {}
        for enabled in (False, True):
            with shortcuts(enabled):
                trainers[enabled] = build(step_args, torch.device("cpu"))
        report["step"] = time_steps(trainers, args.steps, args.warmup, shortcuts)
        print(json.dumps(report["step"]), flush=True)
    if args.eval_runs and Path(args.root).is_dir():
        meta = learner("loop")
        report["eval"] = time_evaluations({False: meta, True: meta}, args.eval_runs, args.root, shortcuts)
        print(json.dumps(report["eval"]), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
