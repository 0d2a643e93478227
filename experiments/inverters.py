"""The inverters side by side at reduced scale, on the built-in dataset.

Three measurements (docs/results.md, "Inverters at equal wall-clock"):

* ``budget``: ``deepinv``, ``generator`` and ``meta-generator`` meta-train
  the same meta-model from the same zoo for the same seconds of step time,
  interleaved in chunks in one process (so a busy machine slows all alike);
  meta-val accuracy against seconds (one PNG), then meta-test accuracy of
  the val-selected weights.
* ``recovery``: the step time each needs to invert one teacher it has not
  seen to a fixed inversion loss (the loss of its current data, no jitter):
  a pixel memory, a generator from scratch, the meta-generator after
  meta-training on the other teachers, and the same network untrained.
* ``mixed``: a zoo of Conv4 (BN) and small timm ViT (no BN) teachers,
  ``deepinv`` with and without the ``input-stats`` prior: meta-val accuracy
  at equal seconds and the per-channel statistics of the ViT teachers' images.

Usage::

    python experiments/inverters.py budget --seconds 180 --out docs/measurements/inverters
    python experiments/inverters.py recovery --out docs/measurements/inverters
    python experiments/inverters.py mixed --seconds 120 --out docs/measurements/inverters
    python experiments/inverters.py rescore --out DIR   # meta-test again, with intervals
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from purer.config import ZooBuildOptions, build_config
from purer.data.episodes import make_task_list
from purer.evaluation.evaluator import evaluate
from purer.pipeline.build import build_trainer, read_split
from purer.plugins import get_host
from purer.rundir import RunDir
from purer.testing import inversion_loss, setup_inverter
from purer.zoo.build import build_zoo
from purer.zoo.load import load_teachers

NAMES = ["deepinv", "generator", "meta-generator"]
VIT = {"img_size": 32, "patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 2}


def zoo(folder: Path, scenario: str, archs: list[str], teachers: int, epochs: int) -> Path:
    """A small zoo on the built-in dataset (built once, then reused)."""
    if not (folder / "zoo.json").exists():
        kwargs = {"conv4": {"width": 16}, "vit_tiny_patch16_224": VIT}
        opts = ZooBuildOptions(scenario=scenario, teachers=teachers, arch=archs, epochs=epochs,
                               batch_size=64, arch_kwargs={a: kwargs[a] for a in archs})
        build_zoo(opts, "synthetic-shapes", None, folder, "cpu",
                  data_options={"images_per_class": 120})
    return folder


def trainer(zoo_path: Path, out: Path, name: str, inverter: str, seed: int,
            terms: dict[str, float] | None = None, **options):
    config = {"seed": seed, "name": name, "out": str(out), "zoo": {"path": str(zoo_path)},
              "data": {"name": "synthetic-shapes", "images_per_class": 120},
              "inverter": {"name": inverter, **options},
              "train": {"steps": 10 ** 6, "query": 5, "val_tasks": 100, "meta_arch_kwargs": {"width": 16},
                        "cuda_graph": False},
              "curriculum": {"name": "gradient-switch", "start": 50, "window": 6},
              "eval": {"batch_tasks": 25}}
    if terms:
        config["inversion"] = {"terms": terms}
    run_config = build_config(config, host=get_host())
    return build_trainer(run_config, RunDir.create(run_config), torch.device("cpu"))


def race(trainers: dict, seconds: float, chunk: float, val_every: float) -> dict[str, list]:
    """Step every trainer in turn for ``chunk`` seconds of its own step time
    until each has ``seconds``; validate each at every ``val_every``."""
    clock = dict.fromkeys(trainers, 0.0)
    next_val = dict.fromkeys(trainers, val_every)
    curves: dict[str, list] = {k: [] for k in trainers}
    steps = dict.fromkeys(trainers, 0)
    while any(clock[k] < seconds for k in trainers):
        for key, t in trainers.items():
            stop = min(clock[key] + chunk, seconds)
            while clock[key] < stop:
                steps[key] += 1
                started = time.perf_counter()
                t.outer_step(steps[key])
                clock[key] += time.perf_counter() - started
                t.step = steps[key]
                if clock[key] >= next_val[key] or clock[key] >= seconds:
                    acc = t.validate(steps[key])
                    curves[key].append({"seconds": round(clock[key], 1), "step": steps[key],
                                        "val_accuracy": round(acc, 2)})
                    print(json.dumps({"inverter": key, **curves[key][-1]}), flush=True)
                    next_val[key] += val_every
    return curves


def meta_test(t, tasks: int) -> float:
    """Meta-test accuracy of the trainer's val-selected weights (no calibrator)."""
    return score(t.run.path, tasks)[0]


def score(run: Path, tasks: int) -> tuple[float, float]:
    """Meta-test accuracy and its 95 % interval of a run's val-selected
    weights (no calibrator), on the same seeded task list for every run."""
    from purer.pipeline.final import load_meta_learner

    learner, config, _ = load_meta_learner(run, "best", "cpu")
    split = read_split(config.data, "meta_test")
    tr = config.train
    task_list = make_task_list(split, tr.way, tr.shot, 15, tasks, seed=2023)
    result = evaluate(learner, task_list, split, "cpu", batch_tasks=25)
    return result.accuracy, result.ci95


def run_rescore(args: argparse.Namespace) -> None:
    """Score every run under ``--out``/runs again, with intervals."""
    rows = []
    for run in sorted((args.out / "runs").iterdir()):
        accuracy, ci95 = score(run, args.tasks)
        rows.append({"run": run.name, "meta_test": round(accuracy, 2), "ci95": round(ci95, 2)})
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "rescore.json").write_text(json.dumps({"conditions": conditions(), "rows": rows}, indent=1))


def plot(curves: dict[str, list], path: Path) -> None:
    """Meta-val accuracy against seconds, one line per inverter."""
    from PIL import Image, ImageDraw

    width, height, left, bottom, top, right = 560, 340, 50, 36, 20, 150
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    points = [p for c in curves.values() for p in c]
    xmax = max(p["seconds"] for p in points)
    ys = [p["val_accuracy"] for p in points]
    ylo, yhi = min(ys) - 1, max(ys) + 1

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (width - left - right) * x / xmax,
                height - bottom - (height - bottom - top) * (y - ylo) / (yhi - ylo))

    draw.line([at(0, ylo), at(xmax, ylo)], fill="black")
    draw.line([at(0, ylo), at(0, yhi)], fill="black")
    for v in (ylo, yhi):
        draw.text((4, at(0, v)[1] - 6), f"{v:.0f}%", fill="black")
    draw.text(at(xmax, ylo), f"{xmax:.0f}s", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for i, (key, curve) in enumerate(curves.items()):
        line = [at(p["seconds"], p["val_accuracy"]) for p in curve]
        if len(line) > 1:
            draw.line(line, fill=colours[i % 6], width=2)
        draw.text((width - right + 8, top + 16 * i), key, fill=colours[i % 6])
    draw.text((left, 2), "meta-val accuracy vs seconds of step time", fill="black")
    image.save(path)


def conditions() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "note": "2-core machine shared with other jobs"}


def run_budget(args: argparse.Namespace) -> None:
    path = zoo(args.out / "zoo-ss", "ss", ["conv4"], 8, 4)
    rows = []
    for seed in args.seeds:
        trainers = {n: trainer(path, args.out / "runs", f"{n}-s{seed}", n, seed) for n in NAMES}
        curves = race(trainers, args.seconds, args.chunk, args.val_every)
        tests = {n: round(meta_test(t, args.tasks), 2) for n, t in trainers.items()}
        rows.append({"seed": seed, "curves": curves, "meta_test": tests,
                     "steps": {n: t.step for n, t in trainers.items()}})
        plot({f"{n} s{seed}": c for n, c in curves.items()}, args.out / f"budget-seed{seed}.png")
        print(json.dumps({"seed": seed, "meta_test": tests}), flush=True)
    (args.out / "budget.json").write_text(json.dumps({"conditions": conditions(), "seconds": args.seconds,
                                                      "rows": rows}, indent=1))


def steps_to(loss_of, step, level: float, limit: int) -> dict:
    """Step time (and steps) until ``loss_of()`` is at most ``level``."""
    seconds = 0.0
    for n in range(1, limit + 1):
        started = time.perf_counter()
        step()
        seconds += time.perf_counter() - started
        if loss_of() <= level:
            return {"steps": n, "seconds": round(seconds, 2)}
    return {"steps": None, "seconds": round(seconds, 2), "limit": limit}


def run_recovery(args: argparse.Namespace) -> None:
    teachers = load_teachers(zoo(args.out / "zoo-ss", "ss", ["conv4"], 8, 4))
    seen, new = teachers[:-1], teachers[-1]
    loss = inversion_loss()
    per_class = 6
    results = []
    for seed in args.seeds:
        row: dict = {"seed": seed, "level": args.level}
        memory = setup_inverter("deepinv", [new], per_class, seed, loss, cpu_workers=1)
        row["deepinv"] = steps_to(lambda m=memory: float(m.inversion_loss()[0].detach()),
                                  lambda m=memory: m.step(None, {}), args.level, args.limit)
        gen = setup_inverter("generator", [new], per_class, seed, loss)
        row["generator"] = steps_to(lambda g=gen: float(g.inversion_loss()[0]),
                                    lambda g=gen: g.step(None, {}), args.level, args.limit)
        for label, meta_steps in (("meta-generator untrained", 0), ("meta-generator", args.meta_steps)):
            meta = setup_inverter("meta-generator", seen, per_class, seed, loss, teachers_per_step=2)
            started = time.perf_counter()
            for _ in range(meta_steps):
                meta.step(None, {})
            meta_seconds = time.perf_counter() - started
            meta.add_teachers([new])
            k = len(meta.teachers) - 1
            noise = torch.randn(new.num_classes * per_class, meta.options.noise,
                                generator=torch.Generator().manual_seed(seed))
            fast = {n: p.detach().clone().requires_grad_() for n, p in meta.meta_params().items()}
            opt = torch.optim.Adam(fast.values(), lr=meta.options.inner_lr, betas=meta.options.betas)
            pixels = torch.arange(new.space.size ** 2)

            def adapt_step(fast=fast, opt=opt, k=k, noise=noise, meta=meta, pixels=pixels):
                value, _ = meta._teacher_loss(k, meta._generate(fast, k, noise), pixels)
                grads = torch.autograd.grad(value, list(fast.values()))
                for p, g in zip(fast.values(), grads):
                    p.grad = g
                opt.step()

            def current(fast=fast, k=k, noise=noise, meta=meta, pixels=pixels):
                with torch.no_grad():
                    return float(meta._teacher_loss(k, meta._generate(fast, k, noise), pixels)[0])

            row[label] = {**steps_to(current, adapt_step, args.level, args.limit),
                          "meta_training_seconds": round(meta_seconds, 1), "meta_steps": meta_steps}
        results.append(row)
        print(json.dumps(row), flush=True)
    (args.out / "recovery.json").write_text(json.dumps({"conditions": conditions(), "rows": results},
                                                       indent=1))


def run_mixed(args: argparse.Namespace) -> None:
    path = zoo(args.out / "zoo-mixed", "sh", ["conv4", "vit_tiny_patch16_224"], 6, 4)
    base = {"ce": 1.0, "tv": 1e-4, "l2": 1e-5, "bn": 0.01}
    rows = []
    for seed in args.seeds:
        trainers = {"deepinv": trainer(path, args.out / "runs", f"mixed-plain-s{seed}", "deepinv", seed,
                                       terms=base, cpu_workers=1),
                    "deepinv + input-stats": trainer(path, args.out / "runs", f"mixed-prior-s{seed}",
                                                     "deepinv", seed, terms={**base, "input-stats": 0.1},
                                                     cpu_workers=1)}
        curves = race(trainers, args.seconds, args.chunk, args.val_every)
        stats = {}
        for key, t in trainers.items():
            per = []
            for teacher, images in zip(t.teachers, t.inverter.teacher_images()):
                if not teacher.has_bn:
                    var, mean = torch.var_mean(images.flatten(0, 1), dim=(0, 2, 3), correction=0)
                    per.append({"teacher": teacher.name, "mean": [round(v, 3) for v in mean.tolist()],
                                "var": [round(v, 3) for v in var.tolist()]})
            stats[key] = per
        tests = {k: round(meta_test(t, args.tasks), 2) for k, t in trainers.items()}
        rows.append({"seed": seed, "curves": curves, "vit_image_stats": stats, "meta_test": tests})
        print(json.dumps({"seed": seed, "meta_test": tests, "vit_image_stats": stats}), flush=True)
        plot({f"{k} s{seed}": c for k, c in curves.items()}, args.out / f"mixed-seed{seed}.png")
    (args.out / "mixed.json").write_text(json.dumps({"conditions": conditions(), "seconds": args.seconds,
                                                     "rows": rows}, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["budget", "recovery", "mixed", "rescore"])
    parser.add_argument("--out", type=Path, default=Path("inverters-measurement"))
    parser.add_argument("--seconds", type=float, default=180.0, help="step time per inverter")
    parser.add_argument("--chunk", type=float, default=10.0, help="seconds per turn when interleaving")
    parser.add_argument("--val-every", type=float, default=30.0, help="seconds of step time between validations")
    parser.add_argument("--tasks", type=int, default=200, help="meta-test tasks")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--level", type=float, default=0.5, help="recovery: the inversion loss to reach")
    parser.add_argument("--limit", type=int, default=400, help="recovery: most steps tried")
    parser.add_argument("--meta-steps", type=int, default=100, help="recovery: meta-generator's meta-training")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    {"budget": run_budget, "recovery": run_recovery, "mixed": run_mixed,
     "rescore": run_rescore}[args.what](args)


if __name__ == "__main__":
    main()
