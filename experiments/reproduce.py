"""Reproduce the paper's protocols at a chosen scale, beside the paper's numbers.

For one dataset and scenario: build (or reuse) the teacher zoo, then for each
shot run PURER with the curriculum (ECI) and without it (EI) through
``purer run``, score ECI with ICFIL through ``purer eval``, and score the
baselines (Random, Average, OTA) on the same 600 test tasks. The curriculum's
start is scaled with the steps (the paper: 4,000 of 60,000). Finished runs
are reused, interrupted ones resumed, so the command can simply be rerun.

Writes ``<out>/reproduce.md`` (one table, measured next to method.md §5's
paper numbers, with every command and wall time) and ``reproduce.json``.

    python experiments/reproduce.py --root /data/cifar-fs --steps 2000
    python experiments/reproduce.py --data mini-imagenet --root /data/mini-imagenet \\
        --scenario sh --shot 1 --steps 500 --jobs 2

Without ``--root`` the dataset is read from ``$PURER_DATA_DIR/<dataset>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PAPER_START, PAPER_STEPS = 4000, 60000

# method.md §5 (5-way, Conv4 meta-model, 600 tasks): (dataset, shot) -> row -> accuracy.
PAPER = {
    ("cifar-fs", 1): {"random": 21.65, "average": 28.12, "ota": 29.10, "purer-ss": 38.66,
                      "purer-sh": 39.15, "purer-mh": 28.50},
    ("cifar-fs", 5): {"random": 21.59, "average": 32.15, "ota": 34.33, "purer-ss": 51.95,
                      "purer-sh": 49.08, "purer-mh": 33.10},
    ("mini-imagenet", 1): {"random": 22.45, "average": 22.87, "ota": 24.22, "purer-ss": 31.14,
                           "purer-sh": 28.76, "ei": 28.02, "eci": 29.11, "eci+icfil": 29.86},
    ("mini-imagenet", 5): {"random": 23.48, "average": 26.13, "ota": 27.22, "purer-ss": 40.86,
                           "purer-sh": 35.19, "ei": 33.77, "eci": 36.70, "eci+icfil": 36.66},
}
ROWS = [  # (label, run variant, method row in results.json, paper key)
    ("Random", "eci", "random", "random"),
    ("Average", "eci", "average", "average"),
    ("OTA", "eci", "ota", "ota"),
    ("PURER EI (no curriculum)", "ei", "purer", "ei"),
    ("PURER ECI", "eci", "purer", "eci"),
    ("PURER ECI + ICFIL", "eci", "purer+icfil", "eci+icfil"),
]


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    zoo = Path(args.zoo or f"zoos/{args.data}-{args.scenario}")
    # `zoo build` trains what is missing and returns at once on a finished zoo.
    zoo_cmd = ["purer", "zoo", "build", "--data", args.data, *root_option(args),
               "--scenario", args.scenario, "--out", str(zoo), "--epochs", str(args.zoo_epochs)]
    log = [run(zoo_cmd + [a for arch in args.arch for a in ("--arch", arch)], args.threads)]

    jobs = [(shot, variant) for shot in args.shot for variant in ("eci", "ei")]
    threads = max(1, args.threads // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        for entries in pool.map(lambda job: train_and_score(args, zoo, out, *job, threads), jobs):
            log += entries

    results = {job: read_results(out / run_name(args, *job)) for job in jobs}
    table = markdown_table(args, results)
    document = {"args": vars(args), "zoo": str(zoo), "commands": log,
                "results": {f"{s}-shot {v}": r for (s, v), r in results.items()}}
    (out / "reproduce.json").write_text(json.dumps(document, indent=2))
    commands = "\n".join(f"    {c['command']}    # {c['seconds']:.0f} s" for c in log)
    (out / "reproduce.md").write_text(f"{table}\n\nCommands (wall time each):\n\n{commands}\n")
    print(table)
    print(f"\nwritten: {out / 'reproduce.md'} and {out / 'reproduce.json'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", default="cifar-fs")
    parser.add_argument("--root", default=None,
                        help="dataset folder (default: the reader's, $PURER_DATA_DIR/<dataset>)")
    parser.add_argument("--scenario", choices=["ss", "sh", "mh"], default="ss")
    parser.add_argument("--arch", action="append", default=[], help="zoo architectures (repeatable)")
    parser.add_argument("--zoo", default=None, help="zoo folder (default zoos/<data>-<scenario>)")
    parser.add_argument("--zoo-epochs", type=int, default=60)
    parser.add_argument("--shot", type=int, action="append", default=None)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=600, help="meta-test tasks per setting")
    parser.add_argument("--val-tasks", type=int, default=200)
    parser.add_argument("--val-points", type=int, default=10, help="validations over the run")
    parser.add_argument("--baselines", default="random,average,ota")
    parser.add_argument("--no-icfil", dest="icfil", action="store_false")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra --set for every `purer run`, e.g. inverter.compile=true")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained side by side")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in all")
    parser.add_argument("--out", default="runs/reproduce")
    args = parser.parse_args()
    args.shot = args.shot or [1, 5]
    return args


def run_name(args: argparse.Namespace, shot: int, variant: str) -> str:
    return f"{args.data}-{args.scenario}-{shot}shot-{variant}-{args.steps}"


def train_and_score(args: argparse.Namespace, zoo: Path, out: Path, shot: int, variant: str,
                    threads: int) -> list[dict]:
    """One `purer run` (resumed or skipped when already there) and, for ECI, its ICFIL score."""
    name = run_name(args, shot, variant)
    run_dir = out / name
    every = max(1, args.steps // args.val_points)
    start = max(1, round(args.steps * PAPER_START / PAPER_STEPS))
    log = []
    if not (run_dir / "results.json").exists():
        cmd = ["purer", "run", "--preset", f"paper-cifar-fs-{shot}shot", "--data", args.data,
               *root_option(args), "--zoo", str(zoo), "--steps", str(args.steps),
               "--set", f"train.val_every={every}", "--set", f"train.checkpoint_every={every}",
               "--set", f"train.image_every={args.steps}", "--set", f"train.val_tasks={args.val_tasks}",
               "--set", f"eval.tasks={args.tasks}"]
        cmd += (["--curriculum", "gradient-switch", "--set", f"curriculum.start={start}",
                 "--set", f"eval.baselines={json.dumps(args.baselines.split(','))}"]
                if variant == "eci" else ["--curriculum", "none", "--set", "eval.baselines=[]"])
        for override in args.overrides:
            cmd += ["--set", override]
        if (run_dir / "checkpoints").exists():
            cmd = ["purer", "run", "--resume", str(run_dir)]
        else:
            cmd += ["--out", str(out), "--name", name]
        log.append(run(cmd, threads))
    if variant == "eci" and args.icfil and "purer+icfil" not in methods_in(run_dir):
        log.append(run(["purer", "eval", str(run_dir), "--calibrator", "icfil", "--tasks", str(args.tasks),
                        "--baselines", "none"], threads))
    return log


def root_option(args: argparse.Namespace) -> list[str]:
    return ["--root", args.root] if args.root else []


def run(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    text = shlex.join(cmd)
    print(f"$ {text}", flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return {"command": text, "seconds": round(time.perf_counter() - started, 1), "threads": threads}


def methods_in(run_dir: Path) -> set[str]:
    return {r["method"] for r in read_results(run_dir)["rows"]}


def read_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.exists() else {"rows": []}


def markdown_table(args: argparse.Namespace, results: dict) -> str:
    header = "| method | " + " | ".join(f"{s}-shot (measured) | {s}-shot (paper)" for s in args.shot) + " |"
    lines = [f"{args.data}, scenario {args.scenario}, 5-way, {args.steps} outer steps "
             f"(paper: {PAPER_STEPS}), {args.tasks} test tasks; mean ± 95 % interval.", "",
             header, "|---|" + "---|---|" * len(args.shot)]
    for label, variant, method, paper_key in ROWS:
        cells = []
        for shot in args.shot:
            row = next((r for r in results[(shot, variant)]["rows"]
                        if r["method"] == method and r["shot"] == shot), None)
            measured = (f"{row['accuracy']:.2f} ± {row['ci95']:.2f}"
                        if row and row.get("accuracy") is not None else "not run")
            paper = PAPER.get((args.data, shot), {})
            value = paper.get(paper_key)
            if value is None and paper_key == "eci+icfil":  # the paper's full method, Table 1
                value = paper.get(f"purer-{args.scenario}")
            cells += [measured, f"{value:.2f}" if value is not None else "-"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
