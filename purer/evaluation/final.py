"""The final table of a run: its val-selected checkpoint against the baselines.

Shared by ``purer run`` (after training) and ``purer eval`` (on a saved run):
load the checkpoint chosen on meta-val, score it and the baselines on the
same meta-test tasks, write ``results.json`` / ``results.md`` into the run
directory and print the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from purer.config import RunConfig
from purer.evaluation.compare import score_methods
from purer.evaluation.results import ResultRow, print_table, results_document, write_results
from purer.rundir import RunDir
from purer.types import Teacher

# Baselines that never look at the teachers, so no zoo has to be loaded for them.
TEACHER_FREE = {"random", "maml-real"}


def final_evaluation(run_dir: RunDir, config: RunConfig, teachers: Sequence[Teacher] | None,
                     device: torch.device, *, which: str = "best",
                     baselines: Sequence[str] | None = None,
                     options: Mapping[str, Mapping[str, Any]] | None = None) -> list[ResultRow]:
    """Score the ``which`` checkpoint of ``run_dir`` and the baselines; write and print.

    ``config`` decides the protocol (its ``eval`` and ``calibrator`` sections
    may differ from the run's own, e.g. ``purer eval --shot 5``); the
    checkpoint's weights come from the run. ``teachers=None`` loads the zoo
    only when a baseline needs it.
    """
    from purer.engine.checkpoint import load_meta_learner

    learner, _, info = load_meta_learner(run_dir.path, which, device)
    baselines = list(config.eval.baselines if baselines is None else baselines)
    if teachers is None:
        teachers = []
        if any(b not in TEACHER_FREE for b in baselines):
            from purer.engine.build import load_zoo

            teachers = load_zoo(config, device)
    rows = score_methods(config, teachers, learner, baselines, device=device, options=options)
    selection = "meta_val" if which == "best" else f"none ({which} checkpoint)"
    document = results_document(
        rows, dataset=config.data.name, selection_split=selection, eval_split=config.eval.split,
        task_seed=config.eval.seed, tasks=config.eval.tasks, query=config.eval.query,
        checkpoint={"which": which, **info}, calibrator={"name": config.calibrator.name,
                                                         **config.calibrator.options},
        meta_arch=config.train.meta_arch, init=config.init.name)
    path = write_results(run_dir.path, document)
    print_table(rows, title=f"{config.data.name} {config.eval.split} "
                            f"({config.eval.tasks} tasks, seed {config.eval.seed})")
    from purer.progress import console

    console.print(f"results: {path} and {path.with_suffix('.md')}", highlight=False)
    return rows
