"""One table of purer's speed on this machine: ECI outer steps and evaluation.

Runs ``bench_step.py`` for the paper's CIFAR-FS configurations (SS Conv4
teachers 1-shot and 5-shot: fp32, fp32 with PyTorch's own BatchNorm double
backward beside purer's, fp32 with ``inverter.compile``, bf16 teacher passes
compiled; SH teachers mixing conv4 / cifar_resnet10 / cifar_resnet18) and
``bench_eval.py`` (600 5-way 1-shot tasks, with ICFIL per task), each in a
fresh process, and prints one table with the machine's description and each
run's peak memory. Each number is the median of repeated measurements inside
its benchmark. Run it on an idle machine: with two threads, any other load
makes small CPU kernels wait on each other.

    python benchmarks/speed.py                 # everything (tens of minutes on 2 CPU cores)
    python benchmarks/speed.py --quick         # fewer steps, SS fp32 only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_json(args: list[str], malloc_tuning: bool = True) -> list[dict]:
    """Run a benchmark with ``--json FILE`` and return its rows.

    bench_step appends one JSON object per line; bench_eval writes one
    document ``{"results": [...]}``: both are accepted. ``malloc_tuning=False``
    runs it with glibc's default allocator (``PURER_MALLOC_TUNING=0``), and
    each row says which it was.
    """
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    env = {**os.environ, "PURER_MALLOC_TUNING": "1" if malloc_tuning else "0"}
    subprocess.run([sys.executable, *args, "--json", out], check=True, env=env)
    text = Path(out).read_text().strip()
    Path(out).unlink(missing_ok=True)
    try:
        documents = [json.loads(text)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    rows: list[dict] = []
    for doc in documents:
        rows += doc["results"] if isinstance(doc, dict) and "results" in doc else (
            doc if isinstance(doc, list) else [doc])
    return [{**row, "malloc_tuning": malloc_tuning} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="write all numbers as JSON here")
    args = parser.parse_args()
    steps = str(20 if args.quick else args.steps)
    configs = [["--shot", "1"]] if args.quick else [
        ["--shot", "1"], ["--shot", "1", "--cpu-workers", "1"], ["--shot", "1", "--no-fold"],
        ["--shot", "1", "--native-batch-norm"], ["--shot", "1", "--compile"],
        ["--shot", "1", "--precision", "bf16"], ["--shot", "1", "--precision", "bf16", "--compile"],
        ["--shot", "5"], ["--shot", "5", "--cpu-workers", "1"], ["--shot", "5", "--no-fold"],
        ["--shot", "5", "--native-batch-norm"], ["--shot", "5", "--compile"],
        ["--shot", "5", "--precision", "bf16"], ["--shot", "5", "--precision", "bf16", "--compile"],
        ["--shot", "1", "--arch", "conv4", "--arch", "cifar_resnet10", "--arch", "cifar_resnet18"],
    ]
    step_rows = []
    for config in configs:
        step_rows += run_json([str(HERE / "bench_step.py"), *config, "--steps", steps, "--device", args.device])
    if not args.quick:  # the allocator's share, on the default configuration
        step_rows += run_json([str(HERE / "bench_step.py"), "--shot", "1", "--steps", steps,
                               "--device", args.device], malloc_tuning=False)
    table = Table(title=f"purer speed: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for col in ("what", "setting", "median", "projection / note"):
        table.add_column(col)
    for r in step_rows:
        extras = "".join(f" +{k}" for k in ("compile", "native_batch_norm") if r.get(k))
        extras += "".join(f" -{k}" for k in ("fold_batch_norm", "malloc_tuning") if not r.get(k, True))
        extras += f" cpu_workers={r['cpu_workers']}" if r.get("cpu_workers", "auto") != "auto" else ""
        setting = f"{'+'.join(r['archs'])} {r['shot']}-shot {r['precision']}{extras} ({r['device']})"
        table.add_row("ECI outer step", setting, f"{r['median_s']:.3f} s",
                      f"{r['hours_60k']:.1f} h for 60k steps; peak RSS {r.get('peak_rss_mb', 0):.0f} MB")
    eval_rows = []
    if not args.quick:
        eval_args = [str(HERE / "bench_eval.py"), "--datasets", "synthetic-shapes,cifar-fs",
                     "--repeats", "3", "--variants", "loop:0,loop:1,loop:0:bf16"]  # vmap: GPU only
        eval_rows = run_json(eval_args) + run_json(eval_args[:-1] + ["loop:0"] + ["--icfil-tasks", "0"],
                                                   malloc_tuning=False)
        for r in eval_rows:
            if "median_s" in r:
                layout = "channels-last" if r.get("channels_last") else "NCHW"
                allocator = "" if r["malloc_tuning"] else " -malloc_tuning"
                table.add_row("600-task eval", f"{r.get('dataset', '')} {r.get('batching', '')} {layout} "
                              f"{r.get('precision', '')}{allocator}", f"{r['median_s']:.2f} s", "")
            elif "seconds_per_task" in r:
                table.add_row("ICFIL", r.get("dataset", ""), f"{r['seconds_per_task']:.2f} s/task", "")
    Console().print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu_name(), "steps": step_rows, "eval": eval_rows}, indent=2))


if __name__ == "__main__":
    main()
