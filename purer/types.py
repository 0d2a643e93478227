"""Plain data passed between components: tensors with names, nothing clever.

These types are the vocabulary of the interfaces in :mod:`purer.interfaces`;
they carry no behaviour beyond shape bookkeeping and the differentiable move
between two input spaces (resize + renormalise), which SH/MH zoos need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class InputSpace:
    """Square RGB input of ``size`` pixels, normalised with ``mean``/``std``."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std beside ``like``, made on its device by fills
        (no copy from host memory, which a CUDA graph capture would refuse)."""
        mean = torch.stack([like.new_full((), m) for m in self.mean]).view(-1, 1, 1)
        std = torch.stack([like.new_full((), s) for s in self.std]).view(-1, 1, 1)
        return mean, std

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (..., 3, H, W) in [0, 255] -> float normalised tensor."""
        mean, std = self._stats(images.float())
        return (images.float() / 255.0 - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Normalised tensor -> pixel values in [0, 1] (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def convert(self, x: Tensor, target: InputSpace) -> Tensor:
        """Map normalised images of this space into ``target``, differentiably."""
        if self == target:
            return x
        pixels = self.denormalize(x)
        if self.size != target.size:
            lead = pixels.shape[:-3]
            flat = pixels.reshape(-1, *pixels.shape[-3:])
            flat = F.interpolate(flat, size=(target.size, target.size), mode="bilinear",
                                 align_corners=False, antialias=target.size < self.size)
            pixels = flat.reshape(*lead, *flat.shape[-3:])
        mean, std = target._stats(pixels)
        return (pixels - mean) / std


@dataclass
class SplitData:
    """One split of a dataset, compact: uint8 NCHW images grouped by label."""

    images: Tensor  # uint8 [N, 3, H, W]
    labels: Tensor  # int64 [N], 0..K-1 inside the split
    class_names: list[str]
    space: InputSpace
    class_ids: list[int] | None = None  # dataset-global class ids, when known

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass
class EpisodeBatch:
    """E episodes of N-way K-shot Q-query, stacked; labels run 0..N-1."""

    support: Tensor  # [E, N*K, C, H, W], normalised
    support_labels: Tensor  # [E, N*K]
    query: Tensor  # [E, N*Q, C, H, W]
    query_labels: Tensor  # [E, N*Q]
    classes: Tensor | None = None  # [E, N] original class ids

    @property
    def num_episodes(self) -> int:
        return int(self.support.shape[0])

    @property
    def way(self) -> int:
        return int(self.support_labels.max().item()) + 1

    def to(self, device: torch.device | str) -> EpisodeBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return EpisodeBatch(move(self.support), move(self.support_labels), move(self.query),
                            move(self.query_labels), move(self.classes))


@dataclass
class Teacher:
    """A frozen pre-trained classifier, resident on the device, ready to invert."""

    name: str
    model: nn.Module
    class_ids: list[int]  # global class ids of its outputs, in output order
    class_names: list[str]
    space: InputSpace
    arch: str = ""
    dataset: str = ""
    bn_layers: list[nn.Module] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def has_bn(self) -> bool:
        return bool(self.bn_layers)


@dataclass
class ClassBank:
    """Pseudo images per (teacher, class) entry, all in one input space.

    ``images[g]`` holds the ``n`` images of entry ``g``; ``class_ids[g]`` its
    global class, so episodes never put one real class in two slots.
    """

    images: Tensor  # [G, n, C, H, W]
    class_ids: Tensor  # [G]


@dataclass
class OuterMetrics:
    """What one outer step reports back: detached numbers, or 0-d tensors
    that the engine reads together after the step (one device sync)."""

    loss: float | Tensor
    accuracy: float | Tensor
    extras: dict[str, float | Tensor] = field(default_factory=dict)


def find_bn_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm-like layers, found by their running-statistics buffers.

    timm has BN variants that are not ``nn.BatchNorm2d`` (e.g. BatchNormAct2d),
    so the class is not a reliable test.
    """
    return [m for m in model.modules()
            if isinstance(getattr(m, "running_mean", None), Tensor)
            and isinstance(getattr(m, "running_var", None), Tensor)]


def stack_bank(banks: Sequence[ClassBank]) -> ClassBank:
    return ClassBank(torch.cat([b.images for b in banks]), torch.cat([b.class_ids for b in banks]))
