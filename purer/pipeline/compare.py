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
from purer.data.episodes import TaskList, make_task_list, to_space
from purer.distributed import World
from purer.errors import ConfigError, PurerError
from purer.evaluation.evaluator import EvalResult, ci95, evaluate
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


def task_shares(total: int, parts: int) -> list[int]:
    """``total`` tasks shared out as evenly as possible, the first parts taking the rest."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def eval_sources(config: RunConfig, split: SplitData, split_name: str
                 ) -> list[tuple[str, SplitData, dict[int, TaskList]]]:
    """(dataset, split, task lists per shot) of each dataset the tasks come from.

    One source (the ``data`` dataset) unless ``eval.extra_data`` names more
    (MH): then ``eval.tasks`` is shared out between the datasets, and every
    other dataset's split is resized into the ``data`` split's input space,
    the meta-model's.
    """
    if not config.eval.extra_data:
        return [(config.data.name, split, task_lists(config, split, split_name))]
    from purer.zoo.build import parse_extra_data

    e = config.eval
    splits = [(config.data.name, split)]
    for name, root in parse_extra_data(list(e.extra_data)):
        if name in [n for n, _ in splits]:
            raise ConfigError(f"eval.extra_data: dataset '{name}' is listed twice (or is data.name)")
        other = read_split(PluginSection(name=name, root=root), split_name)
        splits.append((name, to_space(other, split.space)))
    counts = task_shares(e.tasks, len(splits))
    if min(counts) < 1:
        raise ConfigError(f"eval.tasks: {e.tasks} tasks cannot be shared by {len(splits)} datasets")
    return [(name, part, {shot: make_task_list(part, eval_way(config), shot, e.query, count, e.seed,
                                               dataset=name, split_name=split_name)
                          for shot in eval_shots(config)})
            for (name, part), count in zip(splits, counts)]


def pooled(results: Sequence[EvalResult]) -> EvalResult:
    """One result over the tasks of all ``results`` (the mean over every task)."""
    values = [a for r in results for a in r.accuracies]
    n = len(values)
    seconds = sum(r.seconds for r in results)
    return EvalResult(accuracy=sum(values) / n if n else float("nan"), ci95=ci95(values),
                      accuracies=values, n_tasks=n, seconds=seconds, seconds_per_task=seconds / max(n, 1))


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
    sources = eval_sources(config, split, split_name)
    batch = config.eval.batch_tasks
    rows: list[ResultRow] = []

    def score(built: MetaLearner, label: str, shot: int, calib: Calibrator | None) -> None:
        """One row, or (several datasets) a row per dataset and the pooled row."""
        results = [evaluate(built, lists[shot], part, device, calib, batch,
                            description=f"{label} {way}w{shot}s" + (f" {name}" if len(sources) > 1 else ""),
                            world=world)
                   for name, part, lists in sources]
        if len(sources) == 1:
            rows.append(_row(label, way, shot, results[0]))
            return
        for (name, _, _), result in zip(sources, results):
            rows.append(_row(f"{label} [{name}]", way, shot, result, dataset=name))
        rows.append(_row(label, way, shot, pooled(results),
                         pooled={name: r.n_tasks for (name, _, _), r in zip(sources, results)}))

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
        for shot in eval_shots(config):
            for label, calib in variants:
                score(learner, label, shot, calib)

    for name in baselines:
        initialised: MetaLearner | None = None  # an initialiser's weights do not depend on the shot
        for shot in eval_shots(config):
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
            score(built, name, shot, None)
    return rows
