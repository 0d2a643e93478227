"""One call on a lent GPU: check the CUDA path, then time the ECI step and evaluation.

Meant for a short lease (issue 5, item 10: the paper's 60,000 steps in under
15 minutes on one H100 means <= 15 ms per outer step). Everything runs in one
process so that CUDA start-up and imports are paid once; every result is
printed and appended to ``--out`` (JSON lines) the moment it exists, so a run
cut short still leaves what it measured.

1. Checks on the device, fp32: the vmapped teacher groups against one teacher
   at a time (loss and memory gradients), MAML's vmapped episodes against the
   loop (outer loss and meta-gradients). Relative differences are printed.
2. The ECI step of bench_step.py (13 Conv4 teachers, episode batch 4,
   second-order MAML, switch on) in several variants, median seconds per step.
3. 600-task evaluation (bench_eval.py), 5-way 1-shot, on the built-in dataset
   and on CIFAR-FS if ``--cifar-fs`` points to its folder.

    python benchmarks/gpu.py --out gpu.jsonl [--cifar-fs DIR] [--steps 50] [--only NAME,...]
    python benchmarks/gpu.py --steps 2 --warmup 1 --eval-tasks 20 --only 1shot-batched   # a CPU dry run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import torch
from bench_eval import time_icfil, time_plain
from bench_step import build, time_steps

from purer.data import load_split
from purer.data.episodes import make_task_list
from purer.runtime import strict_fp32, tune_allocator

# name -> bench_step options (anything not given takes bench_step's default)
STEP_VARIANTS = {
    "1shot-batched": {},
    "1shot-unbatched": {"batch_teachers": "off", "batch_episodes": "loop"},
    "5shot-batched": {"shot": 5},
    "1shot-batched-bf16": {"precision": "bf16"},
    "1shot-batched-compile": {"compile": True},
    "5shot-batched-compile": {"shot": 5, "compile": True},
    "1shot-batched-first-order": {"first_order": True},
    "sh-1shot-batched": {"arch": ["conv4", "cifar_resnet10", "cifar_resnet18"]},
    "1shot-graph": {"cuda_graph": "on"},
    "5shot-graph": {"shot": 5, "cuda_graph": "on"},
    "1shot-graph-unbatched": {"cuda_graph": "on", "batch_teachers": "off", "batch_episodes": "loop"},
    "1shot-graph-bf16": {"cuda_graph": "on", "precision": "bf16"},
    "1shot-graph-compile": {"cuda_graph": "on", "compile": True},
    "sh-1shot-graph": {"cuda_graph": "on", "arch": ["conv4", "cifar_resnet10", "cifar_resnet18"]},
}
STEP_DEFAULTS = {"shot": 1, "precision": "fp32", "compile": False, "no_fold": False, "zoo": None,
                 "arch": ["conv4"], "first_order": False, "native_batch_norm": False,
                 "batch_teachers": "auto", "batch_episodes": "auto", "cuda_graph": "off"}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_batching(device: torch.device) -> dict:
    """Batched and one-at-a-time paths on this device: the same numbers up to rounding."""
    losses, grads, metas = {}, {}, {}
    for mode in ("off", "on"):
        trainer = build(argparse.Namespace(**{**STEP_DEFAULTS, "batch_teachers": mode,
                                              "batch_episodes": "loop" if mode == "off" else "vmap"}),
                        device)
        loss, _ = trainer.inverter.inversion_loss()
        grads[mode] = torch.cat([g.flatten() for g in torch.autograd.grad(loss, trainer.inverter.memory)])
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


def audit_syncs(device: torch.device) -> Iterator[dict]:
    """Where the device work of a step would wait for the host (which a
    CUDA graph capture cannot do): one step per switch state under
    ``torch.cuda.set_sync_debug_mode("error")``, reporting the first sync."""
    trainer = build(argparse.Namespace(**STEP_DEFAULTS), device)
    for step in (1, 2):
        trainer.outer_step(step)
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


def time_variant(name: str, options: dict, device: torch.device, steps: int, warmup: int) -> dict:
    args = argparse.Namespace(**{**STEP_DEFAULTS, **options})
    started = time.perf_counter()
    trainer = build(args, device)
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    times, fired = time_steps(trainer, steps, warmup)
    median = statistics.median(times)
    graphed = trainer.graphed
    if graphed is not None:
        options = {**options, "graphs": sorted(graphed.graphs), "capture_failed": graphed.failed}
    return {"variant": name, **options, "steps": len(times), "switch_fired": fired,
            "median_ms": round(1000 * median, 2), "min_ms": round(1000 * min(times), 2),
            "minutes_60k": round(median * 60000 / 60, 1),
            "setup_and_warmup_s": round(time.perf_counter() - started - sum(times), 1),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)
            if device.type == "cuda" else None}


def eval_rows(device: torch.device, cifar_fs: str | None, count: int) -> Iterator[dict]:
    for name, root in (("synthetic-shapes", None), ("cifar-fs", cifar_fs)):
        if name == "cifar-fs" and not (root and Path(root).is_dir()):
            continue
        split = load_split(name, "meta_test", root)
        tasks = make_task_list(split, 5, 1, 15, count, seed=2023)
        for batching, batch_tasks, precision in (("vmap", 50, "fp32"), ("vmap", 200, "fp32"),
                                                 ("vmap", 600, "fp32"), ("loop", 50, "fp32"),
                                                 ("vmap", 200, "bf16")):
            yield {"dataset": name, "tasks": count, "batch_tasks": batch_tasks,
                   **time_plain(split, tasks, batching, False, 3, batch_tasks, precision, str(device))}
        yield {"dataset": name, **time_icfil(split, min(50, count), "vmap", min(50, count), str(device))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu.jsonl")
    parser.add_argument("--cifar-fs", default=None, help="CIFAR-FS folder (meta_test.npz is enough)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--only", default=None, help="comma-separated step variants (default: all)")
    parser.add_argument("--eval-tasks", type=int, default=600, help="0: no evaluation")
    args = parser.parse_args()
    tune_allocator()
    strict_fp32()  # fp32 convolutions without TF32 on GPUs (purer/runtime.py)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    emit({"torch": torch.__version__, "device": torch.cuda.get_device_name(device)
          if device.type == "cuda" else "cpu", "cudnn_tf32": torch.backends.cudnn.allow_tf32,
          "matmul_precision": torch.get_float32_matmul_precision()})
    jobs = [("check", lambda: [check_batching(device)])]
    if device.type == "cuda":
        jobs.append(("sync audit", lambda: audit_syncs(device)))
    names = args.only.split(",") if args.only else list(STEP_VARIANTS)
    jobs += [(n, lambda n=n: [time_variant(n, STEP_VARIANTS[n], device, args.steps, args.warmup)])
             for n in names]
    if args.eval_tasks:
        jobs.append(("eval", lambda: eval_rows(device, args.cifar_fs, args.eval_tasks)))
    for name, job in jobs:
        try:
            for row in job():
                emit(row)
        except Exception as exc:  # one broken variant must not cost the others
            emit({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:500]})
            traceback.print_exc()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    print("\nvariant                        median ms   60k steps (min)")
    for r in rows:
        if "median_ms" in r:
            print(f"{r['variant']:30s} {r['median_ms']:9.2f}   {r['minutes_60k']:8.1f}")
        elif "median_s" in r:
            print(f"eval {r['dataset']:16s} {r['batching']}/{r['batch_tasks']} {r['precision']}"
                  f"  {r['median_s']:.3f} s / {r['tasks']} tasks")


if __name__ == "__main__":
    main()
