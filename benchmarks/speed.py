"""One table of purer's speed on this machine: ECI outer steps and meta-test evaluation.

Runs the ``step`` benchmark on the paper's CIFAR-FS configurations (SS Conv4
teachers, 1-shot and 5-shot: fp32; one teacher or episode at a time instead
of worker threads; teachers' BN hooked instead of folded; PyTorch's own
BatchNorm double backward in MAML; ``inverter.compile``; bf16 teacher
passes, also compiled; and SH teachers mixing conv4 / cifar_resnet10 /
cifar_resnet18) and the ``evaluation`` benchmark (600 5-way 1-shot tasks on
each ``--eval-data`` dataset: NCHW, channels-last, bf16; ICFIL per task),
each in a fresh process, and once more without the allocator tuning
(``PURER_MALLOC_TUNING=0``). Prints one table with the machine's description;
each number is the median of the repeated measurements inside its benchmark.
``--preset``, ``--config``, ``--set``, ``--device`` and ``--threads`` are
passed to every run. Run it on an idle machine: on two threads, any other
load makes small CPU kernels wait on each other.

    python -m benchmarks speed                     # everything (tens of minutes on 2 CPU cores)
    python -m benchmarks speed --quick             # one step and one evaluation setting
    python -m benchmarks speed --eval-data synthetic-shapes,cifar-fs   # files from $PURER_DATA_DIR
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import options, timing

REPO = Path(__file__).resolve().parents[1]
# The smallest run (tests/core/test_benchmarks.py): one step and one evaluation setting, tiny.
SMOKE = ["--quick", "--config", options.TINY_CONFIG, "--classes", "10", "--repeats", "1",
         "--warmup", "0", "--eval-repeats", "1"]
SH = 'zoo.build.arch=["conv4", "cifar_resnet10", "cifar_resnet18"]'
THREADS_OFF = ["--set", "inverter.cpu_workers=1", "--set", "meta.cpu_workers=1"]
STEP_VARIANTS = [[], THREADS_OFF, ["--set", "inverter.fold_batch_norm=false"],
                 ["--set", "meta.native_batch_norm=true"], ["--set", "inverter.compile=true"],
                 ["--set", "inverter.precision=bf16"],
                 ["--set", "inverter.precision=bf16", "--set", "inverter.compile=true"]]
EVAL_VARIANTS = [["--set", "meta.test_batching=loop"],
                 ["--set", "meta.test_batching=loop", "--channels-last"],
                 ["--set", "meta.test_batching=loop", "--precision", "bf16"]]  # vmap: GPU only


def run_child(benchmark: str, own: list[str], shared: list[str],
              malloc_tuning: bool = True) -> list[dict[str, Any]]:
    """Run ``python -m benchmarks BENCHMARK OWN SHARED`` in a fresh process
    and return its rows, each labelled with its own arguments and the
    allocator setting it ran under."""
    with tempfile.TemporaryDirectory(prefix="purer-speed-") as scratch:
        out = Path(scratch) / "rows.jsonl"
        env = {**os.environ, "PURER_MALLOC_TUNING": "1" if malloc_tuning else "0"}
        command = [sys.executable, "-m", "benchmarks", benchmark, *own, *shared, "--json", str(out)]
        subprocess.run(command, check=True, env=env, cwd=REPO)
        rows = timing.read_rows(out)
    return [{**row, "benchmark": "speed", "part": row["benchmark"], "args": shlex.join(own),
             "malloc_tuning": malloc_tuning} for row in rows]


def plan(args: argparse.Namespace) -> list[tuple[str, list[str], bool]]:
    """(benchmark, its own arguments, allocator tuning) of every run."""
    shots = ["1"] if args.quick else ["1", "5"]
    steps = [["--shot", shot, *variant] for shot in shots
             for variant in (STEP_VARIANTS[:1] if args.quick else STEP_VARIANTS)]
    if not args.quick:
        steps.append(["--shot", "1", "--set", SH])
    runs = [("step", s, True) for s in steps]
    datasets = args.eval_data.split(",")
    evals = [["--data", d, *v] for d in datasets[:1 if args.quick else None]
             for v in (EVAL_VARIANTS[:1] if args.quick else EVAL_VARIANTS)]
    runs += [("evaluation", e, True) for e in evals]
    if args.icfil_tasks and not args.quick:
        runs += [("evaluation", ["--data", d, "--calibrator", "icfil",
                                 "--tasks", str(args.icfil_tasks), "--repeats", "1"], True)
                 for d in datasets]
    if not args.quick:  # the allocator's share, on the default settings
        runs += [("step", ["--shot", "1"], False),
                 ("evaluation", ["--data", datasets[0], *EVAL_VARIANTS[0]], False)]
    return runs


def common(args: argparse.Namespace, benchmark: str) -> list[str]:
    """The options every run of ``benchmark`` gets."""
    out = [*(["--preset", args.preset] if args.preset else []),
           *(["--config", args.config_path] if args.config_path else []),
           *[a for assignment in args.assignments for a in ("--set", assignment)],
           *(["--device", args.device] if args.device else []),
           *(["--threads", str(args.threads)] if args.threads else [])]
    if benchmark == "step":
        out += ["--repeats", str(args.repeats), "--warmup", str(args.warmup),
                "--classes", str(args.classes)]
    else:
        out += ["--repeats", str(args.eval_repeats)]
    return out


def table(rows: list[dict[str, Any]]) -> Table:
    first = rows[0]
    result = Table(title=f"purer speed: {first['cpu']}, {first['threads']} threads, "
                         f"torch {first['torch']}, {first['device']}")
    for column in ("what", "setting", "median", "note"):
        result.add_column(column)
    for r in rows:
        setting = r["args"] + ("" if r["malloc_tuning"] else "  (PURER_MALLOC_TUNING=0)")
        if r["part"] == "step":
            result.add_row("ECI outer step", setting, f"{r['median_s']:.3f} s",
                           f"{r['hours_60k']:.1f} h for 60k steps; "
                           f"peak RSS {r['peak_rss_mb']:.0f} MB")
        else:
            result.add_row(f"{r['tasks']}-task eval", setting, f"{r['median_s']:.2f} s",
                           f"{r['seconds_per_task']:.3f} s/task; {r['dataset']}")
    return result


def arguments() -> argparse.ArgumentParser:
    parser = options.parser("speed", __doc__, repeats=60, warmup=5, shortcuts=("device",))
    parser.add_argument("--quick", action="store_true", help="one step and one evaluation setting")
    parser.add_argument("--classes", type=int, default=64, help="classes of the step's teachers")
    parser.add_argument("--eval-data", default="synthetic-shapes",
                        help="datasets of the evaluation rows, comma-separated")
    parser.add_argument("--eval-repeats", type=int, default=3, help="evaluations per setting")
    parser.add_argument("--icfil-tasks", type=int, default=20,
                        help="tasks of the ICFIL rows (0: none)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    rows: list[dict[str, Any]] = []
    for benchmark, own, malloc_tuning in plan(args):
        rows += run_child(benchmark, own, common(args, benchmark), malloc_tuning)
    Console().print(table(rows))
    for row in rows:
        timing.emit(row, args.json_path)
