"""``purer run``: meta-train with ECI, then score the val-selected model."""

from __future__ import annotations

import click

from purer.cli.options import config_from_cli, config_options


def register(cli: click.Group) -> None:
    @cli.command("run")
    @config_options
    @click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True),
                  help="Continue the run in this directory from its last checkpoint.")
    @click.option("--no-eval", is_flag=True, help="Skip the final meta-test evaluation.")
    def run(resume_dir: str | None, no_eval: bool, **kwargs) -> None:
        """Meta-train a meta-model from a teacher zoo (PURER, Alg. 1).

        With no options this is the quick start: the built-in synthetic-shapes
        dataset, a small cached zoo, a short ECI run and a table comparing
        PURER with Random and Average initialisation on the same test tasks.
        """
        from purer.pipeline.build import build_trainer
        from purer.pipeline.final import final_evaluation
        from purer.progress import console
        from purer.rundir import RunDir, resolve_device

        if resume_dir:
            run_dir = RunDir.open(resume_dir)
            config = run_dir.load_config()
        else:
            config = config_from_cli(kwargs)
            run_dir = RunDir.create(config)
        device = resolve_device(config.device)
        console.print(f"run directory: [bold]{run_dir.path}[/] (seed {config.seed}, device {device})")
        trainer = build_trainer(config, run_dir, device)
        if resume_dir:
            trainer.resume()
            console.print(f"resumed at step {trainer.step}")
        try:
            best = trainer.train()
        except KeyboardInterrupt:
            console.print(f"interrupted: saved step {trainer.step}; continue with "
                          f"`purer run --resume {run_dir.path}`")
            raise SystemExit(130) from None
        console.print(f"best meta-val accuracy {best['val_accuracy']:.2f}% at step {best['step']}")
        if not no_eval:
            final_evaluation(run_dir, config, trainer.teachers, device)
