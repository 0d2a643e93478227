"""Score PURER and the baselines on the same tasks: one call, one table's rows.

The engine calls :func:`score_methods` at the end of ``purer run`` and
``purer eval`` calls it on a saved checkpoint. Each baseline is an
initialiser plugin (``random``, ``average``, ``ota``, ...): a fresh
meta-model of the run's architecture gets the initialiser's weights, is set
up with the run's meta-learner options, and is adapted per task like the
trained one. ``real`` is the real-data upper bound
(:mod:`purer.pipeline.real_data`). Every method meets the same seeded
:class:`TaskList` per shot, so the table compares methods, not task draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from purer.config import PluginSection, RunConfig
from purer.data import read_split
from purer.data.episodes import TaskList, make_task_list
from purer.distributed import World
from purer.errors import ConfigError, PurerError
from purer.evaluation.evaluator import EvalResult, evaluate
from purer.evaluation.results import ResultRow
from purer.interfaces import Calibrator, MetaLearner
from purer.pipeline.build import build_calibrator, build_meta_learner, build_meta_model, initialize
from purer.pipeline.real_data import REAL_DATA, train_on_real_data
from purer.plugins import get_host
from purer.types import SplitData, Teacher


def eval_way(config: RunConfig) -> int:
    return config.eval.way or config.train.way


def eval_shots(config: RunConfig) -> list[int]:
    return list(config.eval.shots) or [config.train.shot]


def task_lists(config: RunConfig, split: SplitData, split_name: str) -> dict[int, TaskList]:
    """One seeded task list per shot (``eval`` section): shared by every method."""
    e = config.eval
    return {shot: make_task_list(split, eval_way(config), shot, e.query, e.tasks, e.seed,
                                 dataset=config.data.name, split_name=split_name)
            for shot in eval_shots(config)}


def check_baselines(names: Sequence[str]) -> None:
    """Every name is an initialiser or ``real``; one line naming the others."""
    known = get_host().names("initializer")
    if REAL_DATA in known:
        raise ConfigError(f"eval.baselines: an initialiser plugin is registered as '{REAL_DATA}', "
                          "the name of the real-data baseline")
    unknown = [n for n in names if n not in known and n != REAL_DATA]
    if unknown:
        raise ConfigError(f"eval.baselines: unknown baseline '{unknown[0]}' (initialisers: "
                          f"{', '.join(known)}; or '{REAL_DATA}': the learner trained on real data)")


def baseline_learner(name: str, options: Mapping[str, Any], config: RunConfig, way: int,
                     teachers: Sequence[Teacher], device: torch.device) -> MetaLearner:
    """A fresh meta-model with initialiser ``name``'s weights, set up for meta-testing."""
    torch.manual_seed(config.seed)  # the random baseline is reproducible
    model: nn.Module = build_meta_model(config.train, way).to(device)
    initialize(model, PluginSection(name=name, **options), teachers, section=f"baseline {name}")
    return build_meta_learner(config.meta, model, device)


def _row(method: str, way: int, shot: int, result: EvalResult, **extras: Any) -> ResultRow:
    return ResultRow(method, way, shot, result.accuracy, result.ci95, result.n_tasks,
                     result.seconds, result.seconds_per_task, extras=extras)


def _model_way(learner: MetaLearner) -> int | None:
    head = learner.model.get_classifier() if hasattr(learner.model, "get_classifier") else None
    return head.out_features if isinstance(head, nn.Linear) else None


def score_methods(config: RunConfig, teachers: Sequence[Teacher],
                  learner: MetaLearner | None = None, baselines: Sequence[str] | None = None,
                  *, split: SplitData | None = None, split_name: str | None = None,
                  device: torch.device | str | None = None, calibrator: Calibrator | None = None,
                  learner_label: str = "purer", include_uncalibrated: bool = True,
                  options: Mapping[str, Mapping[str, Any]] | None = None,
                  world: World | None = None) -> list[ResultRow]:
    """Rows for the trained learner (if given) and each baseline, per shot.

    Args:
        config: the run's resolved config (``eval`` fixes way, shots, tasks,
            query, split and task seed; ``train`` the meta-architecture;
            ``meta`` the meta-learner options; ``calibrator`` ICFIL or none).
        teachers: the zoo (``average``/``ota`` need it; ``random`` does not).
        learner: the trained meta-learner, already set up.
        baselines: initialiser names or ``real`` (default ``config.eval.baselines``).
        split / split_name: the evaluation split (default: loaded from
            ``config.data`` and ``config.eval.split``).
        device: default: the learner's device, else the config's.
        calibrator: applied to the trained learner (default: built from
            ``config.calibrator``); baselines use standard adaptation, as in
            the paper's Table 1.
        learner_label: row name of the trained learner ("purer").
        include_uncalibrated: with a calibrator, also score the learner
            without it (the ablation's "+ICFIL" pair).
        options: per-baseline initialiser options, over the defaults.
        world: in a run across processes, each rank scores its share of
            every task list (the rows are the same on every rank).

    A baseline that cannot run on this zoo (e.g. ``average`` on mixed
    architectures) becomes a row with no accuracy and the reason as note.
    """
    from purer.rundir import resolve_device

    split_name = split_name or config.eval.split
    split = split if split is not None else read_split(config.data, split_name)
    if device is None:
        device = getattr(learner, "device", None) or resolve_device(config.device)
    device = torch.device(device)
    baselines = list(config.eval.baselines if baselines is None else baselines)
    check_baselines(baselines)
    way = eval_way(config)
    lists = task_lists(config, split, split_name)
    batch = config.eval.batch_tasks
    rows: list[ResultRow] = []

    if learner is not None:
        if _model_way(learner) not in (None, way):
            raise ConfigError(f"eval.way={way} but the meta-model's head has "
                              f"{_model_way(learner)} outputs (train.way)")
        if calibrator is None:
            calibrator = build_calibrator(config.calibrator, config.inversion)
        variants: list[tuple[str, Calibrator | None]] = []
        if calibrator.passthrough or include_uncalibrated:
            variants.append((learner_label, None))
        if not calibrator.passthrough:
            variants.append((f"{learner_label}+{calibrator.name}", calibrator))
        for shot, tasks in lists.items():
            for label, calib in variants:
                result = evaluate(learner, tasks, split, device, calib, batch,
                                  description=f"{label} {way}w{shot}s", world=world)
                rows.append(_row(label, way, shot, result))

    for name in baselines:
        initialised: MetaLearner | None = None  # an initialiser's weights do not depend on the shot
        for shot, tasks in lists.items():
            try:
                if name == REAL_DATA:
                    built = train_on_real_data(config, way, shot, device)
                else:
                    initialised = initialised or baseline_learner(
                        name, (options or {}).get(name, {}), config, way, teachers, device)
                    built = initialised
            except (ValueError, PurerError) as exc:
                rows.append(ResultRow(name, way, shot, float("nan"), float("nan"), 0,
                                      note=str(exc).splitlines()[0]))
                continue
            result = evaluate(built, tasks, split, device, None, batch,
                              description=f"{name} {way}w{shot}s", world=world)
            rows.append(_row(name, way, shot, result))
    return rows
