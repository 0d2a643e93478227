"""Wall time of building a teacher zoo; by default the paper's SS zoo (13 Conv4, 60 epochs).

Trains the zoo that ``[zoo.build]`` describes on ``[data]``'s meta-train
split with :func:`purer.zoo.build_zoo` and reports the wall time, the
seconds per teacher-epoch and each teacher's best held-out accuracy, as a
table and as one JSON line. With fewer epochs than 60 it also projects the
60-epoch build from the measured seconds per epoch. The zoo is built into a
temporary folder (removed afterwards) unless ``--out`` is given; an existing
zoo there is resumed, so only its missing teachers are timed.

    python -m benchmarks zoo-build --data cifar-fs --root DIR             # the paper's zoo
    python -m benchmarks zoo-build --data cifar-fs --root DIR --epochs 2  # a quick estimate
    python -m benchmarks zoo-build --set 'zoo.build.arch=["cifar_resnet10"]' --epochs 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import options, timing
from purer.rundir import resolve_device
from purer.zoo import build_zoo

FULL_EPOCHS = 60

# The smallest run (tests/core/test_benchmarks.py): one tiny teacher, one epoch.
SMOKE = ["--config", options.TINY_CONFIG, "--teachers", "1"]


def arguments() -> argparse.ArgumentParser:
    parser = options.parser("zoo-build", __doc__, repeats=None,
                            shortcuts=("data", "root", "teachers", "epochs", "seed", "device"))
    parser.add_argument("--out", default=None, help="zoo folder to build into (default: a "
                                                    "temporary one, removed afterwards)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    options.prepare(args)
    config = options.run_config(args)
    device = resolve_device(config.device)
    data_options = config.data.option_dict()
    root = data_options.pop("root", None)
    with tempfile.TemporaryDirectory(prefix="purer-zoo-bench-") as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "zoo"
        start = time.perf_counter()
        manifest = build_zoo(config.zoo.build, config.data.name, root, out, device,
                             data_options=data_options)
        wall = time.perf_counter() - start

    trained = [t for t in manifest.teachers if "seconds" in t.train]
    train_seconds = sum(t.train["seconds"] for t in trained)
    per_epoch = train_seconds / max(1, sum(t.train["epochs"] for t in trained))
    accuracies = [t.heldout_accuracy for t in manifest.teachers if t.heldout_accuracy is not None]
    row = {"benchmark": "zoo-build", "dataset": config.data.name,
           "archs": sorted({t.arch for t in manifest.teachers}), "epochs": config.zoo.build.epochs,
           "teachers": len(manifest.teachers), "settings": args.assignments,
           **timing.machine(device), "wall_s": round(wall, 2),
           "train_s_all_teachers": round(train_seconds, 2),
           "seconds_per_teacher_epoch": round(per_epoch, 4),
           "projected_s_60_epochs": round(per_epoch * FULL_EPOCHS * len(manifest.teachers), 1),
           "mean_heldout_accuracy": round(sum(accuracies) / max(1, len(accuracies)), 4),
           "teachers_detail": [{"name": t.name, "arch": t.arch, "classes": t.class_names,
                                "heldout_accuracy": t.heldout_accuracy,
                                "best_epoch": t.train.get("best_epoch"),
                                "seconds": t.train.get("seconds")} for t in manifest.teachers]}

    table = Table(title=f"zoo of {row['teachers']} on {row['dataset']}, "
                        f"{row['epochs']} epochs, {row['device']}")
    for column in ("teacher", "arch", "held-out", "best epoch", "seconds"):
        table.add_column(column, justify="left" if column in ("teacher", "arch") else "right")
    for t in row["teachers_detail"]:
        seconds = f"{t['seconds']:.1f}" if t["seconds"] is not None else "-"
        table.add_row(t["name"], t["arch"], f"{t['heldout_accuracy']:.1%}", str(t["best_epoch"]),
                      seconds)
    console = Console(stderr=True)
    console.print(table)
    console.print(f"{per_epoch:.2f} s per teacher-epoch; projected {FULL_EPOCHS}-epoch zoo: "
                  f"{row['projected_s_60_epochs'] / 60:.1f} min", highlight=False)
    timing.emit(row, args.json_path)
