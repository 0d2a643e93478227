"""Wall time of the paper's SS teacher zoo: 13 Conv4 teachers on CIFAR-FS (method.md §1).

Trains (or resumes) the zoo with ``purer.zoo.build_zoo`` and reports the
wall time, the seconds per epoch and each teacher's best held-out accuracy,
as a table and as JSON (``<out>/benchmark.json`` unless --json is given).
With fewer --epochs than the protocol's 60 it also projects the full build
from the measured seconds per epoch.

    python benchmarks/build_zoo.py                      # the full 60-epoch zoo
    python benchmarks/build_zoo.py --epochs 2 --out zoos/bench-2ep   # a quick estimate
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from purer.config import ZooBuildOptions
from purer.rundir import resolve_device
from purer.runtime import tune_allocator
from purer.zoo import build_zoo

FULL_EPOCHS = 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/cifar-fs")
    parser.add_argument("--out", default="zoos/cifar-fs-ss-conv4")
    parser.add_argument("--epochs", type=int, default=FULL_EPOCHS)
    parser.add_argument("--teachers", type=int, default=13)
    parser.add_argument("--arch", default="conv4")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    tune_allocator()  # see purer/runtime.py; PURER_MALLOC_TUNING=0 measures without it
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    options = ZooBuildOptions(scenario="ss", teachers=args.teachers, arch=[args.arch],
                              epochs=args.epochs)
    out = Path(args.out)
    start = time.perf_counter()
    manifest = build_zoo(options, "cifar-fs", args.root, out, device)
    wall = time.perf_counter() - start

    teachers = [t for t in manifest.teachers if "seconds" in t.train]
    train_seconds = sum(t.train["seconds"] for t in teachers)
    per_epoch = train_seconds / max(1, sum(t.train["epochs"] for t in teachers))
    report = {
        "zoo": str(out), "device": str(device), "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "epochs": args.epochs, "teachers": len(manifest.teachers),
        "wall_seconds_this_call": round(wall, 1),
        "train_seconds_all_teachers": round(train_seconds, 1),
        "seconds_per_teacher_epoch": round(per_epoch, 3),
        "projected_seconds_60_epochs": round(per_epoch * FULL_EPOCHS * len(teachers), 0),
        "teachers_detail": [
            {"name": t.name, "classes": t.class_names, "heldout_accuracy": t.heldout_accuracy,
             "best_epoch": t.train.get("best_epoch"), "seconds": t.train.get("seconds")}
            for t in manifest.teachers],
    }
    accs = [t.heldout_accuracy for t in manifest.teachers if t.heldout_accuracy is not None]
    report["mean_heldout_accuracy"] = round(sum(accs) / max(1, len(accs)), 4)

    table = Table(title=f"{out}: {args.arch}, {args.epochs} epochs, {device}")
    for col in ("teacher", "classes", "held-out", "best epoch", "seconds"):
        table.add_column(col, justify="left" if col in ("teacher", "classes") else "right")
    for t in report["teachers_detail"]:
        table.add_row(t["name"], ", ".join(t["classes"]), f"{t['heldout_accuracy']:.1%}",
                      str(t["best_epoch"]), f"{t['seconds']:.0f}")
    console = Console()
    console.print(table)
    console.print(f"mean held-out {report['mean_heldout_accuracy']:.1%}; "
                  f"{per_epoch:.2f} s per teacher-epoch; "
                  f"projected 60-epoch zoo: {report['projected_seconds_60_epochs'] / 60:.1f} min",
                  highlight=False)
    json_path = Path(args.json_path) if args.json_path else out / "benchmark.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {json_path}", highlight=False)


if __name__ == "__main__":
    main()
