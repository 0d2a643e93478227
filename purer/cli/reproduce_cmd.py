"""``purer reproduce``: one of the paper's tables, end to end, beside the paper's numbers."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from purer.pipeline.reproduce import Job, Plan


def register(cli: click.Group) -> None:
    @cli.command("reproduce")
    @click.option("--table", required=True, type=click.Choice(["ss", "sh", "mh", "ablation"]),
                  help="ss: Table 1; sh: Table 2; mh: Table 3 (both test sets pooled); "
                       "ablation: Table 4 (EI, curriculum, ICFIL).")
    @click.option("--data", default="cifar-fs", show_default=True,
                  help="Dataset of the teachers and the meta-test (mh: the meta-model's input space).")
    @click.option("--root", help="Dataset folder (default: the reader's, $PURER_DATA_DIR/<data>).")
    @click.option("--extra-root", help="mh: the other dataset's folder (default: the folder "
                  "named after it beside --root, else the reader's default).")
    @click.option("--shot", "shots", type=int, multiple=True,
                  help="Shots to run; repeatable.  [default: 1 and 5]")
    @click.option("--steps", type=int, help="Outer steps of every run (CPU scale); the "
                  "curriculum's start scales with it.  [default: the paper's 60,000]")
    @click.option("--zoo-epochs", type=int, help="Epochs per teacher.  [default: the preset's, 60]")
    @click.option("--tasks", type=int, default=600, show_default=True,
                  help="Meta-test tasks per shot: one seeded list shared by every method.")
    @click.option("--val-tasks", type=int, help="Meta-val tasks per validation.")
    @click.option("--val-points", type=int, default=10, show_default=True,
                  help="Validations (and checkpoints) over a run.")
    @click.option("--zoo", type=click.Path(file_okay=False),
                  help="Zoo folder, built or reused.  [default: OUT/zoo-<data>-<scenario>]")
    @click.option("--preset", help="Replace the table's presets (paper-<data>-...) by this one.")
    @click.option("--set", "assignments", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Override a value in every run (and the zoo), e.g. --set inverter.compile=false.")
    @click.option("--jobs", type=int, default=1, show_default=True,
                  help="Runs trained side by side, each in its own process.")
    @click.option("--threads", type=int, help="Torch threads in all, shared by the jobs.  "
                  "[default: the CPU count]")
    @click.option("--out", default="runs/reproduce", show_default=True, type=click.Path(file_okay=False),
                  help="Folder of the runs, their configurations and the table.")
    def reproduce(table: str, data: str, root: str | None, extra_root: str | None,
                  shots: tuple[int, ...], steps: int | None, zoo_epochs: int | None, tasks: int,
                  val_tasks: int | None, val_points: int, zoo: str | None, preset: str | None,
                  assignments: tuple[str, ...], jobs: int, threads: int | None, out: str) -> None:
        """Build or reuse the zoo, train every run of a table, score every method on one
        seeded task list per shot, and write OUT/reproduce.md and reproduce.json: the
        measured numbers beside the paper's, and the wall time of each part.

        Finished runs are reused and interrupted ones resumed, so the command can
        simply be run again.
        """
        from purer.errors import ConfigError
        from purer.pipeline.reproduce import ReproduceOptions, make_plan, write_configs, write_table
        from purer.progress import console

        if jobs < 1:
            raise ConfigError("--jobs: must be at least 1")
        options = ReproduceOptions(
            table=table, data=data, out=Path(out), root=root, zoo=Path(zoo) if zoo else None,
            shots=tuple(dict.fromkeys(shots)) or (1, 5), steps=steps, zoo_epochs=zoo_epochs,
            tasks=tasks, val_tasks=val_tasks, val_points=val_points, preset=preset,
            extra_root=extra_root, assignments=assignments)
        plan = make_plan(options)
        paths = write_configs(plan)
        threads = threads or os.cpu_count() or 1
        log = [_build_zoo(plan, threads)]
        if jobs == 1:
            for job in plan.jobs:
                log += _job_steps(plan, job, paths[job.name], threads, in_process=True)
        else:
            from concurrent.futures import ThreadPoolExecutor

            each = max(1, threads // jobs)
            with ThreadPoolExecutor(jobs) as pool:
                for entries in pool.map(lambda j: _job_steps(plan, j, paths[j.name], each, in_process=False),
                                        plan.jobs):
                    log += entries
        path, markdown = write_table(plan, log)
        console.print(markdown, markup=False, highlight=False, soft_wrap=True)
        console.print(f"written: {path} and {path.with_suffix('.json')}", highlight=False)


def _build_zoo(plan: Plan, threads: int) -> dict[str, Any]:
    """Train what the zoo lacks (a finished zoo returns at once), timed."""
    import torch

    from purer.rundir import resolve_device
    from purer.zoo.build import build_zoo

    config = plan.zoo_config
    torch.set_num_threads(threads)
    options = config.data.option_dict()
    root = options.pop("root", None)
    before = _teacher_count(plan.zoo)
    started = time.perf_counter()
    manifest = build_zoo(config.zoo.build, config.data.name, root, plan.zoo,
                         resolve_device(config.device), data_options=options)
    reused = before == len(manifest.teachers) > 0
    command = (f"purer zoo build --data {config.data.name} --scenario {config.zoo.build.scenario} "
               f"--epochs {config.zoo.build.epochs} --out {plan.zoo}")
    return {"part": "zoo (already built: checked)" if reused else "zoo", "command": command,
            "seconds": round(time.perf_counter() - started, 1)}


def _teacher_count(zoo: Path) -> int:
    from purer.zoo.manifest import MANIFEST_NAME, load_manifest

    return len(load_manifest(zoo).teachers) if (zoo / MANIFEST_NAME).is_file() else 0


def _job_steps(plan: Plan, job: Job, config_path: Path, threads: int, *,
               in_process: bool) -> list[dict[str, Any]]:
    """Train ``job`` (skipped when its results are there, resumed when it has
    checkpoints), then its ICFIL score when the table wants one."""
    from purer.pipeline.reproduce import ICFIL, has_methods, needed_methods

    log = []
    label = f"{job.shot}-shot {job.variant}"
    if not has_methods(job.folder, needed_methods(plan, job), job.shot):
        args = (["run", "--resume", str(job.folder)] if (job.folder / "checkpoints").exists()
                else ["run", "--config", str(config_path)])
        log.append(_step(f"{label}: train + test", args, threads, in_process))
    if job.icfil and not has_methods(job.folder, [f"purer+{ICFIL}"], job.shot):
        args = ["eval", str(job.folder), "--calibrator", ICFIL, "--shot", str(job.shot),
                "--tasks", str(plan.options.tasks), "--baselines", "none"]
        log.append(_step(f"{label}: + ICFIL", args, threads, in_process))
    return log


def _step(part: str, args: list[str], threads: int, in_process: bool) -> dict[str, Any]:
    from purer.progress import console

    text = shlex.join(["purer", *args])
    console.print(f"$ {text}", highlight=False, markup=False, soft_wrap=True)
    started = time.perf_counter()
    if in_process:
        import torch

        from purer.cli.main import build_cli

        torch.set_num_threads(threads)
        build_cli().main(args=args, prog_name="purer", standalone_mode=False)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run([sys.executable, "-m", "purer.cli.main", *args], env=env)
        if done.returncode:
            from purer.errors import PurerError

            raise PurerError(f"{text}: exited with status {done.returncode}")
    return {"part": part, "command": text, "seconds": round(time.perf_counter() - started, 1)}
