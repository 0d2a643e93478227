"""The Random and Average initialisers (paper Table 1's first two baselines).

``random`` is the paper's Random baseline and the default start of ECI;
``average`` is the Average baseline (and the reference scripts' start of ECI):
the element-wise mean of same-architecture teachers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from purer.api import Initializer, Teacher, architecture_of, head_state_keys


class RandomInit(Initializer):
    """A fresh draw of every layer's default initialisation (seeded by the caller)."""

    needs_teachers = False

    def initialize(self, model: nn.Module, teachers: Sequence[Teacher]) -> None:
        for module in model.modules():
            if hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()


def same_architecture_states(model: nn.Module, teachers: Sequence[Teacher],
                             method: str) -> list[dict[str, torch.Tensor]]:
    """Teachers' state dicts, after checking they all share the meta-model's
    architecture; the one-line error says which architectures were found."""
    mine = architecture_of(model)
    archs = sorted({t.arch for t in teachers})
    if archs != [mine]:
        raise ValueError(f"init.{method}: needs every teacher to share the meta-model's "
                         f"architecture ({mine}); the zoo has {', '.join(archs) or 'no teachers'}")
    return [t.model.state_dict() for t in teachers]


class AverageInit(Initializer):
    """Element-wise mean of the teachers' parameters and BN statistics.

    Heads whose class count differs from the meta-model's (e.g. the 4-class
    last block of CIFAR-FS) are left out of the mean of the head.
    """

    def initialize(self, model: nn.Module, teachers: Sequence[Teacher]) -> None:
        load_mean(model, same_architecture_states(model, teachers, "average"), "average")


def load_mean(model: nn.Module, states: Sequence[dict[str, torch.Tensor]], method: str) -> None:
    """Element-wise mean of ``states`` into ``model``; heads of another class
    count are left out, and the head keeps its init when none fits."""
    merged, head = model.state_dict(), head_state_keys(model)
    with torch.no_grad():
        for key, value in merged.items():
            found = [s[key] for s in states if key in s and s[key].shape == value.shape]
            if not found and key not in head:
                raise ValueError(f"init.{method}: no teacher has '{key}' with the meta-model's "
                                 f"shape {tuple(value.shape)} (different architecture options?)")
            if found and value.is_floating_point():
                merged[key] = torch.stack([f.to(value.device, value.dtype) for f in found]).mean(0)
    model.load_state_dict(merged)

