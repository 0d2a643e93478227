"""Test accuracy against wall time: what a user who stopped a run at each
validation would have had.

``purer run`` keeps only its two newest checkpoints of each kind, so the
val-selected weights of earlier validations are saved aside while the run
trains (``watch``), with their modification times, which place them on the
wall clock. ``score`` then scores each saved ``best-N`` (the val-selected
weights up to step N) exactly as ``purer eval`` scores a finished run, and
writes the curve (PNG) and a JSON record. The time of a point is the
checkpoint's time since the command started plus the measured time of its
own evaluation, i.e. the wall time a user would have spent to read that
number.

    purer run --preset fast-cifar-fs-1shot --root DATA/cifar-fs --out runs --name fast & \
        python experiments/time_to_accuracy.py watch runs/fast --into runs/fast-saved --start "$(date +%s)"
    python experiments/time_to_accuracy.py score runs/fast --saved runs/fast-saved --target 38.66
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from purer.engine.checkpoint import point, stems
from purer.pictures import save_curve


def watch(run: Path, into: Path, start: float, pid: int | None) -> None:
    """Copy ``best-*`` checkpoints (times kept) until the run's process ends."""
    into.mkdir(parents=True, exist_ok=True)
    (into / "start.json").write_text(json.dumps({"start": start}))
    folder = run / "checkpoints"

    def alive() -> bool:
        if pid is None:
            return not (run / "results.json").exists()
        return Path(f"/proc/{pid}").exists()

    while True:
        running = alive()
        for path in folder.glob("best-*"):
            target = into / path.name
            if not target.exists():
                try:
                    shutil.copy2(path, target)
                except FileNotFoundError:  # pruned between glob and copy
                    pass
        if not running:
            return
        time.sleep(2)


def _saved_steps(saved: Path) -> list[int]:
    """Steps of the saved ``best-N`` pairs whose copy is complete, oldest first."""
    return sorted(int(stem.split("-")[1]) for stem in stems(saved, "best")
                  if (saved / f"{stem}.safetensors").exists())


def _score_one(run: Path, saved: Path, step: int, extra: list[str]) -> tuple[dict, float]:
    """``purer eval`` of ``best-<step>`` in a copy of the run holding only it."""
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / run.name
        clone.mkdir()
        for name in ("config.json", "config.toml", "run.json"):
            if (run / name).exists():
                shutil.copy2(run / name, clone / name)
        (clone / "checkpoints").mkdir()
        for suffix in (".json", ".safetensors"):
            shutil.copy2(saved / f"best-{step}{suffix}", clone / "checkpoints" / f"best-{step}{suffix}")
        info = json.loads((saved / f"best-{step}.json").read_text())["info"]
        point(clone / "checkpoints", "best", f"best-{step}", info)
        began = time.monotonic()
        subprocess.run([sys.executable, "-m", "purer", "eval", str(clone), *extra], check=True)
        seconds = time.monotonic() - began
        rows = json.loads((clone / "results.json").read_text())["rows"]
    return {"rows": rows, "val_accuracy": info.get("val_accuracy")}, seconds


def score(run: Path, saved: Path, target: float | None, extra: list[str], out: Path,
          eval_seconds: float | None = None) -> None:
    start = json.loads((saved / "start.json").read_text())["start"]
    points = []
    for step in _saved_steps(saved):
        written = (saved / f"best-{step}.safetensors").stat().st_mtime - start
        result, eval_s = _score_one(run, saved, step, extra)
        eval_s = eval_s if eval_seconds is None else eval_seconds
        purer_rows = [r for r in result["rows"] if r["method"].startswith("purer")]
        row = max(purer_rows, key=lambda r: len(r["method"]))  # the calibrated row if any
        points.append({"step": step, "checkpoint_s": round(written, 1), "eval_s": round(eval_s, 1),
                       "wall_s": round(written + eval_s, 1), "val_accuracy": result["val_accuracy"],
                       "method": row["method"], "accuracy": row["accuracy"], "ci95": row["ci95"]})
        print(json.dumps(points[-1]), flush=True)
    reached = next((p for p in points if target is not None and p["accuracy"] >= target), None)
    record = {"run": str(run), "target": target, "points": points,
              "reached_at_s": reached["wall_s"] if reached else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_accuracy.json").write_text(json.dumps(record, indent=2))
    save_curve([p["wall_s"] / 60 for p in points], [p["accuracy"] for p in points],
               out / "time_to_accuracy.png", title=f"{run.name}: test accuracy of the val-selected model",
               ylabel="accuracy %", xlabel="minutes since the command started", reference=target)
    print(json.dumps({k: v for k, v in record.items() if k != "points"}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", help="save the val-selected checkpoints while a run trains")
    w.add_argument("run", type=Path)
    w.add_argument("--into", type=Path, required=True)
    w.add_argument("--start", type=float, required=True, help="when the command started (epoch s)")
    w.add_argument("--pid", type=int, help="the run's process (default: until results.json appears)")
    s = sub.add_parser("score", help="score each saved checkpoint, write the curve "
                       "(arguments after -- go to purer eval)")
    s.add_argument("run", type=Path)
    s.add_argument("--saved", type=Path, required=True)
    s.add_argument("--target", type=float)
    s.add_argument("--out", type=Path, help="default: the --saved folder")
    s.add_argument("--eval-seconds", type=float, help="the evaluation's wall time to add to each "
                   "point (default: as measured here; give the run's own when this machine is busy)")
    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = argv, []  # what follows -- goes to purer eval
    if "--" in argv:
        cut = argv.index("--")
        own, extra = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(own)
    if args.command == "watch":
        watch(args.run, args.into, args.start, args.pid)
    else:
        score(args.run, args.saved, args.target, extra, args.out or args.saved, args.eval_seconds)


if __name__ == "__main__":
    main()
