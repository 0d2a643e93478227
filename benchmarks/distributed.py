"""Steps per second of one run on N ranks x 1 thread against 1 rank x N threads (docs/distributed.md).

The same configuration as ``step`` (by default the paper's 1-shot one: 13
random Conv4 teachers over 64 classes, episode batch 4, second-order MAML,
the switch free to fire), trained as ``purer run`` would: once in one
process with ``--threads`` intra-op threads (``cpu_workers=auto`` gives as
many worker threads), once on ``--ranks`` processes of one thread each
(torch.distributed, gloo; teachers sharded by cost, the episode batch split).
Both variants stay alive side by side and take turns, a block of
``--steps`` outer steps at a time, so a busy machine slows both alike; the
report gives each variant's median seconds per step and the median of the
per-block ratios (ranks over threads).

    python -m benchmarks distributed --shot 1 --repeats 5 --steps 4
    python -m benchmarks distributed --set 'zoo.build.arch=["conv4", "cifar_resnet10", "cifar_resnet18"]'
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from benchmarks import options, timing
from benchmarks.step import BASE, CIFAR_FS_CLASSES
from purer.config import RunConfig

SMOKE = ["--config", options.TINY_CONFIG, "--classes", "10", "--repeats", "1", "--warmup", "0",
         "--steps", "1"]


def _worker(rank: int, size: int, threads: int, config_json: str, classes: int, init: str,
            warmup: int, go: Any, results: Any) -> None:
    """One rank of one variant: build, warm up, then a timed block of steps
    each time ``go`` reaches the next block number (0: stop)."""
    torch.set_num_threads(threads)
    from benchmarks.step import build
    from purer.distributed import World

    world = World()
    if size > 1:
        torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
        world = World(rank, size)
    config = RunConfig.model_validate_json(config_json)
    trainer = build(config, torch.device("cpu"), classes)
    if size > 1:  # the trainer shards itself when given the world
        from purer.engine.trainer import ECITrainer

        trainer = ECITrainer(config, None, trainer.device, trainer.teachers, trainer.meta,
                             trainer.inverter, trainer.curriculum, trainer.space,
                             generator=trainer.generator, world=world)
    step = 0
    for _ in range(warmup):
        step += 1
        trainer.outer_step(step)
    results.put(("ready", rank))
    block = 0
    while True:
        while go.value == block:
            time.sleep(0.005)
        block = go.value
        if block < 0:
            break
        steps, fired = int(os.environ.get("PURER_BENCH_STEPS", "1")), 0
        world.barrier()
        start = time.perf_counter()
        for _ in range(steps):
            step += 1
            fired += trainer.outer_step(step)["switch"]
        world.barrier()
        if world.is_main:
            results.put(("block", (time.perf_counter() - start) / steps, fired))
    if size > 1:
        torch.distributed.destroy_process_group()


def arguments() -> argparse.ArgumentParser:
    parser = options.parser("distributed", __doc__, repeats=5, warmup=1,
                            shortcuts=("inverter", "meta", "curriculum", "shot", "way", "zoo",
                                       "seed"))
    parser.add_argument("--classes", type=int, default=CIFAR_FS_CLASSES,
                        help="classes the random teachers cover (not with --zoo)")
    parser.add_argument("--ranks", type=int, default=2, help="processes of the distributed variant")
    parser.add_argument("--steps", type=int, default=4, help="outer steps per timed block")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    ranks = args.ranks
    threads = args.threads or ranks
    base = options.run_config(args, BASE)
    ctx = mp.get_context("spawn")
    variants = {"threads": (1, threads, base), "ranks": (ranks, 1, base)}
    os.environ["PURER_BENCH_STEPS"] = str(args.steps)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    fired = {name: 0 for name in variants}
    with tempfile.TemporaryDirectory() as folder:
        started, gos, queues = [], {}, {}
        for name, (size, n_threads, config) in variants.items():
            gos[name], queues[name] = ctx.Value("i", 0), ctx.SimpleQueue()
            init = f"file://{Path(folder) / name}"
            for rank in range(size):
                p = ctx.Process(target=_worker, args=(rank, size, n_threads, config.model_dump_json(),
                                                      args.classes, init, args.warmup, gos[name],
                                                      queues[name]))
                p.start()
                started.append(p)
        for name, (size, _, _) in variants.items():
            for _ in range(size):
                assert queues[name].get()[0] == "ready"
        try:
            for block in range(1, args.repeats + 1):
                for name in variants:  # one variant works while the other waits
                    gos[name].value = block
                    _, per_step, switched = queues[name].get()
                    seconds[name].append(per_step)
                    fired[name] += switched
        finally:
            for name in variants:
                gos[name].value = -1
            for p in started:
                p.join(timeout=60)
    ratios = [r / t for r, t in zip(seconds["ranks"], seconds["threads"])]
    row = {"benchmark": "distributed", "ranks": ranks, "threads_of_one_rank": threads,
           "shot": base.train.shot, "teachers_archs": list(base.zoo.build.arch),
           "steps_per_block": args.steps, "settings": args.assignments,
           **timing.machine(torch.device("cpu")), "cpu_count": os.cpu_count(),
           "threads_variant": timing.summary(seconds["threads"]),
           "ranks_variant": timing.summary(seconds["ranks"]),
           "median_s": statistics.median(seconds["ranks"]),
           "steps_per_s_threads": 1 / statistics.median(seconds["threads"]),
           "steps_per_s_ranks": 1 / statistics.median(seconds["ranks"]),
           "median_ratio_ranks_over_threads": statistics.median(ratios),
           "switch_fired": fired}
    timing.emit(row, args.json_path)
