"""One call on a lent GPU: check the CUDA path, then time the ECI step and evaluation.

Meant for a short lease (the paper's 60,000 steps in under 15 minutes on one
H100 means at most 15 ms per outer step). Everything runs in one process so
that CUDA start-up and imports are paid once; every result is printed (and
appended to ``--json``) the moment it exists, so a run cut short still
leaves what it measured. ``--preset``/``--config``/``--set`` apply to every
part.

1. Checks on the device, fp32: the vmapped teacher groups of ``deepinv``
   against one teacher at a time (loss and memory gradients), MAML's
   vmapped episodes against the loop (outer loss and meta-gradients), and on
   CUDA where a step would wait for the host (which a graph capture cannot).
2. The ``step`` benchmark's configuration in the variants of
   :data:`STEP_VARIANTS` (``--only`` picks some), median seconds per step.
3. Evaluation (the ``evaluation`` benchmark), 5-way 1-shot, on each
   ``--eval-data`` dataset, in several batchings, and ICFIL.

    python -m benchmarks gpu --json gpu.jsonl --eval-data synthetic-shapes,cifar-fs
    python -m benchmarks gpu --repeats 2 --warmup 1 --eval-tasks 20 --only 1shot-batched  # on a CPU
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks import options, step, timing
from benchmarks.evaluation import BASE as EVAL_BASE
from benchmarks.evaluation import prepared
from purer.rundir import resolve_device

# The smallest run (tests/core/test_benchmarks.py): the checks and one step variant, tiny.
SMOKE = ["--config", options.TINY_CONFIG, "--classes", "10", "--only", "1shot-batched",
         "--repeats", "1", "--warmup", "0", "--eval-tasks", "0"]

SH = 'zoo.build.arch=["conv4", "cifar_resnet10", "cifar_resnet18"]'
UNBATCHED = ["inverter.batch_teachers=off", "meta.batch_episodes=loop"]
GRAPH = ["train.cuda_graph=true"]
# name -> assignments over the step benchmark's configuration (eager unless it says graph)
STEP_VARIANTS: dict[str, list[str]] = {
    "1shot-batched": [],
    "1shot-unbatched": UNBATCHED,
    "5shot-batched": ["train.shot=5"],
    "1shot-batched-bf16": ["inverter.precision=bf16"],
    "1shot-batched-compile": ["inverter.compile=true"],
    "5shot-batched-compile": ["train.shot=5", "inverter.compile=true"],
    "1shot-batched-first-order": ["meta.first_order=true"],
    "sh-1shot-batched": [SH],
    "1shot-graph": GRAPH,
    "5shot-graph": [*GRAPH, "train.shot=5"],
    "1shot-graph-unbatched": [*GRAPH, *UNBATCHED],
    "1shot-graph-bf16": [*GRAPH, "inverter.precision=bf16"],
    "1shot-graph-compile": [*GRAPH, "inverter.compile=true"],
    "sh-1shot-graph": [*GRAPH, SH],
}
EAGER = ["train.cuda_graph=false"]
# (meta.test_batching, eval.batch_tasks, precision) of the evaluation rows
EVAL_VARIANTS = [("vmap", 50, "fp32"), ("vmap", 200, "fp32"), ("vmap", 600, "fp32"),
                 ("loop", 50, "fp32"), ("vmap", 200, "bf16")]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_batching(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Batched and one-at-a-time paths on this device: the same numbers up to rounding."""
    losses, grads, metas = {}, {}, {}
    for mode, assignments in (("off", UNBATCHED),
                              ("on", ["inverter.batch_teachers=on", "meta.batch_episodes=vmap"])):
        config = options.run_config(args, step.BASE, [*EAGER, *assignments])
        trainer = step.build(config, device, args.classes)
        loss, _ = trainer.inverter.inversion_loss()  # deepinv's own: summed over the teachers
        memory = trainer.inverter.memory
        grads[mode] = torch.cat([g.flatten() for g in torch.autograd.grad(loss, memory)])
        losses[mode] = loss.detach()
        episodes = trainer.sample(4, detach=True)
        outer, _ = trainer.meta.outer_loss(episodes, create_graph=True)
        metas[mode] = (outer.detach(), torch.cat([g.flatten() for g in torch.autograd.grad(
            outer, list(trainer.meta.params().values()))]))
    return {"check": "batched vs one at a time", "device": str(device),
            "inversion_loss_rel": relative(losses["on"], losses["off"]),
            "memory_grad_rel": relative(grads["on"], grads["off"]),
            "outer_loss_rel": relative(metas["on"][0], metas["off"][0]),
            "meta_grad_rel": relative(metas["on"][1], metas["off"][1])}


def audit_syncs(args: argparse.Namespace, device: torch.device) -> Iterator[dict[str, Any]]:
    """Where the device work of a step would wait for the host (which a
    CUDA graph capture cannot do): one step per switch state under
    ``torch.cuda.set_sync_debug_mode("error")``, reporting the first sync."""
    trainer = step.build(options.run_config(args, step.BASE, EAGER), device, args.classes)
    for i in (1, 2):
        trainer.outer_step(i)
    for scale in (0.0, 10.0):
        draws = {k: v.to(device) for k, v in trainer.draw(scale).items()}
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            trainer.device_step(scale, draws)
            found = None
        except RuntimeError as exc:
            frames = traceback.extract_tb(exc.__traceback__)[-4:]
            found = f"{str(exc).splitlines()[0][:120]} at " + " <- ".join(
                f"{Path(f.filename).name}:{f.lineno} {f.line}" for f in reversed(frames))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        yield {"sync_audit": scale, "first_sync": found}


def time_variant(args: argparse.Namespace, name: str, device: torch.device) -> dict[str, Any]:
    assignments = STEP_VARIANTS[name]
    graphed = any(a.startswith("train.cuda_graph") for a in assignments)
    config = options.run_config(args, step.BASE, [*([] if graphed else EAGER), *assignments])
    started = time.perf_counter()
    trainer = step.build(config, device, args.classes)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, fired = step.time_steps({"base": trainer}, args.repeats, args.warmup)
    times = seconds["base"]
    median = statistics.median(times)
    row: dict[str, Any] = {"variant": name, "settings": assignments, "steps": len(times),
                           "switch_fired": fired["base"], "median_ms": round(1000 * median, 2),
                           "min_ms": round(1000 * min(times), 2),
                           "minutes_60k": round(median * 60000 / 60, 1),
                           "setup_and_warmup_s": round(time.perf_counter() - started - sum(times),
                                                       1),
                           "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)
                           if device.type == "cuda" else None}
    if trainer.graphed is not None:
        row |= {"graphs": sorted(trainer.graphed.graphs), "capture_failed": trainer.graphed.failed}
    return row


def eval_rows(args: argparse.Namespace, device: torch.device) -> Iterator[dict[str, Any]]:
    for dataset in args.eval_data.split(","):
        for batching, batch_tasks, precision in EVAL_VARIANTS:
            config = options.run_config(args, EVAL_BASE, [
                f"data.name={dataset}", f"eval.tasks={args.eval_tasks}",
                f"eval.batch_tasks={batch_tasks}", f"meta.test_batching={batching}",
                "calibrator.name=none"])
            run = prepared({"base": config}, device)["base"]
            call = {"base": lambda i, run=run, precision=precision: run(False, precision)}
            seconds, results = timing.alternate(call, args.eval_repeats, 0,
                                                timing.synchronizer(device))
            yield {"dataset": dataset, "tasks": args.eval_tasks, "batching": batching,
                   "batch_tasks": batch_tasks, "precision": precision,
                   **timing.summary(seconds["base"]),
                   "accuracy": round(results["base"][-1].accuracy, 3)}
        if args.icfil_tasks:
            count = min(args.icfil_tasks, args.eval_tasks)
            config = options.run_config(args, EVAL_BASE, [
                f"data.name={dataset}", f"eval.tasks={count}", f"eval.batch_tasks={count}",
                "calibrator.name=icfil", "calibrator.batching=vmap"])
            result = prepared({"base": config}, device)["base"]()
            yield {"dataset": dataset, "calibrator": "icfil", "tasks": count,
                   "seconds": round(result.seconds, 2),
                   "seconds_per_task": round(result.seconds_per_task, 3)}


def arguments() -> argparse.ArgumentParser:
    parser = options.parser("gpu", __doc__, repeats=50, warmup=5, shortcuts=("device",))
    parser.add_argument("--only", default=None, help="comma-separated step variants (default: all)")
    parser.add_argument("--classes", type=int, default=step.CIFAR_FS_CLASSES,
                        help="classes of the step's random teachers")
    parser.add_argument("--eval-tasks", type=int, default=600, help="0: no evaluation")
    parser.add_argument("--eval-repeats", type=int, default=3, help="evaluations per setting")
    parser.add_argument("--eval-data", default="synthetic-shapes",
                        help="datasets of the evaluation rows, comma-separated (files from "
                             "$PURER_DATA_DIR/<dataset>)")
    parser.add_argument("--icfil-tasks", type=int, default=50,
                        help="tasks of the ICFIL rows (0: none)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    options.prepare(args)
    device = resolve_device(args.device or "auto")
    names = args.only.split(",") if args.only else list(STEP_VARIANTS)
    unknown = [n for n in names if n not in STEP_VARIANTS]
    if unknown:
        raise SystemExit(f"error: --only: unknown variant '{unknown[0]}' "
                         f"({', '.join(STEP_VARIANTS)})")
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        row = {"benchmark": "gpu", **row}
        rows.append(row)
        timing.emit(row, args.json_path)

    emit({**timing.machine(device), "cudnn_tf32": torch.backends.cudnn.allow_tf32,
          "matmul_precision": torch.get_float32_matmul_precision()})
    jobs: list[tuple[str, Callable[[], Iterable[dict[str, Any]]]]] = [
        ("check", lambda: [check_batching(args, device)])]
    if device.type == "cuda":
        jobs.append(("sync audit", lambda: audit_syncs(args, device)))
    jobs += [(n, lambda n=n: [time_variant(args, n, device)]) for n in names]
    if args.eval_tasks:
        jobs.append(("eval", lambda: eval_rows(args, device)))
    for name, job in jobs:
        try:
            for row in job():
                emit(row)
        except Exception as exc:  # one broken variant must not cost the others
            emit({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:500]})
            traceback.print_exc()
    print("\nvariant                        median ms   60k steps (min)")
    for r in rows:
        if "median_ms" in r:
            print(f"{r['variant']:30s} {r['median_ms']:9.2f}   {r['minutes_60k']:8.1f}")
        elif "median_s" in r:
            print(f"eval {r['dataset']:16s} {r['batching']}/{r['batch_tasks']} {r['precision']}"
                  f"  {r['median_s']:.3f} s / {r['tasks']} tasks")
