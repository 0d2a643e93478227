"""Who learns what: the teachers of a zoo, decided before any training.

The plan is a pure function of the build options and the datasets' class
lists, and teacher ``i`` depends only on the options and teachers ``0..i-1``
(each teacher draws from its own seeded generator). So a zoo built with 2
teachers is exactly the first 2 teachers of the same zoo built with 4, which
is what lets an interrupted or extended build resume instead of retraining.

Class order is the sorted class names of meta_train (method.md §1), never the
filesystem's order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from purer.config import ZooBuildOptions
from purer.errors import ConfigError

# SH / MH draw each teacher's architecture from these unless --arch is given.
DEFAULT_MIXED_ARCHS = ("conv4", "cifar_resnet10", "cifar_resnet18")


@dataclass(frozen=True)
class TeacherPlan:
    index: int
    name: str
    dataset: str
    arch: str
    class_names: tuple[str, ...]  # output order of the teacher's head
    seed: int  # model init, data split and batch order of this teacher


def teacher_name(index: int) -> str:
    return f"t{index:03d}"


def teacher_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def resolve_archs(options: ZooBuildOptions) -> list[str]:
    """The architecture list, with the SH/MH default when --arch was not given."""
    if options.scenario != "ss" and "arch" not in options.model_fields_set:
        return list(DEFAULT_MIXED_ARCHS)
    archs = list(dict.fromkeys(options.arch))
    if not archs:
        raise ConfigError("zoo.build.arch: give at least one architecture")
    if options.scenario == "ss" and len(archs) > 1:
        raise ConfigError(f"zoo.build.arch: scenario ss uses one architecture, got {archs}; "
                          "use --scenario sh to mix architectures")
    return archs


def arch_kwargs_for(arch: str, arch_kwargs: Mapping[str, Any], archs: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments of one architecture.

    ``arch_kwargs`` is either flat (``{"width": 8}``: every architecture gets
    it) or keyed by architecture (``{"conv4": {"width": 8}, "test_vit":
    {"img_size": 32}}``), or a mix of both; a key naming an architecture
    (of the list or any known one) with a dict value applies to that
    architecture only, so one JSON can serve zoos of different mixes.
    """
    from purer.models import is_known

    per_arch = {k for k, v in arch_kwargs.items()
                if isinstance(v, dict) and (k in archs or is_known(k))}
    common = {k: v for k, v in arch_kwargs.items() if k not in per_arch}
    return {**common, **(arch_kwargs.get(arch, {}) if arch in per_arch else {})}


def make_plan(options: ZooBuildOptions, classes: Mapping[str, Sequence[str]],
              primary: str) -> list[TeacherPlan]:
    """The teachers to train.

    Args:
        options: the build options (scenario, teachers, way, assign, seed).
        classes: class names of each dataset's meta_train split; for SS/SH
            only ``primary`` is used, for MH every dataset is drawn from.
        primary: the --data dataset.
    """
    archs = resolve_archs(options)
    names = list(classes) if options.scenario == "mh" else [primary]
    ordered = {d: sorted(classes[d]) for d in names}
    for d, cls in ordered.items():
        if len(cls) < options.way:
            raise ConfigError(f"zoo.build.way: {options.way}-way teachers need at least "
                              f"{options.way} classes, dataset '{d}' has {len(cls)}")
    blocks = {d: [tuple(cls[i:i + options.way]) for i in range(0, len(cls), options.way)]
              for d, cls in ordered.items()}
    used = {d: 0 for d in names}
    count = options.teachers
    if options.assign == "disjoint":
        count = min(count, sum(len(b) for b in blocks.values()))
    plans: list[TeacherPlan] = []
    for i in range(count):
        seed = teacher_seed(options.seed, i)
        rng = np.random.default_rng(seed)
        arch = archs[0] if options.scenario == "ss" else archs[int(rng.integers(len(archs)))]
        if options.assign == "disjoint":
            left = [d for d in names if used[d] < len(blocks[d])]
            dataset = left[int(rng.integers(len(left)))] if len(left) > 1 else left[0]
            chosen = blocks[dataset][used[dataset]]
            used[dataset] += 1
        else:
            dataset = names[int(rng.integers(len(names)))] if len(names) > 1 else names[0]
            pick = np.sort(rng.choice(len(ordered[dataset]), options.way, replace=False))
            chosen = tuple(ordered[dataset][j] for j in pick)
        plans.append(TeacherPlan(i, teacher_name(i), dataset, arch, chosen, seed))
    return plans
