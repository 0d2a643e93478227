"""Score PURER and the baselines on the same tasks: one call, one table's rows.

The engine calls :func:`score_methods` at the end of ``purer run`` and
``purer eval`` calls it on a saved checkpoint. Each baseline is an
initialiser plugin (``random``, ``average``, ``ota``, ``maml-real``, ...):
a fresh meta-model of the run's architecture gets the initialiser's weights,
is set up with the run's meta-learner options, and is adapted per task like
the trained one. Every method meets the same seeded :class:`TaskList` per
shot, so the table compares methods, not task draws.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from purer.config import RunConfig
from purer.data.episodes import TaskList, make_task_list
from purer.errors import PurerError
from purer.evaluation.evaluator import EvalResult, evaluate, is_plain
from purer.evaluation.results import ResultRow
from purer.interfaces import Calibrator, MetaLearner
from purer.models import create_model
from purer.plugins import get_host
from purer.types import SplitData, Teacher


def eval_way(config: RunConfig) -> int:
    return config.eval.way or config.train.way


def eval_shots(config: RunConfig) -> list[int]:
    return list(config.eval.shots) or [config.train.shot]


def load_eval_split(config: RunConfig, split_name: str | None = None) -> SplitData:
    from purer.data import load_split

    return load_split(config.data.name, split_name or config.eval.split, **config.data.options)


def task_lists(config: RunConfig, split: SplitData, split_name: str) -> dict[int, TaskList]:
    """One seeded task list per shot (``eval`` section): shared by every method."""
    e = config.eval
    return {shot: make_task_list(split, eval_way(config), shot, e.query, e.tasks, e.seed,
                                 dataset=config.data.name, split_name=split_name)
            for shot in eval_shots(config)}


def baseline_options(name: str, config: RunConfig, way: int, shot: int) -> dict[str, Any]:
    """Options a baseline needs from the run: ``maml-real`` trains on the run's
    dataset with a memory-sized slice (shot + query images per class) and the
    run's meta-learner options."""
    if name == "maml-real":
        return {"data": config.data.name, "root": config.data.options.get("root"),
                "way": way, "shot": shot, "images_per_class": shot + config.train.query,
                "meta": dict(config.meta.options), "seed": config.seed}
    return {}


def baseline_learner(name: str, options: Mapping[str, Any], config: RunConfig, way: int,
                     teachers: Sequence[Teacher], device: torch.device) -> MetaLearner:
    """A fresh meta-model with ``name``'s initial weights, set up for meta-testing."""
    host = get_host()
    torch.manual_seed(config.seed)  # the random baseline is reproducible
    model: nn.Module = create_model(config.train.meta_arch, num_classes=way,
                                    **config.train.meta_arch_kwargs).to(device)
    host.create("initializer", name, dict(options), section=f"baseline {name}").initialize(
        model, teachers)
    learner = host.create("meta_learner", config.meta.name, config.meta.options, section="meta")
    learner.setup(model, device)
    return learner


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
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> list[ResultRow]:
    """Rows for the trained learner (if given) and each baseline, per shot.

    Args:
        config: the run's resolved config (``eval`` fixes way, shots, tasks,
            query, split and task seed; ``train`` the meta-architecture;
            ``meta`` the meta-learner options; ``calibrator`` ICFIL or none).
        teachers: the zoo (``average``/``ota`` need it; ``random`` does not).
        learner: the trained meta-learner, already set up.
        baselines: initialiser names (default ``config.eval.baselines``).
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

    A baseline that cannot run on this zoo (e.g. ``average`` on mixed
    architectures) becomes a row with no accuracy and the reason as note.
    """
    from purer.rundir import resolve_device

    host = get_host()
    split_name = split_name or config.eval.split
    split = split if split is not None else load_eval_split(config, split_name)
    if device is None:
        device = getattr(learner, "device", None) or resolve_device(config.device)
    device = torch.device(device)
    baselines = list(config.eval.baselines if baselines is None else baselines)
    way = eval_way(config)
    lists = task_lists(config, split, split_name)
    batch = config.eval.batch_tasks
    rows: list[ResultRow] = []

    if learner is not None:
        if _model_way(learner) not in (None, way):
            raise ValueError(f"eval.way={way} but the meta-model's head has "
                             f"{_model_way(learner)} outputs (train.way)")
        if calibrator is None:
            calibrator = host.create("calibrator", config.calibrator.name,
                                     config.calibrator.options, section="calibrator")
        variants: list[tuple[str, Calibrator | None]] = []
        if is_plain(calibrator) or include_uncalibrated:
            variants.append((learner_label, None))
        if not is_plain(calibrator):
            variants.append((f"{learner_label}+{calibrator.name}", calibrator))
        for shot, tasks in lists.items():
            for label, calib in variants:
                result = evaluate(learner, tasks, split, device, calib, batch,
                                  description=f"{label} {way}w{shot}s")
                rows.append(_row(label, way, shot, result))

    for name in baselines:
        built: dict[str, MetaLearner] = {}
        for shot, tasks in lists.items():
            opts = {**baseline_options(name, config, way, shot), **(options or {}).get(name, {})}
            key = json.dumps(opts, sort_keys=True, default=str)
            try:
                if key not in built:
                    built[key] = baseline_learner(name, opts, config, way, teachers, device)
            except (ValueError, PurerError) as exc:
                rows.append(ResultRow(name, way, shot, float("nan"), float("nan"), 0,
                                      note=str(exc).splitlines()[0]))
                continue
            result = evaluate(built[key], tasks, split, device, None, batch,
                              description=f"{name} {way}w{shot}s")
            rows.append(_row(name, way, shot, result))
    return rows
