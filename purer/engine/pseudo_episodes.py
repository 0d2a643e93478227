"""Pseudo episodes from the memory: N-way K-shot Q-query, no Python loop per image.

An episode draws ``way`` distinct *global* classes from all teachers' classes
(so one episode mixes teachers), and for each class one of the teachers that
hold it (several may, with randomly assigned overlapping zoos). Its
``shot + query`` memory images are split at random into support and query,
and labels are renumbered 0..way-1. Indexing keeps the autograd graph, so an
episode built from an undetached bank sends gradients back into the memory.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class EpisodeDraw:
    """The random part of a batch of pseudo episodes, as index tensors.

    Drawn on the CPU from the run's generator, apart from the gather that
    builds the images, so that a CUDA-graphed step can copy a new draw into
    fixed device buffers before each replay.
    """

    entries: Tensor  # [E, way] bank entry (teacher class) per episode class
    order: Tensor  # [E, way, shot + query] memory slots, support first
    classes: Tensor  # [E, way] global class ids

    def tensors(self) -> dict[str, Tensor]:
        return {"entries": self.entries, "order": self.order, "classes": self.classes}

    def to(self, device: torch.device) -> EpisodeDraw:
        return EpisodeDraw.from_tensors({k: v.to(device) for k, v in self.tensors().items()})

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> EpisodeDraw:
        return cls(tensors["entries"], tensors["order"], tensors["classes"])


def draw_episodes(owners: OwnerTable, way: int, shot: int, query: int, count: int, per_class: int,
                  generator: torch.Generator) -> EpisodeDraw:
    """Which classes, owners and memory slots ``count`` episodes use (CPU tensors)."""
    if len(owners) < way:
        raise ConfigError(f"train.way: {way}-way episodes need {way} classes, the zoo has {len(owners)}")
    if per_class < shot + query:
        raise ConfigError(f"train: memory holds {per_class} images per class, episodes need "
                          f"shot + query = {shot + query}")
    chosen = torch.rand(count, len(owners), generator=generator).argsort(dim=1)[:, :way]
    entries = owners.draw_entries(chosen, generator)
    order = torch.rand(count, way, per_class, generator=generator).argsort(dim=2)[..., :shot + query]
    return EpisodeDraw(entries, order, owners.classes[chosen])


def build_episodes(bank: ClassBank, draw: EpisodeDraw, shot: int) -> EpisodeBatch:
    """Gather the drawn images (``draw`` on the bank's device). No host sync,
    so it can run inside a CUDA graph capture."""
    count, way = draw.entries.shape
    images = bank.images[draw.entries[..., None], draw.order]  # [E, way, s+q, C, H, W]
    query = draw.order.shape[-1] - shot
    c, h, w = images.shape[-3:]
    device = images.device
    return EpisodeBatch(
        support=images[:, :, :shot].reshape(count, way * shot, c, h, w),
        support_labels=(torch.arange(way * shot, device=device) // shot).expand(count, -1),
        query=images[:, :, shot:].reshape(count, way * query, c, h, w),
        query_labels=(torch.arange(way * query, device=device) // query).expand(count, -1),
        classes=draw.classes,
    )


def sample_pseudo_episodes(bank: ClassBank, owners: OwnerTable, way: int, shot: int, query: int,
                           count: int, generator: torch.Generator) -> EpisodeBatch:
    """``count`` episodes from ``bank`` (see module docstring)."""
    draw = draw_episodes(owners, way, shot, query, count, bank.images.shape[1], generator)
    return build_episodes(bank, draw.to(bank.images.device), shot)
