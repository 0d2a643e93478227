"""Few-shot tasks over a :class:`~purer.types.SplitData`: fixed lists and random batches.

A task is ``way`` classes of the split, and ``shot + query`` distinct images
of each. Sampling is vectorised over tasks (no per-task or per-image Python
loop) and draws only from ``torch.rand`` on a CPU generator, turned into
integers exactly, so one seed gives the same tasks on every machine. Evaluation uses a :class:`TaskList`, made
once and materialised in chunks on the device; training draws fresh tasks
with :func:`sample_tasks`.

Inside an episode images are class-major: support labels are
``arange(way).repeat_interleave(shot)``, query labels likewise with ``query``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from purer.errors import DataError
from purer.types import EpisodeBatch, InputSpace, SplitData

# Values normalised per CPU op when materialising (torch's grain size).
_SLICE = 32768


@dataclass
class TaskList:
    """``count`` tasks fixed by their parameters: reproducible evaluation sets.

    ``indices[t, w]`` holds the ``shot + query`` image indices (into the
    split's tensors) of the ``w``-th class of task ``t``: its first ``shot``
    are support images, the rest query images. ``classes[t, w]`` is that
    class's split-local label.
    """

    indices: Tensor  # int64 [T, way, shot + query]
    classes: Tensor  # int64 [T, way]
    way: int
    shot: int
    query: int
    seed: int
    dataset: str = ""
    split: str = ""

    @property
    def count(self) -> int:
        return int(self.indices.shape[0])

    def __len__(self) -> int:
        return self.count

    @property
    def params(self) -> dict[str, int | str]:
        """What fixes the list (for run records): same params, same tasks."""
        return {"dataset": self.dataset, "split": self.split, "way": self.way,
                "shot": self.shot, "query": self.query, "count": self.count, "seed": self.seed}

    def batches(self, split: SplitData, device: torch.device | str = "cpu",
                batch_size: int = 50) -> Iterator[EpisodeBatch]:
        """Episodes of ``batch_size`` tasks at a time, normalised, on ``device``.

        Chunks are made one at a time, so 600 tasks of 84x84 images need the
        memory of one chunk only. On CPU, small chunks also reuse freed memory
        instead of faulting in fresh pages.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        for start in range(0, self.count, batch_size):
            stop = min(start + batch_size, self.count)
            yield materialize(split, self.indices[start:stop], self.classes[start:stop],
                              self.shot, device)


def make_task_list(split: SplitData, way: int, shot: int, query: int, count: int, seed: int,
                   *, dataset: str = "", split_name: str = "") -> TaskList:
    """``count`` tasks drawn from ``split``; the same arguments give the same
    tasks on any machine (CPU generator seeded with ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    where = "/".join(p for p in (dataset, split_name) if p)
    indices, classes = _draw(split, way, shot, query, count, g, where)
    return TaskList(indices, classes, way, shot, query, seed, dataset, split_name)


def sample_tasks(split: SplitData, way: int, shot: int, query: int, count: int,
                 generator: torch.Generator, device: torch.device | str = "cpu") -> EpisodeBatch:
    """``count`` fresh random tasks as one batch (for training on real data).

    ``generator`` must be a CPU generator; it advances, so successive calls
    give new tasks and a saved generator state resumes the sequence.
    """
    indices, classes = _draw(split, way, shot, query, count, generator, "")
    return materialize(split, indices, classes, shot, device)


# ---------------------------------------------------------------------- sampling
def _draw(split: SplitData, way: int, shot: int, query: int, count: int,
          g: torch.Generator, where: str) -> tuple[Tensor, Tensor]:
    """(indices [T, way, shot + query], classes [T, way]) for ``count`` tasks."""
    _check_args(split, way, shot, query, count, where)
    order, starts, sizes = class_table(split)
    need = shot + query
    short = torch.nonzero(sizes < need).flatten()
    if short.numel():
        c = int(short[0])
        raise DataError(f"{where or 'split'}: class {split.class_names[c]!r} has "
                        f"{int(sizes[c])} images, fewer than shot+query={need}")
    classes = random_subsets(torch.full((count,), split.num_classes), way, g)
    positions = random_subsets(sizes[classes].reshape(-1), need, g).view(count, way, need)
    return order[starts[classes].unsqueeze(-1) + positions], classes


def random_subsets(n: Tensor, m: int, g: torch.Generator) -> Tensor:
    """Row ``r``: ``m`` distinct integers of ``range(n[r])`` in uniformly random
    order, for all rows at once ([R] -> int64 [R, m]).

    Floyd's subset algorithm, then a Fisher-Yates shuffle of the ``m`` slots:
    the cost grows with ``m`` (about m^2/2 ops on R values), never with
    ``n``, no sort is needed, and every op is small, so nothing waits on
    threads. Only integer arithmetic on 24-bit uniforms: exact on every
    machine.
    """
    rows = n.numel()
    out = torch.empty(rows, m, dtype=torch.int64)
    for k in range(m):
        top = n - m + k  # Floyd: pick in [0, top]; if already taken, take top
        pick = _below(top + 1, g)
        taken = torch.zeros(rows, dtype=torch.bool)
        for earlier in range(k):
            taken |= out[:, earlier] == pick
        out[:, k] = torch.where(taken, top, pick)
    for i in range(m - 1, 0, -1):
        j = _below(torch.full((rows,), i + 1), g).unsqueeze(1)
        here = out[:, i].clone()
        out[:, i] = out.gather(1, j).squeeze(1)
        out.scatter_(1, j, here.unsqueeze(1))
    return out


def _below(bound: Tensor, g: torch.Generator) -> Tensor:
    """Uniform integers in [0, bound) from 24 random bits each (bound < 2^24)."""
    bits = (torch.rand(bound.numel(), generator=g) * 16777216.0).long()  # exact
    return bound * bits >> 24


def _check_args(split: SplitData, way: int, shot: int, query: int, count: int,
                where: str) -> None:
    if way < 1 or shot < 1 or query < 0 or count < 0:
        raise ValueError(f"need way >= 1, shot >= 1, query >= 0, count >= 0; got way={way}, "
                         f"shot={shot}, query={query}, count={count}")
    if way > split.num_classes:
        raise DataError(f"{where or 'split'}: {way}-way tasks need {way} classes, the split "
                        f"has {split.num_classes}")


def class_table(split: SplitData) -> tuple[Tensor, Tensor, Tensor]:
    """(order, starts, sizes): class ``c``'s images are
    ``order[starts[c] : starts[c] + sizes[c]]``. ``order`` is the identity
    for grouped splits (what the readers produce) and a stable sort otherwise."""
    labels = split.labels.long()
    sizes = torch.bincount(labels, minlength=split.num_classes)
    starts = torch.cumsum(sizes, 0) - sizes
    if labels.numel() > 1 and bool((labels[1:] < labels[:-1]).any()):
        order = labels.argsort(stable=True)
    else:
        order = torch.arange(labels.numel())
    return order, starts, sizes


# ---------------------------------------------------------------------- materialising
def materialize(split: SplitData, indices: Tensor, classes: Tensor, shot: int,
                device: torch.device | str = "cpu") -> EpisodeBatch:
    """Gather and normalise the images of tasks ``indices`` [E, way, shot + query].

    Images travel as uint8 (4x less to copy) and are normalised on ``device``.
    """
    device = torch.device(device)
    n_tasks, way, need = indices.shape
    query = need - shot
    support = _images(split, indices[:, :, :shot], device)
    query_images = _images(split, indices[:, :, shot:], device)
    labels = torch.arange(way, device=device)
    ids = classes if split.class_ids is None else \
        torch.as_tensor(split.class_ids, dtype=torch.int64)[classes]
    return EpisodeBatch(
        support=support,
        support_labels=labels.repeat_interleave(shot).repeat(n_tasks, 1),
        query=query_images,
        query_labels=labels.repeat_interleave(query).repeat(n_tasks, 1),
        classes=ids.to(device),
    )


def _images(split: SplitData, indices: Tensor, device: torch.device) -> Tensor:
    """uint8 gather -> float normalised [E, way * k, 3, H, W] on ``device``.

    Same arithmetic as ``split.space.normalize`` ((x / 255 - mean) / std), so
    the numbers are identical. On CPU it runs over slices of at most
    :data:`_SLICE` values: the passes then stay in cache, and each op stays
    below torch's parallel grain size, which avoids thread hand-offs that cost
    10x on a busy machine.
    """
    n_tasks = indices.shape[0]
    flat = indices.reshape(-1)
    space = split.space
    mean = torch.tensor(space.mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.tensor(space.std, dtype=torch.float32, device=device).view(-1, 1, 1)
    source = split.images.device
    if device.type != "cpu" or source.type != "cpu":
        pixels = split.images.index_select(0, flat.to(source))
        x = pixels.to(device, non_blocking=True).float()
        return x.div_(255.0).sub_(mean).div_(std).view(n_tasks, -1, *x.shape[1:])
    out = torch.empty(flat.numel(), *split.images.shape[1:], dtype=torch.float32)
    step = max(1, _SLICE // max(1, math.prod(split.images.shape[1:])))
    for lo in range(0, flat.numel(), step):
        part = out[lo:lo + step]
        part.copy_(split.images.index_select(0, flat[lo:lo + step]))
        part.div_(255.0).sub_(mean).div_(std)
    return out.view(n_tasks, -1, *out.shape[1:])


def to_space(split: SplitData, space: InputSpace) -> SplitData:
    """``split`` with its images resized into ``space`` (and normalised by it).

    Tasks of another dataset (MH's pooled meta-test) must reach the
    meta-model in the meta-model's input space. Images stay uint8: resizing
    happens once here, bilinearly (antialiased when shrinking), in chunks,
    so the split stays as compact as the readers make it.
    """
    if split.space == space:
        return split
    if split.space.size == space.size:
        return SplitData(split.images, split.labels, split.class_names, space, split.class_ids)
    out = torch.empty(len(split), 3, space.size, space.size, dtype=torch.uint8)
    step = 512
    for lo in range(0, len(split), step):
        part = split.images[lo:lo + step].float()
        resized = torch.nn.functional.interpolate(part, size=(space.size, space.size), mode="bilinear",
                                                  align_corners=False, antialias=space.size < split.space.size)
        out[lo:lo + step] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return SplitData(out, split.labels, split.class_names, space, split.class_ids)
