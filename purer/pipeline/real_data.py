"""The real-data upper bound: the run's own meta-learner trained on real data.

The paper's MAML-dagger asks what ECI's pseudo data is worth: the same
meta-learner, meta-trained on *real* meta-train images instead, but only as
many per class as the memory holds (``shot + query``: 16 for 1-shot, 20 for
5-shot). It breaks the data-free premise on purpose, so it is a baseline,
never a default. It is one mechanism for every registered learner: the run's
``[meta]`` section, the run's number of outer steps and episode batch, a
fresh meta-model; only the episodes differ. The images are picked once per
class with the seed; every outer step samples its episodes from them.
"""

from __future__ import annotations

import torch

from purer.config import RunConfig
from purer.data import read_split
from purer.data.episodes import class_table, sample_tasks
from purer.interfaces import MetaLearner
from purer.pipeline.build import build_meta_learner, build_meta_model
from purer.progress import progress
from purer.types import SplitData

# The name under which ``eval.baselines`` asks for it.
REAL_DATA = "real"


def limit_per_class(split: SplitData, per_class: int, generator: torch.Generator) -> SplitData:
    """The same split with ``per_class`` randomly chosen images of each class."""
    order, starts, sizes = class_table(split)
    if int(sizes.min()) < per_class:
        raise ValueError(f"eval.real_images_per_class: a class has {int(sizes.min())} images, "
                         f"fewer than {per_class}")
    keys = torch.rand(split.num_classes, int(sizes.max()), generator=generator)
    keys.masked_fill_(torch.arange(keys.shape[1]) >= sizes[:, None], 2.0)
    picks = order[starts[:, None] + keys.argsort(dim=1, stable=True)[:, :per_class]].flatten()
    return SplitData(split.images[picks], split.labels[picks], list(split.class_names),
                     split.space, split.class_ids)


def train_on_real_data(config: RunConfig, way: int, shot: int, device: torch.device) -> MetaLearner:
    """A fresh meta-model meta-trained on real ``way``-way ``shot``-shot
    episodes of the run's meta-train split, with the run's learner and budget."""
    train, e = config.train, config.eval
    query = train.query
    per_class = e.real_images_per_class or shot + query
    if shot + query > per_class:
        raise ValueError(f"eval.real_images_per_class={per_class} cannot hold {shot} shots + "
                         f"{query} queries")
    steps = train.steps if e.real_steps is None else e.real_steps
    generator = torch.Generator().manual_seed(config.seed)
    split = limit_per_class(read_split(config.data, "meta_train"), per_class, generator)
    torch.manual_seed(config.seed)
    learner = build_meta_learner(config.meta, build_meta_model(train, way), device)
    with progress() as bar:
        task = bar.add_task(f"{REAL_DATA} {way}w{shot}s", total=steps, status="")
        for _ in range(steps):
            episodes = sample_tasks(split, way, shot, query, train.episode_batch, generator, device)
            metrics = learner.meta_step(episodes)
            bar.update(task, advance=1, status=f"acc {float(metrics.accuracy) * 100:.1f}%")
    return learner
