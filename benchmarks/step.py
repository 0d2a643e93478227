"""Seconds per ECI outer step; by default the paper's configuration (method.md §2, §6).

13 teachers over 64 classes (12 of 5 classes, one of 4), shot + query images
per class, episode batch 4, second-order MAML, gradient switch allowed from
step 0 (it fires by its rule, as in a run past step 4000). Any registered
inverter or meta-learner is timed by naming it (``--inverter``, ``--meta``),
with its options (``--set inverter.KEY=VALUE``). Teachers are freshly
initialised models of ``zoo.build.arch`` (cycled, with
``zoo.build.arch_kwargs``) over ``--classes`` classes, unless ``--zoo`` names
a built zoo: a step's cost does not depend on the weights. Prints the median
over the measured steps and the projection for 60,000 steps.

    python -m benchmarks step --shot 1
    python -m benchmarks step --shot 5 --set inverter.precision=bf16
    python -m benchmarks step --set inverter.compile=true          # after a one-off compile
    python -m benchmarks step --set 'zoo.build.arch=["conv4", "cifar_resnet10", "cifar_resnet18"]'
    python -m benchmarks step --meta my-learner --inverter my-inverter
    python -m benchmarks step --vs-set inverter.cpu_workers=1 --vs-set meta.cpu_workers=1
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch

from benchmarks import options, timing
from purer.config import RunConfig, ZooBuildOptions
from purer.engine.trainer import ECITrainer
from purer.models import create_model
from purer.pipeline.build import build_inversion, build_meta_learner, build_meta_model
from purer.plugins import get_host
from purer.rundir import resolve_device
from purer.types import InputSpace, Teacher, find_bn_layers
from purer.zoo.plan import arch_kwargs_for

CIFAR = InputSpace(32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
CIFAR_FS_CLASSES = 64  # meta-train classes of CIFAR-FS, which the paper's SS zoo covers

# Over the schema's defaults: the paper's episode shapes, and a switch that may fire at once.
# The smallest run, with a side-by-side variant (tests/core/test_benchmarks.py).
SMOKE = ["--config", options.TINY_CONFIG, "--classes", "10", "--repeats", "2", "--warmup", "0",
         "--vs-set", "meta.first_order=true"]

BASE: dict[str, Any] = {"train": {"query": 15, "episode_batch": 4},
                        "curriculum": {"name": "gradient-switch", "start": 0}}


def random_teachers(build: ZooBuildOptions, classes: int, device: torch.device) -> list[Teacher]:
    """Fresh teachers of ``build.way`` classes each (the last one may have
    fewer), architectures cycled from ``build.arch``."""
    archs = list(build.arch)
    teachers = []
    for k, start in enumerate(range(0, classes, build.way)):
        ids = list(range(start, min(start + build.way, classes)))
        arch = archs[k % len(archs)]
        kwargs = arch_kwargs_for(arch, build.arch_kwargs, archs)
        model = create_model(arch, num_classes=len(ids), **kwargs)
        model = model.to(device).eval().requires_grad_(False)
        teachers.append(Teacher(f"t{k:02d}", model, ids, [str(i) for i in ids], CIFAR, arch=arch,
                                bn_layers=find_bn_layers(model)))
    return teachers


def build(config: RunConfig, device: torch.device, classes: int = CIFAR_FS_CLASSES) -> ECITrainer:
    """A trainer as ``purer run`` wires one, on random teachers (or ``zoo.path``)."""
    torch.manual_seed(config.seed)
    if config.zoo.path:
        from purer.zoo.load import load_teachers

        teachers = load_teachers(config.zoo.path, device)
        space = teachers[0].space
    else:
        teachers, space = random_teachers(config.zoo.build, classes, device), CIFAR
    host, train = get_host(), config.train
    generator = torch.Generator().manual_seed(config.seed)
    meta = build_meta_learner(config.meta, build_meta_model(train), device)
    inverter = host.create("inverter", config.inverter.name, config.inverter.options,
                           section="inverter")
    inverter.setup(teachers, train.shot + train.query, device, generator,
                   build_inversion(config.inversion))
    curriculum = host.create("curriculum", config.curriculum.name, config.curriculum.options,
                             section="curriculum")
    return ECITrainer(config, None, device, teachers, meta, inverter, curriculum, space,
                      generator=generator)


def time_steps(trainers: Mapping[str, ECITrainer], repeats: int, warmup: int
               ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds of each measured outer step per trainer (the trainers take
    turns, device work inside the clock) and how often the switch fired."""
    device = next(iter(trainers.values())).device
    steps = {name: trainer.outer_step for name, trainer in trainers.items()}
    seconds, records = timing.alternate(steps, repeats, warmup, timing.synchronizer(device))
    return seconds, {name: sum(r["switch"] for r in rs) for name, rs in records.items()}


def describe(config: RunConfig, trainer: ECITrainer) -> dict[str, Any]:
    return {"inverter": config.inverter.name, "meta": config.meta.name,
            "curriculum": config.curriculum.name, "shot": config.train.shot,
            "teachers": len(trainer.teachers), "archs": sorted({t.arch for t in trainer.teachers}),
            "cuda_graph": trainer.graphed is not None}


def arguments() -> argparse.ArgumentParser:
    parser = options.parser("step", __doc__, repeats=60, warmup=5, versus=True,
                            shortcuts=("inverter", "meta", "curriculum", "shot", "way", "zoo",
                                       "seed", "device"))
    parser.add_argument("--classes", type=int, default=CIFAR_FS_CLASSES,
                        help="classes the random teachers cover (not with --zoo)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    options.prepare(args)
    configs = options.variants(args, BASE)
    device = resolve_device(configs["base"].device)
    trainers = {name: build(config, device, args.classes) for name, config in configs.items()}
    seconds, fired = time_steps(trainers, args.repeats, args.warmup)
    report = timing.compare(seconds)
    row = {"benchmark": "step", **describe(configs["base"], trainers["base"]),
           "settings": args.assignments, "versus": args.versus, **timing.machine(device),
           "switch_fired": fired["base"], **report,
           "hours_60k": report["median_s"] * 60_000 / 3600, "peak_rss_mb": timing.peak_rss_mb()}
    timing.emit(row, args.json_path)
