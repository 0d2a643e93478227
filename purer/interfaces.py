"""The abstract components of purer, in the order Alg. 1 and Alg. 2 use them.

Each component is a class with a nested pydantic ``Options`` model. A plugin
registers the class; the host builds it with validated options
(``cls(options)``) and the engine calls the methods below. Components speak
plain tensors and the small dataclasses of :mod:`purer.types`.

One outer step of ECI (Alg. 1) through these interfaces::

    scale = curriculum.adversarial_scale(step)               # gradient switch
    extra = None
    if scale:
        hard = episodes.sample(inverter.bank(space, detach=False), 1)
        extra = -scale * meta.outer_loss(hard, create_graph=True)[0]
    inverter.step(extra)                                      # Eq. 2 (+ Eq. 6)
    batch = episodes.sample(inverter.bank(space, detach=True), 4)
    metrics = meta.meta_step(batch)                           # Eq. 1
    curriculum.observe(step, metrics.accuracy)                # feedback
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from purer.errors import ConfigError
from purer.types import ClassBank, EpisodeBatch, InputSpace, OuterMetrics, SplitData, Teacher

Params = dict[str, Tensor]


class Options(BaseModel):
    """Base of every plugin's options: unknown keys are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Component(ABC):  # noqa: B024 (stateless components need no abstract method)
    """Common shape of a registered component: a name and typed options."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()

    # Stateful components override these two; stateless ones need not.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


# --------------------------------------------------------------------------
# Meta-training
# --------------------------------------------------------------------------


@dataclass
class InversionContext:
    """Everything one teacher's pass gives the inversion terms."""

    teacher: Teacher
    images: Tensor  # the memory images as stored (normalised, un-jittered)
    inputs: Tensor  # what the teacher saw (jittered)
    logits: Tensor
    targets: Tensor  # local labels 0..C-1 of the teacher
    bn_stats: list[tuple[Tensor, Tensor, Tensor, Tensor]]  # (mean, var, running_mean, running_var)


class InversionTerm(Component):
    """One weighted piece of the inversion loss (Eq. 2-4). Returns a scalar."""

    @abstractmethod
    def __call__(self, ctx: InversionContext) -> Tensor: ...


class Inverter(Component):
    """Owns the learnable memory ("dynamic dataset") and updates it.

    ``setup`` is called once with the frozen teachers; ``step`` once per outer
    step; ``bank`` whenever episodes are built from the memory.
    """

    @abstractmethod
    def setup(self, teachers: Sequence[Teacher], images_per_class: int,
              device: torch.device, generator: torch.Generator) -> None: ...

    @abstractmethod
    def bank(self, space: InputSpace, *, detach: bool) -> ClassBank:
        """The memory mapped into ``space``; with ``detach=False`` it stays
        differentiable so a reversed outer loss can reach the images."""

    @abstractmethod
    def step(self, extra_loss: Tensor | None = None,
             draws: dict[str, Tensor] | None = None) -> dict[str, Tensor | float]:
        """One optimisation step of the memory on the summed inversion loss
        of all teachers, plus ``extra_loss`` when given. ``draws``: this
        step's randomness from :meth:`draw`, already on the device, or
        ``None`` to draw now. Returns the value of each term (and ``total``)
        for logging, preferably as 0-d tensors: the engine reads all of a
        step's numbers with one device sync."""

    def prepare_cuda_graph(self) -> None:
        """Called once before training with ``train.cuda_graph``: make
        :meth:`step` capturable (e.g. ``capturable=True`` optimisers), or
        raise ``ConfigError`` if it cannot be."""
        raise ConfigError(f"inverter {type(self).__name__} does not support train.cuda_graph")

    def draw(self) -> dict[str, Tensor]:
        """The random draws of the next :meth:`step` as CPU tensors, taken
        from the run's generator. The engine draws them before the step so
        that a CUDA-graphed step (``train.cuda_graph``) can copy them into
        fixed device buffers. An inverter without randomness keeps this default."""
        return {}

    @abstractmethod
    def teacher_images(self) -> list[Tensor]:
        """The raw memory per teacher, each [C_k, n, 3, H_k, W_k], normalised
        in that teacher's space (for pictures and checkpoints)."""


class Curriculum(Component):
    """Decides when the memory should be pushed towards harder episodes."""

    @abstractmethod
    def adversarial_scale(self, step: int) -> float:
        """lambda for this step's reversed outer loss; 0 means switch off."""

    @abstractmethod
    def observe(self, step: int, accuracy: float) -> None:
        """Feedback after the outer update: the episode batch's mean query accuracy."""


class MetaLearner(Component):
    """Inner adaptation and outer loss over a functional meta-model."""

    model: nn.Module

    @abstractmethod
    def setup(self, model: nn.Module, device: torch.device) -> None: ...

    @abstractmethod
    def adapt(self, support: Tensor, labels: Tensor, *, create_graph: bool,
              params: Params | None = None) -> Params:
        """Inner loop on one support set; returns the adapted parameters."""

    @abstractmethod
    def predict(self, params: Params, images: Tensor) -> Tensor:
        """Logits of ``images`` under ``params``."""

    @abstractmethod
    def outer_loss(self, episodes: EpisodeBatch, *, create_graph: bool) -> tuple[Tensor, Tensor]:
        """Sum over episodes of the query loss after adaptation, and the mean
        query accuracy (detached)."""

    @abstractmethod
    def meta_step(self, episodes: EpisodeBatch) -> OuterMetrics:
        """One optimiser step of the meta-model on ``outer_loss``. The
        metrics may be 0-d tensors (no device sync inside the step)."""

    def prepare_cuda_graph(self) -> None:
        """Called once before training with ``train.cuda_graph``: make
        :meth:`meta_step` capturable, or raise ``ConfigError``."""
        raise ConfigError(f"meta-learner {type(self).__name__} does not support train.cuda_graph")

    @abstractmethod
    def adapt_and_predict(self, support: Tensor, support_labels: Tensor,
                          query: Tensor) -> Tensor:
        """Test-time shortcut over a batch of tasks ([T, ...] tensors): adapt
        without a second-order graph and return query logits [T, NQ, way]."""


# --------------------------------------------------------------------------
# Meta-testing
# --------------------------------------------------------------------------


class Calibrator(Component):
    """Runs after the inner loop at meta-test time and predicts the queries."""

    @abstractmethod
    def predict(self, learner: MetaLearner, params: Params, support: Tensor,
                support_labels: Tensor, query: Tensor) -> Tensor:
        """Query logits for one task, given the adapted ``params``."""


class Initializer(Component):
    """Sets the meta-model's weights before training, or as a baseline."""

    @abstractmethod
    def initialize(self, model: nn.Module, teachers: Sequence[Teacher]) -> None:
        """Write weights into ``model`` in place; raise ``ValueError`` with a
        one-line reason when the teachers do not allow it."""


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


class DatasetOptions(Options):
    root: str | None = None


class DatasetReader(Component):
    """Reads one dataset from files the user already has."""

    Options: ClassVar[type[Options]] = DatasetOptions
    splits: ClassVar[tuple[str, ...]] = ("meta_train", "meta_val", "meta_test")

    @abstractmethod
    def load(self, split: str) -> SplitData:
        """One split; raise ``purer.errors.DataError`` with path and fault."""
