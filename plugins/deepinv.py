"""DeepInversion-style episode inversion (paper §4.2, Eq. 2-4).

The memory ("dynamic dataset") holds ``shot + query`` learnable images per
(teacher, class), initialised N(0, 1) in the teacher's normalised input space
and moved by one Adam step per outer step. Keeping the memory per teacher
(not per global class) lets teachers with overlapping classes, other input
sizes or other normalisations each keep their own images; episodes map them
into the meta-model's space when they are built.

The loss is a weighted sum of registered :class:`InversionTerm` s, so a
plugin can add a prior or replace one by name (``terms`` option).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

import purer
from purer.interfaces import InversionContext, InversionTerm, Inverter, Options
from purer.losses import batch_moments, bn_statistics, l2_prior, total_variation
from purer.types import ClassBank, InputSpace, Teacher

DEFAULT_TERMS = {"ce": 1.0, "tv": 1e-4, "l2": 1e-5, "bn": 0.01}


# ---------------------------------------------------------------- the terms (Eq. 2-4)
class CrossEntropyTerm(InversionTerm):
    """Eq. 2's data term: the teacher should assign each image its class."""

    def __call__(self, ctx: InversionContext) -> Tensor:
        return F.cross_entropy(ctx.logits.float(), ctx.targets)


class TotalVariationTerm(InversionTerm):
    """Eq. 3's smoothness prior, on the un-jittered memory."""

    def __call__(self, ctx: InversionContext) -> Tensor:
        return total_variation(ctx.images)


class L2Term(InversionTerm):
    """Eq. 3's magnitude prior."""

    def __call__(self, ctx: InversionContext) -> Tensor:
        return l2_prior(ctx.images)


class BNStatisticsOptions(Options):
    first_multiplier: float = Field(1.0, ge=0, description="extra weight of the first BN layer")


class BNStatisticsTerm(InversionTerm):
    """Eq. 4: feature statistics should match the teacher's BN running stats.

    A teacher without BN layers contributes zero (the zoo loader says so once).
    """

    Options = BNStatisticsOptions

    def __call__(self, ctx: InversionContext) -> Tensor:
        if not ctx.bn_stats:
            return ctx.logits.new_zeros((), dtype=torch.float32)
        return bn_statistics(ctx.bn_stats, self.options.first_multiplier)


# ---------------------------------------------------------------- the inverter
class DeepInvOptions(Options):
    lr: float = Field(0.25, gt=0, description="Adam learning rate of the memory")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas of the memory")
    terms: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TERMS),
                                    description="inversion term name -> weight")
    term_options: dict[str, dict] = Field(default_factory=dict,
                                          description="per-term options, e.g. {bn = {first_multiplier = 1}}")
    jitter: int = Field(2, ge=0, description="max circular shift (px) per axis, inside the loss only")
    precision: str = Field("fp32", pattern="^(fp32|bf16)$",
                           description="teacher passes in fp32 or under bf16 autocast")
    channels_last: bool = Field(True, description="run teacher convolutions in channels-last layout")

    @field_validator("terms")
    @classmethod
    def _weights_finite(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if not weight == weight or weight < 0:
                raise ValueError(f"weight of '{name}' must be a number >= 0")
        return value


class DeepInversion(Inverter):
    """Learnable memory per teacher, updated with the summed inversion loss."""

    Options = DeepInvOptions

    def setup(self, teachers: Sequence[Teacher], images_per_class: int,
              device: torch.device, generator: torch.Generator) -> None:
        from purer.plugins import get_host

        host = get_host()
        self.teachers = list(teachers)
        self.per_class = images_per_class
        self.device = device
        self.generator = generator
        self.terms = {name: (host.create("inversion_term", name, self.options.term_options.get(name),
                                         section=f"inverter.terms.{name}"), weight)
                      for name, weight in self.options.terms.items() if weight > 0}
        self.memory = [torch.nn.Parameter(torch.randn(
            t.num_classes * images_per_class, 3, t.space.size, t.space.size, generator=generator,
        ).to(device)) for t in self.teachers]
        self.targets = [torch.arange(t.num_classes, device=device).repeat_interleave(images_per_class)
                        for t in self.teachers]
        self.class_ids = torch.tensor([c for t in self.teachers for c in t.class_ids], device=device)
        self.optimizer = torch.optim.Adam(self.memory, lr=self.options.lr, betas=self.options.betas)
        self._stats: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for t in self.teachers:
            if self.options.channels_last:
                t.model.to(memory_format=torch.channels_last)
            for layer in t.bn_layers:
                layer.register_forward_pre_hook(self._record_bn)

    def _record_bn(self, module: torch.nn.Module, inputs: tuple[Tensor, ...]) -> None:
        mean, var = batch_moments(inputs[0].float())
        self._stats.append((mean, var, module.running_mean, module.running_var))

    # ------------------------------------------------------------ one step (Eq. 2 + Eq. 6)
    def inversion_loss(self) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum over teachers (each counted once) of the weighted terms."""
        total = torch.zeros((), device=self.device)
        parts = {name: torch.zeros((), device=self.device) for name in self.terms}
        shifts = self._jitter_shifts()
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                    if self.options.precision == "bf16" else nullcontext())
        for k, teacher in enumerate(self.teachers):
            images = self.memory[k]
            inputs = torch.roll(images, shifts=shifts[k], dims=(2, 3)) if self.options.jitter else images
            if self.options.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            self._stats = []
            with autocast:
                logits = teacher.model(inputs)
            ctx = InversionContext(teacher, images, inputs, logits, self.targets[k], self._stats)
            for name, (term, weight) in self.terms.items():
                value = term(ctx)
                parts[name] = parts[name] + value.detach()
                total = total + weight * value
        self._stats = []
        return total, parts

    def step(self, extra_loss: Tensor | None = None) -> dict[str, float]:
        total, parts = self.inversion_loss()
        objective = total if extra_loss is None else total + extra_loss
        grads = torch.autograd.grad(objective, self.memory)
        for param, g in zip(self.memory, grads):
            param.grad = g
        self.optimizer.step()
        logged = {name: float(v) for name, v in parts.items()}
        logged["total"] = float(total.detach())
        if extra_loss is not None:
            logged["reversed"] = float(extra_loss.detach())
        return logged

    def _jitter_shifts(self) -> list[tuple[int, int]]:
        j = self.options.jitter
        if not j:
            return [(0, 0)] * len(self.teachers)
        draws = torch.randint(-j, j + 1, (len(self.teachers), 2), generator=self.generator)
        return [tuple(int(v) for v in row) for row in draws]

    # ------------------------------------------------------------ episodes and pictures
    def bank(self, space: InputSpace, *, detach: bool) -> ClassBank:
        parts = []
        for teacher, images in zip(self.teachers, self.memory):
            x = images.detach() if detach else images
            x = x.view(teacher.num_classes, self.per_class, *x.shape[1:])
            parts.append(teacher.space.convert(x, space))
        return ClassBank(torch.cat(parts) if len(parts) > 1 else parts[0], self.class_ids)

    def teacher_images(self) -> list[Tensor]:
        return [m.detach().view(t.num_classes, self.per_class, *m.shape[1:])
                for t, m in zip(self.teachers, self.memory)]

    def memory_abs_max(self) -> float:
        return max(float(m.detach().abs().max()) for m in self.memory)

    def state_dict(self) -> dict:
        return {"memory": [m.detach() for m in self.memory], "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for param, saved in zip(self.memory, state["memory"]):
                param.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])


@purer.hookimpl
def register_inverters(register) -> None:
    register("deepinv", DeepInversion)


@purer.hookimpl
def register_inversion_terms(register) -> None:
    register("ce", CrossEntropyTerm)
    register("tv", TotalVariationTerm)
    register("l2", L2Term)
    register("bn", BNStatisticsTerm)
