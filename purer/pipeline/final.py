"""The final table of a run: its val-selected checkpoint against the baselines.

Shared by ``purer run`` (after training) and ``purer eval`` (on a saved run):
load the checkpoint chosen on meta-val, score it and the baselines on the
same meta-test tasks, write ``results.json`` / ``results.md`` into the run
directory and print the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from purer.config import PluginSection, RunConfig
from purer.distributed import World
from purer.engine.checkpoint import load_state
from purer.errors import ConfigError
from purer.evaluation.results import ResultRow, print_table, results_document, write_results
from purer.interfaces import MetaLearner
from purer.pipeline.build import build_meta_learner, build_meta_model, load_zoo, needs_teachers
from purer.pipeline.compare import check_baselines, score_methods
from purer.pipeline.real_data import REAL_DATA
from purer.progress import console
from purer.rundir import RunDir, resolve_device
from purer.types import Teacher


def load_meta_learner(run_dir: str | Path, which: str = "best",
                      device: torch.device | str | None = None,
                      meta: PluginSection | None = None) -> tuple[MetaLearner, RunConfig, dict]:
    """The meta-learner of a finished (or running) run, with ``which`` weights.

    ``meta`` replaces the run's own ``[meta]`` section, so that its meta-test
    options (``test_inner_steps``, ``test_batching``, ...) can differ from
    training's; the weights still have to fit it. Returns ``(learner, config,
    info)``; ``info`` says the step and the val accuracy that selected the
    checkpoint.
    """
    run = RunDir.open(run_dir)
    config = run.load_config()
    device = resolve_device(config.device) if device is None else torch.device(device)
    if meta is not None and meta.name != config.meta.name:
        raise ConfigError(f"meta.name: the run at {run.path} trained '{config.meta.name}'; "
                          f"its weights cannot be scored as '{meta.name}'")
    learner = build_meta_learner(meta or config.meta, build_meta_model(config.train), device)
    state, info = load_state(run.checkpoints, which, device)
    learner.load_state_dict(state["meta"] if "meta" in state else state)
    return learner, config, info


def final_evaluation(run_dir: RunDir, config: RunConfig, teachers: Sequence[Teacher] | None,
                     device: torch.device, *, which: str = "best",
                     baselines: Sequence[str] | None = None,
                     options: Mapping[str, Mapping[str, Any]] | None = None,
                     world: World | None = None) -> list[ResultRow]:
    """Score the ``which`` checkpoint of ``run_dir`` and the baselines; write and print.

    ``config`` decides the protocol (its ``eval`` and ``calibrator`` sections
    may differ from the run's own, e.g. ``purer eval --shot 5``); the
    checkpoint's weights come from the run. ``teachers=None`` loads the zoo
    only when a baseline needs it. ``world``: the ranks of a run across
    processes share the tasks; rank 0 alone writes and prints.
    """
    world = world if world is not None else World()
    world.barrier()  # rank 0's checkpoints are written
    learner, _, info = load_meta_learner(run_dir.path, which, device, meta=config.meta)
    baselines = list(config.eval.baselines if baselines is None else baselines)
    check_baselines(baselines)
    if teachers is None:
        teachers = []
        if any(b != REAL_DATA and needs_teachers(b) for b in baselines):
            teachers = load_zoo(config.zoo, config.data, device)
    rows = score_methods(config, teachers, learner, baselines, device=device, options=options,
                         world=world)
    if not world.is_main:
        return rows
    selection = "meta_val" if which == "best" else f"none ({which} checkpoint)"
    document = results_document(
        rows, dataset=config.data.name, selection_split=selection, eval_split=config.eval.split,
        task_seed=config.eval.seed, tasks=config.eval.tasks, query=config.eval.query,
        checkpoint={"which": which, **info}, calibrator={"name": config.calibrator.name,
                                                         **config.calibrator.option_dict()},
        meta_arch=config.train.meta_arch, init=config.init.name)
    path = write_results(run_dir.path, document)
    print_table(rows, title=f"{config.data.name} {config.eval.split} "
                            f"({config.eval.tasks} tasks, seed {config.eval.seed})")
    console.print(f"results: {path} and {path.with_suffix('.md')}", highlight=False)
    return rows
