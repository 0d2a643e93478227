"""Time one 600-task meta-test evaluation (5-way 1-shot, 15 queries) with a Conv4.

What is timed is :func:`purer.evaluation.evaluator.evaluate` end to end:
building the episodes from the uint8 split (gather + normalise), the inner
loop, the query predictions and the accuracies. The task list and the split
are made once, outside the clock. A randomly initialised Conv4 is used: the
cost does not depend on the weights.

Variants: MAML's ``test_batching`` (``loop``: one task after another with
plain autograd; ``vmap``: ``batch_tasks`` tasks in one ``torch.func.vmap``)
crossed with the image layout (NCHW or channels_last), reported as the
median of ``--repeats`` runs, plus the loop under bf16 autocast. ``--icfil-tasks`` also times ICFIL (default
options) and reports seconds per task.

Usage::

    python benchmarks/bench_eval.py                       # both datasets if present
    python benchmarks/bench_eval.py --root ../shared/data/cifar-fs --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from purer.data import load_split
from purer.data.episodes import make_task_list
from purer.evaluation.evaluator import evaluate
from purer.models import create_model
from purer.plugins import get_host
from purer.runtime import strict_fp32, tune_allocator


def learner(batching: str, device: str = "cpu", cpu_workers: str = "auto"):
    torch.manual_seed(0)
    meta = get_host().create("meta_learner", "maml", {"test_batching": batching, "cpu_workers": cpu_workers})
    meta.setup(create_model("conv4", num_classes=5), torch.device(device))
    return meta


def time_plain(split, tasks, batching: str, channels_last: bool, repeats: int,
               batch_tasks: int, precision: str = "fp32", device: str = "cpu") -> dict:
    meta = learner(batching, device)
    times, acc = [], None
    for _ in range(repeats):
        result = evaluate(meta, tasks, split, device, batch_tasks=batch_tasks,
                          channels_last=channels_last, precision=precision,
                          description=f"{batching}")
        times.append(result.seconds)
        acc = result.accuracy if acc is None else acc
    return {"batching": batching, "channels_last": channels_last, "precision": precision,
            "median_s": statistics.median(times),
            "runs_s": [round(t, 3) for t in times], "accuracy": round(acc, 3)}


def time_icfil(split, count: int, batching: str, batch_tasks: int, device: str = "cpu") -> dict:
    tasks = make_task_list(split, 5, 1, 15, count, seed=2023)
    icfil = get_host().create("calibrator", "icfil", {"batching": batching})
    result = evaluate(learner("loop", device), tasks, split, device, calibrator=icfil,
                      batch_tasks=batch_tasks, description=f"icfil {batching}")
    return {"icfil_batching": batching, "tasks": count, "seconds": round(result.seconds, 2),
            "seconds_per_task": round(result.seconds_per_task, 3),
            "options": icfil.options.model_dump()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/cifar-fs", help="CIFAR-FS folder")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-tasks", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--icfil-tasks", type=int, default=20, help="0: skip ICFIL")
    parser.add_argument("--datasets", default="synthetic-shapes,cifar-fs")
    parser.add_argument("--variants", default="loop:0,loop:1,vmap:0,vmap:1,loop:1:bf16",
                        help="batching:channels_last[:bf16] triples")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args()
    tune_allocator()  # see purer/runtime.py; PURER_MALLOC_TUNING=0 measures without it
    strict_fp32()  # fp32 convolutions without TF32 on GPUs (purer/runtime.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    report = {"threads": torch.get_num_threads(), "torch": torch.__version__, "device": device,
              "results": []}
    for name in args.datasets.split(","):
        root = None
        if name == "cifar-fs":
            root = args.root
            if not Path(root).is_dir():
                print(f"skip cifar-fs: {root} not found")
                continue
        split = load_split(name, "meta_test", root)
        tasks = make_task_list(split, 5, 1, 15, args.tasks, seed=2023)
        for variant in args.variants.split(","):
            batching, cl, *precision = variant.split(":")
            row = {"dataset": name, "tasks": args.tasks,
                   **time_plain(split, tasks, batching, cl == "1", args.repeats, args.batch_tasks,
                                precision[0] if precision else "fp32", device)}
            report["results"].append(row)
            print(json.dumps(row), flush=True)
        if args.icfil_tasks:
            for batching in ("vmap", "loop"):
                start = time.perf_counter()
                row = {"dataset": name, **time_icfil(split, args.icfil_tasks, batching,
                                                     min(args.batch_tasks, args.icfil_tasks), device)}
                row.pop("options") if batching == "loop" else None
                report["results"].append(row)
                print(json.dumps(row), flush=True, end=f"  ({time.perf_counter() - start:.0f} s)\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
