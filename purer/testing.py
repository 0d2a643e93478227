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
from torch import nn

from purer.interfaces import Inverter
from purer.inversion import InversionLoss
from purer.parallel import intra_op_threads
from purer.types import ClassBank, EpisodeBatch, InputSpace, SplitData, Teacher, find_bn_layers

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



def run_purer(*args: object) -> int:
    """``purer ARGS`` in this process through the real entry point, error
    handling included, so a test sees the exit status and the one-line error a
    user would see (read it from ``capsys``)."""
    from purer.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    return 0

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


# The built-in dataset with only 60 images per class: generated in a fraction of a second.
TINY_DATA = "synthetic-shapes"
TINY_DATA_OPTIONS = {"images_per_class": 60}


def tiny_meta_train(name: str, root: str | None = None) -> SplitData:
    """``name``'s meta_train split; the tiny built-in dataset
    (:data:`TINY_DATA_OPTIONS`) for :data:`TINY_DATA`."""
    from purer.data import load_split

    options = TINY_DATA_OPTIONS if name == TINY_DATA else {}
    return load_split(name, "meta_train", root, **options)


TINY_SPACE = InputSpace(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def tiny_teacher(seed: int, class_ids: Sequence[int], bn: bool = True,
                 space: InputSpace = TINY_SPACE) -> Teacher:
    """A frozen one-conv teacher (with a BatchNorm of non-trivial running
    statistics unless ``bn=False``) over ``space``: enough to exercise an
    inverter or an inversion term in milliseconds."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 6, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(6))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, len(class_ids))]
    model = nn.Sequential(*layers)
    if bn:  # as after training
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.eval().requires_grad_(False)
    return Teacher(f"t{seed}", model, list(class_ids), [str(c) for c in class_ids], space,
                   arch="tiny", bn_layers=find_bn_layers(model))


def inversion_loss(terms: dict[str, float] | None = None,
                   term_options: dict[str, dict] | None = None) -> InversionLoss:
    """The inversion loss a run builds from ``[inversion]`` (default: the
    paper's terms and weights), from the installed inversion terms."""
    from purer.config import InversionSection
    from purer.pipeline.build import build_inversion

    section = InversionSection(**({} if terms is None else {"terms": terms}),
                               term_options=term_options or {})
    return build_inversion(section)


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

    # the caller's arch_kwargs (flat or per architecture) replace the tiny widths
    kwargs = options.pop("arch_kwargs", None) or {
        a: dict(TINY_ARCH_KWARGS[a]) for a in archs if a in TINY_ARCH_KWARGS}
    opts = ZooBuildOptions(scenario=scenario, teachers=teachers, arch=list(archs),
                           arch_kwargs=kwargs, epochs=epochs, batch_size=64, **options)
    # Tiny models gain nothing from intra-op threads, and on a busy machine
    # OpenMP threads that wait on each other make them many times slower.
    with intra_op_threads(1):
        build_zoo(opts, data, None, Path(out), "cpu", loader=loader or tiny_meta_train)
    return Path(out)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 5-way Conv4 (width 8) teachers on synthetic-shapes, two epochs,
    built once per test session. Treat it as read-only."""
    return build_tiny_zoo(tmp_path_factory.mktemp("tiny_zoo") / "zoo", epochs=2)


def setup_inverter(name: str, teachers: Sequence[Teacher], per_class: int = 4, seed: int = 0,
                   inversion: InversionLoss | None = None, **options: object) -> Inverter:
    """Inverter plugin ``name`` with ``options``, set up on ``teachers`` on the
    CPU as a run would set it up (default inversion loss: :func:`inversion_loss`)."""
    from purer.plugins import get_host

    inverter = get_host().create("inverter", name, dict(options))
    inverter.setup(list(teachers), per_class, torch.device("cpu"), torch.Generator().manual_seed(seed),
                   inversion if inversion is not None else inversion_loss())
    return inverter


def random_episodes(count: int = 3, way: int = 5, shot: int = 2, query: int = 3, size: int = 16,
                    dtype: torch.dtype = torch.double, seed: int = 1) -> EpisodeBatch:
    """Episodes of noise images that require grad (``float64`` by default, for
    exact gradient comparisons): enough to exercise a meta-learner's inner and
    outer loops, the gradient into the images included."""
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(count, way * shot, 3, size, size, generator=g, dtype=dtype, requires_grad=True)
    query_images = torch.randn(count, way * query, 3, size, size, generator=g, dtype=dtype,
                               requires_grad=True)
    labels = torch.arange(way)
    return EpisodeBatch(support, labels.repeat_interleave(shot).expand(count, -1), query_images,
                        labels.repeat_interleave(query).expand(count, -1))


class FrozenNoise(Inverter):
    """The smallest complete inverter: N(0, 1) images that never move. Written
    against the plain contract (no ``draw``, no ``prepare_cuda_graph``), it
    tests that the engine needs nothing more, and is an ablation of inversion."""

    def setup(self, teachers: Sequence[Teacher], images_per_class: int, device: torch.device,
              generator: torch.Generator, inversion: InversionLoss) -> None:
        self.teachers = list(teachers)
        self.memory = [torch.randn(t.num_classes, images_per_class, 3, t.space.size, t.space.size,
                                   generator=generator).to(device) for t in self.teachers]

    def bank(self, space: InputSpace, *, detach: bool) -> ClassBank:
        images = torch.cat([t.space.convert(m, space) for t, m in zip(self.teachers, self.memory)])
        return ClassBank(images, torch.tensor([c for t in self.teachers for c in t.class_ids],
                                              device=images.device))

    def step(self, extra_loss: torch.Tensor | None, draws: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"total": 0.0}

    def teacher_images(self) -> list[torch.Tensor]:
        return self.memory

