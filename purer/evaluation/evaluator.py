"""Score a meta-learner on a fixed list of target tasks (meta-testing, Alg. 2).

Every method is scored on the *same* seeded task list (``purer.data.episodes.
TaskList``), so differences between rows of a table are differences between
methods, not between task draws. Nothing here builds a second-order graph or
differentiates through the queries: adaptation runs with
``create_graph=False`` and every query prediction runs under ``no_grad``.

Two paths give the same numbers:

* batched: with no calibrator (or a passthrough one such as ``none``),
  ``batch_tasks`` tasks at a time go through ``learner.adapt_and_predict``
  (a loop or a vmap inside the learner, whichever its options choose);
* per task: with a calibrator, each task is adapted with
  ``learner.test_adapt``, then the calibrator's ``predict_tasks`` gets the
  adapted states of the whole batch stacked on a leading task axis, so it
  can batch its own optimisation across tasks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from purer.data.episodes import TaskList
from purer.distributed import World
from purer.interfaces import Calibrator, MetaLearner
from purer.parallel import intra_op_threads
from purer.progress import progress
from purer.runtime import warn_if_slow_bf16
from purer.types import EpisodeBatch, SplitData

Mode = Literal["auto", "batched", "per_task"]
Precision = Literal["fp32", "bf16"]


class TaskSource(Protocol):
    """What :func:`evaluate` needs of a task list (``purer.data.episodes.TaskList``)."""

    def __len__(self) -> int: ...

    def batches(self, split: SplitData, device: torch.device | str,
                batch_size: int) -> Iterator[EpisodeBatch]: ...


@dataclass
class EvalResult:
    """Accuracy over a task list, in percent, with its 95 % interval."""

    accuracy: float  # mean query accuracy over tasks, %
    ci95: float  # 1.96 * std / sqrt(n), %
    accuracies: list[float] = field(repr=False)  # per task, %, in task-list order
    n_tasks: int = 0
    seconds: float = 0.0
    seconds_per_task: float = 0.0

    def to_dict(self, per_task: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not per_task:
            data.pop("accuracies")
        return data

    def __str__(self) -> str:
        return f"{self.accuracy:.2f} ± {self.ci95:.2f} % ({self.n_tasks} tasks, {self.seconds:.1f} s)"


def ci95(accuracies: Sequence[float] | Tensor) -> float:
    """Half-width of the 95 % interval of the mean: ``1.96 * std / sqrt(n)``.

    ``std`` is the population standard deviation (``numpy.std``'s default),
    as in the few-shot literature the paper compares with. Units follow the
    input (pass percentages to get percentages). One task gives 0.
    """
    values = torch.as_tensor(list(accuracies) if not isinstance(accuracies, Tensor) else accuracies,
                             dtype=torch.float64)
    n = values.numel()
    if n < 2:
        return 0.0
    return float(1.96 * values.std(unbiased=False) / math.sqrt(n))


def batch_logits(learner: MetaLearner, batch: EpisodeBatch, calibrator: Calibrator | None = None,
                 mode: Mode = "auto") -> Tensor:
    """Query logits ``[E, NQ, way]`` of one batch of tasks."""
    passthrough = calibrator is None or calibrator.passthrough
    if mode == "batched" and not passthrough:
        raise ValueError("evaluate: mode='batched' needs no calibrator (or a passthrough one)")
    if mode != "per_task" and passthrough:
        with torch.no_grad():
            return learner.adapt_and_predict(batch.support, batch.support_labels, batch.query)
    with intra_op_threads(calibrator.threads() if calibrator is not None else None):
        adapted = [learner.test_adapt(batch.support[t], batch.support_labels[t])
                   for t in range(batch.num_episodes)]
        with torch.no_grad():  # calibrators that optimise switch grad on themselves
            if calibrator is None:
                return torch.stack([learner.predict(adapted[t], batch.query[t])
                                    for t in range(batch.num_episodes)])
            stacked = {k: torch.stack([a[k] for a in adapted]) for k in adapted[0]}
            return calibrator.predict_tasks(learner, stacked, batch.support,
                                            batch.support_labels, batch.query)


def _to_channels_last(batch: EpisodeBatch) -> EpisodeBatch:
    def cl(x: Tensor) -> Tensor:
        flat = x.reshape(-1, *x.shape[-3:]).contiguous(memory_format=torch.channels_last)
        return flat.view(x.shape)  # a view: each image keeps its NHWC strides

    return EpisodeBatch(cl(batch.support), batch.support_labels, cl(batch.query),
                        batch.query_labels, batch.classes)


def evaluate(learner: MetaLearner, tasks: TaskSource, split: SplitData,
             device: torch.device | str, calibrator: Calibrator | None = None,
             batch_tasks: int = 50, *, mode: Mode = "auto", channels_last: bool = False,
             precision: Precision = "fp32", description: str = "meta-test",
             world: World | None = None) -> EvalResult:
    """Adapt to every task of ``tasks`` and score its queries.

    Args:
        learner: a set-up meta-learner (its model on ``device``).
        tasks: the seeded task list; every method should get the same one.
        split: the split the task list indexes into.
        device: where episodes are built and run.
        calibrator: ``None`` (or a passthrough one) for standard meta-testing,
            or e.g. ICFIL.
        batch_tasks: tasks built (and, on the batched path, adapted) at once.
        mode: ``auto`` picks the batched path when there is no calibrator;
            ``per_task`` forces one ``adapt`` per task (same numbers, slower).
        channels_last: NHWC images and weights. It changes no result beyond
            float rounding and was no faster for Conv4 on the CPUs measured
            (docs/results.md), so it is off by default. It converts
            ``learner.model`` in place.
        precision: ``bf16`` runs adaptation and prediction under bfloat16
            autocast (weights stay fp32): faster on CPUs with AMX/AVX512-BF16,
            at the cost of bf16 rounding in every result; many times slower
            on CPUs without them (it warns there). Compare methods only at
            one precision.
        description: label of the progress bar.
        world: in a run across processes, each rank scores a contiguous share
            of a :class:`~purer.data.episodes.TaskList` and the per-task
            accuracies are gathered in task order, so every rank returns the
            one-process result (the same mean and interval).
    """
    device = torch.device(device)
    if precision == "bf16":
        warn_if_slow_bf16("evaluate(precision)", device)
    if channels_last:
        learner.model.to(memory_format=torch.channels_last)
    accuracies: list[Tensor] = []
    start = time.perf_counter()
    world = world if world is not None else World()
    if world.distributed and isinstance(tasks, TaskList):
        first, stop = world.split(len(tasks))
        tasks = replace(tasks, indices=tasks.indices[first:stop], classes=tasks.classes[first:stop])
    else:
        world = World()  # every rank scores every task: nothing to gather
    total = len(tasks)
    with progress() as bar:
        tid = bar.add_task(description, total=total, status="")
        for batch in tasks.batches(split, device, batch_tasks):
            if channels_last:
                batch = _to_channels_last(batch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = batch_logits(learner, batch, calibrator, mode)
            correct = (logits.argmax(-1) == batch.query_labels).float().mean(-1) * 100.0
            accuracies.append(correct.cpu())
            done = torch.cat(accuracies)
            bar.update(tid, advance=batch.num_episodes, status=f"acc {done.mean():.2f}%")
    seconds = time.perf_counter() - start
    values = torch.cat(accuracies) if accuracies else torch.zeros(0)
    if world.distributed:
        values = torch.cat(world.gather_objects(values))
    n = int(values.numel())
    return EvalResult(accuracy=float(values.mean()) if n else float("nan"), ci95=ci95(values),
                      accuracies=[float(v) for v in values], n_tasks=n, seconds=seconds,
                      seconds_per_task=seconds / max(n, 1))
