"""The abstract components of purer, in the order Alg. 1 and Alg. 2 use them.

Each component is a class with a nested pydantic ``Options`` model. A plugin
registers the class; the host builds it with validated options
(``cls(options)``) and the engine calls the methods below. Components speak
plain tensors and the small dataclasses of :mod:`purer.types`.

One outer step of ECI (Alg. 1) through these interfaces::

    scale = curriculum.adversarial_scale(step)               # gradient switch
    reversed_loss = None
    if scale:
        hard = episodes(inverter.bank(space, detach=False), 1)
        reversed_loss = -scale * meta.outer_loss(hard, create_graph=True)[0]
    inverter.step(reversed_loss, draws)                       # Eq. 2 (+ Eq. 6)
    batch = episodes(inverter.bank(space, detach=True), 4)
    metrics = meta.meta_step(batch)                           # Eq. 1
    curriculum.observe(step, metrics.accuracy)                # feedback

This module imports no torch at load time (only for type checking), so that
plugin registration modules, which import the ``Options`` base from here, stay
cheap and ``purer --help`` or ``purer plugins`` start at once. Default method
bodies that need torch import it where they run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from purer.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from purer.inversion import InversionLoss
    from purer.types import ClassBank, EpisodeBatch, InputSpace, OuterMetrics, SplitData, Teacher

Params = dict[str, "Tensor"]

# The type of a ``cpu_workers`` option: a count, or "auto" (see purer.parallel).
Workers = Annotated[int, Field(ge=1)] | Literal["auto"]


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
    """Everything one model's pass over pseudo images gives the inversion terms.

    The model is a teacher during meta-training, and the adapted meta-model
    during ICFIL (``teacher`` is then ``None`` and ``bn_stats`` compares with
    the real support batch's statistics instead of running ones).
    """

    teacher: Teacher | None
    images: Tensor  # the pseudo images as stored (normalised, un-jittered)
    inputs: Tensor  # what the model saw (jittered)
    logits: Tensor
    targets: Tensor  # local labels 0..C-1
    bn_stats: list[tuple[Tensor, Tensor, Tensor, Tensor]]  # (mean, var, target mean, target var) per BN layer


class InversionTerm(Component):
    """One weighted piece of the inversion loss (Eq. 2-4). Returns a scalar.

    Terms may be called from several threads at once (one teacher each) and
    under ``torch.func.vmap`` (teachers or tasks batched): keep per-call state
    in locals and use plain tensor ops.
    """

    @abstractmethod
    def __call__(self, ctx: InversionContext) -> Tensor: ...

    def applies_to(self, teacher: Teacher | None) -> bool:
        """Whether this term is part of the loss for ``teacher`` (``None``:
        the adapted meta-model during ICFIL). Where it is not, the loss
        counts it as zero without calling it. Default: every model; a prior
        meant for some teachers only (e.g. those without BN) says so here,
        and the zoo loader's notice lists the terms each teacher gets."""
        return True


class Inverter(Component):
    """Owns the learnable pseudo data ("dynamic dataset") and updates it.

    ``setup`` is called once with the frozen teachers; ``step`` once per outer
    step; ``bank`` whenever episodes are built from the pseudo data.
    """

    @abstractmethod
    def setup(self, teachers: Sequence[Teacher], images_per_class: int, device: torch.device,
              generator: torch.Generator, inversion: InversionLoss) -> None:
        """``inversion`` is the run's weighted sum of registered inversion
        terms; ``generator`` the run's random stream (draw from nothing else)."""

    @abstractmethod
    def bank(self, space: InputSpace, *, detach: bool) -> ClassBank:
        """The pseudo images mapped into ``space``; with ``detach=False`` they
        stay differentiable so a reversed outer loss reaches what made them."""

    @abstractmethod
    def step(self, extra_loss: Tensor | None, draws: dict[str, Tensor]) -> dict[str, Tensor | float]:
        """One optimisation step on the summed inversion loss of all teachers,
        plus ``extra_loss`` when given. ``draws``: this step's randomness from
        :meth:`draw`, on the device. Returns the value of each term (and
        ``total``) for logging, preferably as 0-d tensors: the engine reads
        all of a step's numbers with one device sync."""

    def draw(self) -> dict[str, Tensor]:
        """The random draws of the next :meth:`step` as CPU tensors, taken
        from the run's generator. The engine draws them before the step so
        that a CUDA-graphed step (``train.cuda_graph``) can copy them into
        fixed device buffers. An inverter without randomness keeps this default."""
        return {}

    def prepare_cuda_graph(self) -> None:
        """Called once before training with ``train.cuda_graph``: make
        :meth:`step` capturable (e.g. ``capturable=True`` optimisers), or
        raise ``ConfigError`` if it cannot be."""
        raise ConfigError(f"inverter {self.name or type(self).__name__} does not support train.cuda_graph")

    def shard(self, owned: Sequence[int]) -> None:
        """Called once after :meth:`setup` in a run across processes: keep
        only the teachers at indices ``owned`` (of those given to setup).
        Afterwards :meth:`step` steps, and :meth:`bank`, :meth:`teacher_images`
        and the state dicts cover, these teachers alone (in that order),
        while :meth:`draw` still takes the draws of every teacher, so that
        all ranks consume the run's random stream alike. An inverter that
        cannot keep this default: every rank then steps all teachers."""
        raise ConfigError(f"inverter {self.name or type(self).__name__} cannot be sharded")

    @abstractmethod
    def teacher_images(self) -> list[Tensor]:
        """Pseudo images per teacher, each [C_k, n, 3, H_k, W_k], normalised in
        that teacher's space (pictures, the divergence guard)."""


class Curriculum(Component):
    """Decides when the pseudo data should be pushed towards harder episodes."""

    @abstractmethod
    def adversarial_scale(self, step: int) -> float:
        """lambda for this step's reversed outer loss; 0 means switch off."""

    @abstractmethod
    def observe(self, step: int, accuracy: float) -> None:
        """Feedback after the outer update: the episode batch's mean query accuracy."""


class MetaLearner(Component):
    """Inner adaptation and outer loss over a functional meta-model.

    A task's adapted state is a :data:`Params` dict: the model's parameters
    after the inner loop, plus whatever else the learner needs to predict
    (e.g. class prototypes), under names that are not parameter names.
    """

    model: nn.Module
    device: torch.device

    @abstractmethod
    def setup(self, model: nn.Module, device: torch.device) -> None: ...

    def params(self) -> Params:
        """The meta-parameters the inner loop starts from."""
        return dict(self.model.named_parameters())

    @abstractmethod
    def adapt(self, support: Tensor, labels: Tensor, *, create_graph: bool,
              params: Params | None = None) -> Params:
        """Inner loop on one support set (from ``params``, default the
        meta-parameters); returns the task's adapted state."""

    @abstractmethod
    def predict(self, params: Params, images: Tensor) -> Tensor:
        """Logits of ``images`` under an adapted state."""

    def features(self, params: Params, images: Tensor) -> Tensor:
        """Embeddings of ``images`` under ``params`` (the input of the
        classifier head); calibrators build on these."""
        from purer.models import pre_logits

        return pre_logits(self.model, params, images)

    def head_names(self) -> set[str]:
        """Names of the classifier head's parameters in :meth:`params`; the
        rest is the backbone."""
        from purer.models import head_parameter_names

        return head_parameter_names(self.model)

    @abstractmethod
    def outer_loss(self, episodes: EpisodeBatch, *, create_graph: bool) -> tuple[Tensor, Tensor]:
        """Sum over episodes of the query loss after adaptation, and the mean
        query accuracy (detached). With ``create_graph`` the loss stays
        differentiable with respect to the episodes' images."""

    @abstractmethod
    def meta_step(self, episodes: EpisodeBatch) -> OuterMetrics:
        """One update of the meta-model from a batch of episodes. The metrics
        may be 0-d tensors (no device sync inside the step)."""

    def prepare_cuda_graph(self) -> None:
        """Called once before training with ``train.cuda_graph``: make
        :meth:`meta_step` capturable, or raise ``ConfigError``."""
        raise ConfigError(f"meta-learner {self.name or type(self).__name__} does not support "
                          "train.cuda_graph")

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: the model's weights, learned
        meta-parameters outside the model, optimiser state."""
        return {"model": self.model.state_dict()}

    def test_state_dict(self) -> dict[str, Any]:
        """What meta-testing needs, without optimiser state: the model's
        weights and any learned meta-parameters outside the model (e.g.
        learned inner step sizes). The engine keeps it as the val-selected
        checkpoint; :meth:`load_state_dict` must accept it as well."""
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    # ----------------------------------------------------------------- meta-test
    def test_adapt(self, support: Tensor, labels: Tensor, params: Params | None = None) -> Params:
        """Adaptation at meta-test time: from detached copies of ``params``
        (default the meta-parameters; a calibrator may restart from a
        changed backbone), no second-order graph, with the learner's
        meta-test settings; returns a detached adapted state."""
        import torch

        start = self.params() if params is None else params
        base = {k: v.detach().clone().requires_grad_() for k, v in start.items()}
        with torch.enable_grad():
            adapted = self.adapt(support, labels, create_graph=False, params=base)
        return {k: v.detach() for k, v in adapted.items()}

    def adapt_and_predict(self, support: Tensor, support_labels: Tensor, query: Tensor) -> Tensor:
        """Meta-test over a batch of tasks (``[T, ...]`` tensors): query logits
        ``[T, NQ, way]``, the same as :meth:`test_adapt` then :meth:`predict`
        per task. Learners override it to batch the tasks."""
        import torch

        logits = []
        for t in range(support.shape[0]):
            adapted = self.test_adapt(support[t], support_labels[t])
            with torch.no_grad():
                logits.append(self.predict(adapted, query[t]))
        return torch.stack(logits)


# --------------------------------------------------------------------------
# Meta-testing
# --------------------------------------------------------------------------


class Calibrator(Component):
    """Runs after the inner loop at meta-test time and predicts the queries."""

    passthrough: ClassVar[bool] = False
    """True when the calibrator predicts exactly what the adapted learner
    predicts, so evaluation may use the learner's batched meta-test path."""

    def setup(self, inversion: InversionLoss) -> None:
        """Called once before use with the run's inversion loss (the
        registered terms that synthesis from a model minimises)."""
        self.inversion = inversion

    def threads(self) -> int | None:
        """Intra-op threads of the evaluating thread while a batch of tasks is
        adapted and calibrated (the calibrator may add worker threads of its
        own); ``None`` keeps the process's count."""
        return None

    @abstractmethod
    def predict(self, learner: MetaLearner, params: Params, support: Tensor,
                support_labels: Tensor, query: Tensor) -> Tensor:
        """Query logits for one task, given its adapted state ``params``."""

    def predict_tasks(self, learner: MetaLearner, params: Params, support: Tensor,
                      support_labels: Tensor, query: Tensor) -> Tensor:
        """Query logits ``[T, NQ, way]`` for T tasks whose adapted states are
        stacked on a leading axis. Calibrators override it to batch the tasks."""
        import torch

        return torch.stack([self.predict(learner, {k: v[t] for k, v in params.items()}, support[t],
                                         support_labels[t], query[t])
                            for t in range(support.shape[0])])


class Initializer(Component):
    """Sets the meta-model's weights before training, or as a baseline."""

    needs_teachers: ClassVar[bool] = True
    """False when :meth:`initialize` never looks at the teachers, so no zoo
    has to be loaded for it."""

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
