"""Pseudo episodes from the memory: N-way K-shot Q-query, no Python loop per image.

An episode draws ``way`` distinct *global* classes from all teachers' classes
(so one episode mixes teachers), and for each class one of the teachers that
hold it (several may, with randomly assigned overlapping zoos). Its
``shot + query`` memory images are split at random into support and query,
and labels are renumbered 0..way-1. Indexing keeps the autograd graph, so an
episode built from an undetached bank sends gradients back into the memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from purer.errors import ConfigError
from purer.types import ClassBank, EpisodeBatch


class OwnerTable:
    """For each distinct global class, the bank entries that hold it."""

    def __init__(self, class_ids: Tensor) -> None:
        ids = class_ids.cpu()
        self.classes, inverse = torch.unique(ids, return_inverse=True)
        counts = torch.bincount(inverse, minlength=len(self.classes))
        self.counts = counts
        table = torch.full((len(self.classes), int(counts.max())), -1, dtype=torch.long)
        fill = torch.zeros(len(self.classes), dtype=torch.long)
        for entry, cls in enumerate(inverse.tolist()):
            table[cls, fill[cls]] = entry
            fill[cls] += 1
        self.table = table

    def __len__(self) -> int:
        return len(self.classes)

    def draw_entries(self, chosen: Tensor, generator: torch.Generator) -> Tensor:
        """One owning entry per chosen class index ([E, way] -> [E, way])."""
        u = torch.rand(chosen.shape, generator=generator)
        slot = (u * self.counts[chosen]).long()
        return self.table[chosen, slot]


def sample_pseudo_episodes(bank: ClassBank, owners: OwnerTable, way: int, shot: int, query: int,
                           count: int, generator: torch.Generator) -> EpisodeBatch:
    """``count`` episodes from ``bank`` (see module docstring)."""
    entries_total, per_class = bank.images.shape[:2]
    if len(owners) < way:
        raise ConfigError(f"train.way: {way}-way episodes need {way} classes, the zoo has {len(owners)}")
    if per_class < shot + query:
        raise ConfigError(f"train: memory holds {per_class} images per class, episodes need "
                          f"shot + query = {shot + query}")
    chosen = torch.rand(count, len(owners), generator=generator).argsort(dim=1)[:, :way]
    entries = owners.draw_entries(chosen, generator)
    order = torch.rand(count, way, per_class, generator=generator).argsort(dim=2)[..., :shot + query]
    device = bank.images.device
    images = bank.images[entries.to(device)[..., None], order.to(device)]  # [E, way, s+q, C, H, W]
    c, h, w = images.shape[-3:]
    support = images[:, :, :shot].reshape(count, way * shot, c, h, w)
    query_images = images[:, :, shot:].reshape(count, way * query, c, h, w)
    labels = torch.arange(way, device=device)
    return EpisodeBatch(
        support=support,
        support_labels=labels.repeat_interleave(shot).expand(count, -1),
        query=query_images,
        query_labels=labels.repeat_interleave(query).expand(count, -1),
        classes=owners.classes[chosen].to(device),
    )
