"""Seconds per ECI outer step, paper configuration (method.md §2, §6).

13 teachers x 5 classes (64 classes: 12 blocks of 5 + one of 4), shot+query
images per class, episode batch 4, second-order MAML, gradient switch on
from step 0 (it fires by its rule, as in a run past step 4000). Teachers are
freshly initialised unless --zoo is given: the cost of a step does not depend
on the weights. Prints the median over the measured steps and the projection
for 60,000 steps.

    python benchmarks/bench_step.py --shot 1
    python benchmarks/bench_step.py --shot 5 --precision bf16
    python benchmarks/bench_step.py --shot 1 --compile       # after a one-off compile
    python benchmarks/bench_step.py --arch conv4 --arch cifar_resnet10 --arch cifar_resnet18   # SH
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from purer.config import RunConfig
from purer.engine.trainer import ECITrainer
from purer.models import create_model
from purer.plugins import get_host
from purer.runtime import strict_fp32, tune_allocator
from purer.types import InputSpace, Teacher, find_bn_layers

CIFAR = InputSpace(32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def random_teachers(archs: list[str], device: torch.device, classes: int = 64, way: int = 5) -> list[Teacher]:
    teachers = []
    for k, start in enumerate(range(0, classes, way)):
        ids = list(range(start, min(start + way, classes)))
        arch = archs[k % len(archs)]
        model = create_model(arch, num_classes=len(ids)).to(device).eval().requires_grad_(False)
        teachers.append(Teacher(f"t{k:02d}", model, ids, [str(i) for i in ids], CIFAR, arch=arch,
                                bn_layers=find_bn_layers(model)))
    return teachers


def build(args: argparse.Namespace, device: torch.device) -> ECITrainer:
    torch.manual_seed(0)
    config = RunConfig(device=str(device), train={"shot": args.shot, "query": 15,
                                                  "cuda_graph": {"on": True, "off": False}.get(
                                                      args.cuda_graph, args.cuda_graph)},
                       inverter={"name": "deepinv", "precision": args.precision,
                                 "compile": args.compile, "fold_batch_norm": not args.no_fold,
                                 "batch_teachers": args.batch_teachers,
                                 "cpu_workers": args.cpu_workers},
                       curriculum={"name": "gradient-switch", "start": 0})
    host = get_host()
    if args.zoo:
        from purer.zoo.load import load_teachers
        teachers = load_teachers(args.zoo, device)
    else:
        teachers = random_teachers(args.arch, device)
    meta = host.create("meta_learner", "maml", {"first_order": args.first_order,
                                                 "native_batch_norm": args.native_batch_norm,
                                                 "batch_episodes": args.batch_episodes,
                                                 "cpu_workers": args.cpu_workers})
    meta.setup(create_model("conv4", num_classes=5), device)
    inverter = host.create("inverter", "deepinv", config.inverter.options)
    generator = torch.Generator().manual_seed(0)
    inverter.setup(teachers, args.shot + 15, device, generator)
    curriculum = host.create("curriculum", "gradient-switch", {"start": 0})
    return ECITrainer(config, None, device, teachers, meta, inverter, curriculum, CIFAR,
                      generator=generator)


def time_steps(trainer: ECITrainer, steps: int, warmup: int) -> tuple[list[float], int]:
    """Seconds of each measured outer step (after ``warmup`` steps; device
    work finished inside the clock) and how often the switch fired."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    times, fired = [], 0
    for step in range(1, warmup + steps + 1):
        sync()
        t0 = time.perf_counter()
        record = trainer.outer_step(step)
        sync()
        if step > warmup:
            times.append(time.perf_counter() - t0)
            fired += record["switch"]
    return times, fired


def arguments() -> argparse.ArgumentParser:
    """The command line; benchmarks/bench_pooled.py builds its trainers from it too."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--arch", action="append", default=None)
    parser.add_argument("--zoo", default=None)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile each teacher's loss")
    parser.add_argument("--no-fold", action="store_true",
                        help="teachers' BN read by hooks instead of folded into their convs (the slower reference)")
    parser.add_argument("--native-batch-norm", action="store_true",
                        help="MAML with PyTorch's BatchNorm double backward (the slower reference)")
    parser.add_argument("--batch-teachers", choices=["auto", "on", "off"], default="auto",
                        help="inverter.batch_teachers (auto: on for GPUs)")
    parser.add_argument("--batch-episodes", choices=["auto", "vmap", "loop"], default="auto",
                        help="meta.batch_episodes (auto: vmap on GPUs)")
    parser.add_argument("--cpu-workers", default="auto",
                        help="inverter.cpu_workers and meta.cpu_workers (auto: one per torch thread on CPU)")
    parser.add_argument("--cuda-graph", choices=["auto", "on", "off"], default="auto",
                        help="train.cuda_graph (auto: on for CUDA, as in `purer run`)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    return parser


def main() -> None:
    args = arguments().parse_args()
    tune_allocator()  # see purer/runtime.py; PURER_MALLOC_TUNING=0 measures without it
    strict_fp32()  # fp32 convolutions without TF32 on GPUs (purer/runtime.py)
    args.arch = args.arch or ["conv4"]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    trainer = build(args, device)
    times, fired = time_steps(trainer, args.steps, args.warmup)
    median = statistics.median(times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"shot": args.shot, "archs": args.arch, "precision": args.precision, "compile": args.compile,
              "native_batch_norm": args.native_batch_norm, "fold_batch_norm": not args.no_fold,
              "batch_teachers": args.batch_teachers, "batch_episodes": args.batch_episodes,
              "cpu_workers": args.cpu_workers,
              "cuda_graph": args.cuda_graph,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "steps": len(times), "switch_fired": fired,
              "median_s": median, "min_s": min(times), "hours_60k": median * 60000 / 3600,
              "peak_rss_mb": peak_rss_mb}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
