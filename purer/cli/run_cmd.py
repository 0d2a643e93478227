"""``purer run``: meta-train with ECI, then score the val-selected model."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import click

from purer.cli.options import config_from_cli, config_options

if TYPE_CHECKING:
    from purer.config import RunConfig
    from purer.distributed import World
    from purer.rundir import RunDir


def register(cli: click.Group) -> None:
    @cli.command("run")
    @config_options
    @click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True),
                  help="Continue the run in this directory from its last checkpoint; options "
                       "given with it may extend --steps or change the evaluation, not the "
                       "trajectory (unless --force).")
    @click.option("--eval/--no-eval", "evaluate", default=None,
                  help="Do (default) or skip the final meta-test evaluation; a resumed run keeps "
                       "its own choice unless one is given.")
    @click.option("--force", is_flag=True,
                  help="With --resume: accept changed values that alter the run's trajectory.")
    @click.option("--nproc", type=click.IntRange(min=1), default=None,
                  help="Run on N processes of this machine (torchrun's launcher; "
                       "docs/distributed.md). Under torchrun itself, leave it out.")
    def run(resume_dir: str | None, evaluate: bool | None, force: bool, nproc: int | None,
            **kwargs) -> None:
        """Meta-train a meta-model from a teacher zoo (PURER, Alg. 1).

        With no options this is the quick start: the built-in synthetic-shapes
        dataset, a small cached zoo, a short ECI run and a table comparing
        PURER with Random and Average initialisation on the same test tasks.
        """
        from purer.cli.launch import relaunched
        from purer.errors import ConfigError
        from purer.rundir import RunDir

        if relaunched(nproc):
            return
        if resume_dir:
            run_dir = RunDir.open(resume_dir)
            with _joined(run_dir.load_config()) as world:
                if world.is_main:
                    run_dir.claim()
                try:
                    _resume(run_dir, evaluate, force, kwargs, world)
                finally:
                    run_dir.release()
            return
        if force:
            raise ConfigError("--force: only applies with --resume")
        from purer.cli.resume import absolute_paths
        from purer.pipeline.compare import check_baselines

        config = absolute_paths(config_from_cli(kwargs))
        with _joined(config) as world:
            no_eval = evaluate is False
            if not no_eval:
                check_baselines(config.eval.baselines)  # before training, not after
            run_dir = RunDir.create(config) if world.is_main else None
            if world.distributed:  # the others write nothing: rank 0's folder, by name
                path = world.broadcast_object(str(run_dir.path) if run_dir is not None else None)
                run_dir = run_dir or RunDir.open(path)
            try:
                if world.is_main:
                    run_dir.save_flags({"no_eval": no_eval})
                _train(run_dir, config, resumed=False, no_eval=no_eval, world=world)
            finally:
                run_dir.release()


def _joined(config: RunConfig) -> AbstractContextManager[World]:
    """The world of a run of ``config`` (see :func:`purer.cli.launch.joined_world`)."""
    from purer.cli.launch import joined_world

    return joined_world(config.device, "the run configuration", config.model_dump_json())


def _resume(run_dir: RunDir, evaluate: bool | None, force: bool, given: dict,
            world: World) -> None:
    """Continue ``run_dir`` with its own configuration and flags, plus the
    changes ``given`` makes that :func:`purer.cli.resume.resume_config` accepts."""
    from purer.cli.resume import describe, is_free, resume_config
    from purer.progress import console

    config, changes = resume_config(run_dir.load_config(), given, force)
    flags = run_dir.load_flags()
    if evaluate is not None:
        flags["no_eval"] = not evaluate
    if not flags.get("no_eval"):
        from purer.pipeline.compare import check_baselines

        check_baselines(config.eval.baselines)

    def record() -> None:
        """Once the checkpoint is loaded: say what changed, and keep it in the run's folder."""
        if not world.is_main:
            return
        if changes:
            forced = any(not is_free(k) for k in changes)
            console.print(f"resume: changes {describe(changes)}; everything else as the run was "
                          "started" + (" (forced: the run no longer replays one configuration)"
                                       if forced else ""),
                          highlight=False, markup=False, soft_wrap=True)
            run_dir.save_config(config)
        run_dir.save_flags(flags)

    _train(run_dir, config, resumed=True, no_eval=bool(flags.get("no_eval")), on_resumed=record,
           world=world)


def _train(run_dir: RunDir, config: RunConfig, *, resumed: bool, no_eval: bool,
           on_resumed: Callable[[], None] | None = None, world: World | None = None) -> None:
    from purer.distributed import World, local_device
    from purer.pipeline.build import build_trainer
    from purer.pipeline.final import final_evaluation
    from purer.progress import console
    from purer.rundir import resolve_device

    world = world or World()
    try:
        device = local_device(resolve_device(config.device), world)
        where = f", {world.size} processes" if world.distributed else ""
        console.print(f"run directory: [bold]{run_dir.path}[/] (seed {config.seed}, device {device}"
                      f"{where})")
        trainer = build_trainer(config, run_dir, device, world)
        if resumed:
            trainer.resume()
            if on_resumed is not None:
                on_resumed()  # the run's folder records what it now continues with
            console.print(f"resumed at step {trainer.step}")
    except KeyboardInterrupt:
        if world.is_main:
            run_dir.discard()
        console.print("interrupted while resuming; the run is unchanged" if resumed
                      else "interrupted before the first step; nothing was saved", soft_wrap=True)
        raise SystemExit(130) from None
    except BaseException:
        if world.is_main:
            run_dir.discard()  # a new run's folder, when nothing was trained in it
        raise
    try:
        best = trainer.train()
    except KeyboardInterrupt:
        console.print(f"interrupted: saved step {trainer.last_saved()} (the last completed step); "
                      f"continue with `purer run --resume {run_dir.path}`", highlight=False,
                      soft_wrap=True)
        raise SystemExit(130) from None
    console.print(f"best meta-val accuracy {best['val_accuracy']:.2f}% at step {best['step']}")
    if no_eval:
        return
    try:
        final_evaluation(run_dir, config, trainer.teachers, device, world=world)
    except KeyboardInterrupt:
        console.print(f"interrupted during the final evaluation; training is complete: score it "
                      f"with `purer eval {run_dir.path}`", highlight=False, soft_wrap=True)
        raise SystemExit(130) from None
