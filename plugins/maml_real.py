"""MAML-dagger baseline: MAML on *real* meta-train data, as little as the memory holds.

The paper's reference point for what ECI's pseudo data is worth: the same
meta-learner trained on real meta-train images, but only ``images_per_class``
of them per class (16 for 1-shot, 20 for 5-shot: ``shot + query``, the size
of ECI's memory). It breaks the data-free premise on purpose, so it is a
baseline, never a default. The images are picked once per class with the
seed; every outer step samples ``episode_batch`` episodes from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from purer.data import load_split
from purer.data.episodes import class_table, sample_tasks
from purer.interfaces import Initializer, Options
from purer.progress import progress
from purer.types import SplitData, Teacher


class MAMLRealOptions(Options):
    data: str = Field("synthetic-shapes", description="dataset plugin of the real meta-train data")
    root: str | None = Field(None, description="its root folder")
    images_per_class: int = Field(16, ge=2, description="real images kept per class (the memory's size)")
    steps: int = Field(2000, ge=0, description="outer steps")
    way: int = Field(5, ge=2)
    shot: int = Field(1, ge=1)
    query: int | None = Field(None, ge=1, description="default: images_per_class - shot")
    episode_batch: int = Field(4, ge=1)
    meta: dict[str, Any] = Field(default_factory=dict, description="options of the maml meta-learner")
    seed: int = 0

    @model_validator(mode="after")
    def _fits(self) -> MAMLRealOptions:
        query = self.images_per_class - self.shot if self.query is None else self.query
        if query < 1 or self.shot + query > self.images_per_class:
            raise ValueError(f"shot + query = {self.shot} + {query} must fit in "
                             f"images_per_class = {self.images_per_class}")
        return self


def limit_per_class(split: SplitData, per_class: int, generator: torch.Generator) -> SplitData:
    """The same split with ``per_class`` randomly chosen images of each class."""
    order, starts, sizes = class_table(split)
    if int(sizes.min()) < per_class:
        raise ValueError(f"init.maml-real: a class has {int(sizes.min())} images, fewer than "
                         f"images_per_class={per_class}")
    keys = torch.rand(split.num_classes, int(sizes.max()), generator=generator)
    keys.masked_fill_(torch.arange(keys.shape[1]) >= sizes[:, None], 2.0)
    picks = order[starts[:, None] + keys.argsort(dim=1, stable=True)[:, :per_class]].flatten()
    return SplitData(split.images[picks], split.labels[picks], list(split.class_names),
                     split.space, split.class_ids)


class MAMLRealInit(Initializer):
    """Meta-train ``model`` in place with MAML on a memory-sized slice of real data."""

    Options = MAMLRealOptions

    def initialize(self, model: nn.Module, teachers: Sequence[Teacher]) -> None:
        from purer_plugins.maml import MAML

        o = self.options
        query = o.images_per_class - o.shot if o.query is None else o.query
        generator = torch.Generator().manual_seed(o.seed)
        split = limit_per_class(load_split(o.data, "meta_train", o.root), o.images_per_class,
                                generator)
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        if isinstance(head, nn.Linear) and head.out_features != o.way:
            raise ValueError(f"init.maml-real: way={o.way} but the meta-model has "
                             f"{head.out_features} outputs")
        device = next(model.parameters()).device
        learner = MAML(MAML.Options(**o.meta))
        learner.setup(model, device)
        with progress() as bar:
            tid = bar.add_task("maml-real", total=o.steps, status="")
            for _ in range(o.steps):
                episodes = sample_tasks(split, o.way, o.shot, query, o.episode_batch,
                                        generator, device)
                metrics = learner.meta_step(episodes)
                bar.update(tid, advance=1, status=f"acc {metrics.accuracy * 100:.1f}%")
