"""``purer eval`` (score a run's val-selected checkpoint) and ``purer table``."""

from __future__ import annotations

from pathlib import Path

import click

SPLITS = {"test": "meta_test", "val": "meta_val", "meta_test": "meta_test", "meta_val": "meta_val"}

# option -> the configuration key it sets over the run's own configuration
EVAL_OPTIONS = {
    "calibrator": "calibrator.name", "way": "eval.way", "shots": "eval.shots",
    "tasks": "eval.tasks", "query": "eval.query", "split": "eval.split", "seed": "eval.seed",
    "baselines": "eval.baselines", "batch_tasks": "eval.batch_tasks", "device": "device",
}


# `--baselines none`: only the checkpoint
NO_BASELINES = "none"


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip() and n.strip() != NO_BASELINES]


def register(cli: click.Group) -> None:
    @cli.command("eval")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
    @click.option("--calibrator", help="Calibrator after the inner loop: none or icfil "
                  "(default: the run's).")
    @click.option("--way", type=int, help="Classes per task (default: the run's eval/train way).")
    @click.option("--shot", "shots", type=int, multiple=True,
                  help="Shots per class; repeat for several settings (--shot 1 --shot 5).")
    @click.option("--tasks", type=int, help="Tasks per setting (default 600).")
    @click.option("--query", type=int, help="Queries per class (default 15).")
    @click.option("--split", type=click.Choice(sorted(SPLITS)), help="test (default) or val.")
    @click.option("--seed", type=int, help="Seed of the task list (default 2023).")
    @click.option("--baselines", metavar="NAMES",
                  help="Comma-separated initialisers scored on the same tasks, e.g. "
                       "random,average,ota (none: only the checkpoint).")
    @click.option("--checkpoint", "which", default="best", show_default=True,
                  type=click.Choice(["best", "last"]),
                  help="best: the meta-val-selected weights.")
    @click.option("--batch-tasks", type=int, help="Tasks adapted together.")
    @click.option("--device", help="auto, cpu, cuda, cuda:N (default: the run's).")
    @click.option("--set", "assignments", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Override a config value, e.g. --set calibrator.calib_lr=0.001.")
    def eval_(run_dir: str, calibrator: str | None, way: int | None, shots: tuple[int, ...],
              tasks: int | None, query: int | None, split: str | None, seed: int | None,
              baselines: str | None, which: str, batch_tasks: int | None, device: str | None,
              assignments: tuple[str, ...]) -> None:
        """Score RUN_DIR's val-selected checkpoint and the baselines on the same tasks.

        Writes results.json and results.md into RUN_DIR (rows already there
        for other settings of the same protocol are kept) and prints the table.
        """
        from purer.cli.options import options_layer
        from purer.config import build_config
        from purer.pipeline.final import final_evaluation
        from purer.plugins import get_host
        from purer.rundir import RunDir, resolve_device

        run = RunDir.open(run_dir)
        given = {"calibrator": calibrator, "way": way, "shots": list(shots) or None, "tasks": tasks,
                 "query": query, "split": SPLITS.get(split or ""), "seed": seed,
                 "baselines": _names(baselines), "batch_tasks": batch_tasks, "device": device}
        config = build_config(run.load_config().model_dump(mode="json"),
                              options_layer(given, EVAL_OPTIONS), assignments=assignments,
                              host=get_host())
        from purer.cli.launch import joined_world
        from purer.distributed import local_device

        # under torchrun the ranks share the tasks
        with joined_world(config.device, "the evaluation configuration",
                          config.model_dump_json()) as world:
            final_evaluation(run, config, None, local_device(resolve_device(config.device), world),
                             which=which, world=world)

    @cli.command("table")
    @click.argument("run_dirs", nargs=-1, required=True,
                    type=click.Path(exists=True))
    @click.option("--out", type=click.Path(dir_okay=False), help="Also write the table here.")
    def table(run_dirs: tuple[str, ...], out: str | None) -> None:
        """Merge several runs' results.json into one markdown table.

        Rows are methods, columns settings (e.g. 5-way 1-shot); a method
        scored by several runs in one setting gets a row per run.
        """
        from purer.evaluation.results import load_results, merged_table

        named = []
        for d in run_dirs:
            path = Path(d)
            name = (path.parent.name if path.is_file() else path.name) or str(path)
            named.append((name, load_results(path)))
        text = merged_table(named)
        click.echo(text, nl=False)
        if out:
            from purer.rundir import atomic_write_text

            atomic_write_text(Path(out), text)
