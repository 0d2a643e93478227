"""Test helpers for purer and its plugins: a tiny teacher zoo built in seconds.

Plugin authors can test an inverter or a meta-learner against real (if
tiny) teachers without data, a GPU or minutes of training::

    from purer.testing import tiny_zoo  # noqa: F401  (a pytest fixture)

    def test_my_inverter(tiny_zoo):
        teachers = purer.zoo.load_teachers(tiny_zoo, "cpu")

Each helper in this module is self-contained; other fixtures may live beside
these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from purer.types import InputSpace, SplitData

# Tiny widths that keep the real topologies (and BN layers) of each backbone.
# Not 0.0625 for the ResNets: their 4 -> 8 channel strided 1x1 shortcut sends
# oneDNN's AVX2 weight-gradient kernel (jit_avx2_1x1_convolution_bwd_weights,
# torch 2.14.1, channels-last) into a hang or a segfault on AVX2-only CPUs
# (docs/zoo.md, "Known issues").
TINY_ARCH_KWARGS = {
    "conv4": {"width": 8},
    "cifar_resnet10": {"width": 0.125},
    "cifar_resnet18": {"width": 0.125},
}


def synthetic_split(num_classes: int = 64, per_class: int = 40, size: int = 32, seed: int = 0,
                    space: InputSpace | None = None, prefix: str = "class",
                    first_id: int = 0) -> SplitData:
    """A made-up, learnable split: each class is a colour and a stripe
    direction, plus noise. Tests use it as a second dataset of another size
    and normalisation (MH zoos) without touching the dataset plugins."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(num_classes, 3, 1, 1, generator=g)
    coords = torch.linspace(0, 6.28, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = []
    for c in range(num_classes):
        angle = 3.14159 * c / num_classes
        stripes = torch.sin(xx * torch.cos(torch.tensor(angle)) * 2 + yy * torch.sin(torch.tensor(angle)) * 2)
        base = colours[c] * (0.7 + 0.3 * stripes)  # [3, H, W]
        noise = 0.15 * torch.randn(per_class, 3, size, size, generator=g)
        images.append(((base + noise).clamp(0, 1) * 255).round().to(torch.uint8))
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    space = space or InputSpace(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return SplitData(torch.cat(images), labels, [f"{prefix}{c:03d}" for c in range(num_classes)],
                     space, class_ids=list(range(first_id, first_id + num_classes)))


TINY_IMAGES_PER_CLASS = 60


def tiny_meta_train(name: str, root: str | None = None) -> SplitData:
    """``name``'s meta_train split; synthetic-shapes with only
    :data:`TINY_IMAGES_PER_CLASS` images per class, so it generates in a
    fraction of a second."""
    from purer.data import load_split

    if name == "synthetic-shapes":
        return load_split(name, "meta_train", root, images_per_class=TINY_IMAGES_PER_CLASS)
    return load_split(name, "meta_train", root)


def build_tiny_zoo(out: str | Path, scenario: str = "ss", archs: Sequence[str] = ("conv4",),
                   teachers: int = 4, epochs: int = 1, data: str = "synthetic-shapes",
                   loader: Callable[[str, str | None], SplitData] | None = None,
                   **options: object) -> Path:
    """Build a zoo of tiny teachers into ``out`` (seconds on a CPU) and return it.

    ``loader`` maps (dataset, root) to a meta_train split (default:
    :func:`tiny_meta_train`). Extra keyword arguments are
    :class:`purer.config.ZooBuildOptions` fields (e.g. ``extra_data=[...]``
    for MH, ``seed=1``).
    """
    from purer.config import ZooBuildOptions
    from purer.zoo.build import build_zoo

    kwargs = {a: dict(TINY_ARCH_KWARGS[a]) for a in archs if a in TINY_ARCH_KWARGS}
    opts = ZooBuildOptions(scenario=scenario, teachers=teachers, arch=list(archs),
                           arch_kwargs=kwargs, epochs=epochs, batch_size=64, **options)
    # Tiny models gain nothing from intra-op threads, and on a busy machine
    # OpenMP threads that wait on each other make them many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_zoo(opts, data, None, Path(out), "cpu", loader=loader or tiny_meta_train)
    finally:
        torch.set_num_threads(threads)
    return Path(out)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 5-way Conv4 (width 8) teachers on synthetic-shapes, two epochs,
    built once per test session. Treat it as read-only."""
    return build_tiny_zoo(tmp_path_factory.mktemp("tiny_zoo") / "zoo", epochs=2)
