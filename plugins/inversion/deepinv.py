"""DeepInversion-style episode inversion (paper §4.2, Eq. 2-4).

The memory ("dynamic dataset") holds ``shot + query`` learnable images per
(teacher, class), initialised N(0, 1) in the teacher's normalised input space
and moved by one Adam step per outer step. Keeping the memory per teacher
(not per global class) lets teachers with overlapping classes, other input
sizes or other normalisations each keep their own images; episodes map them
into the meta-model's space when they are built.

The loss is the run's :class:`~purer.api.InversionLoss`, a weighted sum of
registered inversion terms (``[inversion]`` in the configuration), so a
plugin can add a prior or replace one by name.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from purer_plugins.inversion import DeepInvOptions
from torch import Tensor
from torch.func import vmap

from purer.api import (
    ClassBank,
    FoldedTeacher,
    InputSpace,
    InversionContext,
    InversionLoss,
    Inverter,
    Teacher,
    WorkerPool,
    load_optimizer_state,
    make_capturable,
    resolve_workers,
    teacher_view,
    warn_if_slow_bf16,
    worker_views,
)


# ---------------------------------------------------------------- the inverter
@dataclass
class _Group:
    """Teachers whose losses are computed in one call: ``members`` index the
    zoo; ``state`` (stacked tensors of the members' folded views) is set when
    they run together under ``vmap``, ``None`` for a teacher on its own."""

    members: list[int]
    state: dict[str, Tensor] | None = None


def jitter_pixels(sizes: Sequence[int], jitter: int, generator: torch.Generator) -> Tensor:
    """Per image size, the pixel order of a random circular shift of at most
    ``jitter`` pixels, as indices into the flattened ``H * W`` image (one
    gather instead of a row and a column one), all sizes' concatenated."""
    shifts = (torch.randint(-jitter, jitter + 1, (len(sizes), 2), generator=generator)
              if jitter else torch.zeros(len(sizes), 2, dtype=torch.long))
    out = []
    for size, (dy, dx) in zip(sizes, shifts):
        line = torch.arange(size)
        rows, cols = (line - dy) % size, (line - dx) % size
        out.append((rows.view(-1, 1) * size + cols.view(1, -1)).reshape(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


class DeepInversion(Inverter):
    """Learnable memory per teacher, updated with the summed inversion loss."""

    Options = DeepInvOptions

    def setup(self, teachers: Sequence[Teacher], images_per_class: int, device: torch.device,
              generator: torch.Generator, inversion: InversionLoss) -> None:
        self.teachers = list(teachers)
        self.drawn = [t.space.size for t in self.teachers]  # draw() covers all, sharded or not
        self.owned = list(range(len(self.teachers)))
        self.per_class = images_per_class
        self.device = device
        self.generator = generator
        self.inversion = inversion
        self.memory = [torch.nn.Parameter(torch.randn(
            t.num_classes * images_per_class, 3, t.space.size, t.space.size, generator=generator,
        ).to(device)) for t in self.teachers]
        self.targets = [torch.arange(t.num_classes, device=device).repeat_interleave(images_per_class)
                        for t in self.teachers]
        self.class_ids = torch.tensor([c for t in self.teachers for c in t.class_ids], device=device)
        self.optimizer = torch.optim.Adam(self.memory, lr=self.options.lr, betas=self.options.betas)
        if self.options.precision == "bf16":
            warn_if_slow_bf16("inverter.precision", device)
        self._compiled: dict[str, Callable] | None = (
            {"teacher": torch.compile(self._teacher_loss), "group": torch.compile(self._group_loss)}
            if self.options.compile else None)
        self._compiled_ok: set[str] = set()
        for t in self.teachers:
            if self.options.channels_last:
                t.model.to(memory_format=torch.channels_last)
        check = torch.Generator().manual_seed(0)  # not the run's generator: setup draws nothing from it
        shared: dict[str, tuple] = {}
        self.views = [teacher_view(t.model, t.bn_layers, fold=self.options.fold_batch_norm,
                                   example=torch.randn(2, 3, t.space.size, t.space.size, generator=check)
                                   .to(device), shared=shared)
                      for t in self.teachers]
        self._arrange()

    def _arrange(self) -> None:
        """Groups and worker threads of the teachers this inverter steps."""
        batch = self.options.batch_teachers
        self.groups = self._group_teachers(batch == "on" or (batch == "auto" and self.device.type == "cuda"))
        self.pool, self.worker_views = self._workers(self.device)

    def shard(self, owned: Sequence[int]) -> None:
        """Keep the memory, optimiser and views of the teachers ``owned``
        alone (a distributed run's share); :meth:`draw` still draws for all."""
        self.owned = list(owned)
        self.teachers = [self.teachers[k] for k in self.owned]
        self.memory = [self.memory[k] for k in self.owned]
        self.targets = [self.targets[k] for k in self.owned]
        self.views = [self.views[k] for k in self.owned]
        self.class_ids = torch.tensor([c for t in self.teachers for c in t.class_ids], device=self.device)
        self.optimizer = torch.optim.Adam(self.memory, lr=self.options.lr, betas=self.options.betas)
        self._arrange()

    def _workers(self, device: torch.device) -> tuple[WorkerPool, list[list]]:
        """The thread pool of :meth:`step` and each worker's own teacher views
        (see ``purer.parallel``); one worker when the views cannot be copied
        (hooked teachers) or the loss is compiled."""
        workers = 1 if self.options.compile else resolve_workers(self.options.cpu_workers, device)
        copies = [worker_views(self.views) for _ in range(workers - 1)]
        if any(c is None for c in copies):
            copies = []
        return WorkerPool(len(copies) + 1), [self.views, *copies]

    def _group_teachers(self, batch: bool) -> list[_Group]:
        """Folded teachers that share a traced module and a memory shape form
        one batched group (vmap turns their convolutions into grouped ones:
        ~13x fewer kernel launches on a GPU); every other teacher runs alone."""
        if not batch:
            return [_Group([k]) for k in range(len(self.teachers))]
        by_key: dict[tuple, list[int]] = {}
        for k, (view, memory) in enumerate(zip(self.views, self.memory)):
            key = (id(view.graph_module), tuple(memory.shape)) if isinstance(view, FoldedTeacher) else k
            by_key.setdefault(key, []).append(k)
        groups = []
        for members in by_key.values():
            if len(members) == 1:
                groups.append(_Group(members))
                continue
            states = [self.views[k].state for k in members]
            groups.append(_Group(members, {name: torch.stack([state[name] for state in states])
                                           for name in states[0]}))
        return groups

    # ------------------------------------------------------------ one step (Eq. 2 + Eq. 6)
    def inversion_loss(self) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum over teachers (each counted once) of the weighted terms."""
        _, losses, parts = zip(*self._teacher_losses())
        return sum(losses), dict(zip(self.inversion.names, sum(parts).unbind()))

    def _teacher_losses(self, draws: dict[str, Tensor] | None = None
                        ) -> Iterator[tuple[list[int], Tensor, Tensor]]:
        """Per group (a teacher, or teachers batched together): its members,
        their summed weighted loss and detached term values, one group at a time."""
        pixels = self._pixels(draws)
        for group in self.groups:
            yield group.members, *self._group_losses(group, pixels, self.views)

    def _pixels(self, draws: dict[str, Tensor] | None) -> tuple[Tensor, ...]:
        """Each teacher's jitter indices (drawn now when not given)."""
        draws = draws or {k: v.to(self.device) for k, v in self.draw().items()}
        pixels = draws["pixels"].split([size ** 2 for size in self.drawn])
        return tuple(pixels[k] for k in self.owned)

    def _group_losses(self, group: _Group, pixels: Sequence[Tensor], views: Sequence[Callable]
                      ) -> tuple[Tensor, Tensor]:
        """One group's summed loss and term values, run with ``views``."""
        if group.state is None:
            k = group.members[0]
            return self._loss_of("teacher", self.teachers[k], views[k], self.memory[k], pixels[k],
                                 self.targets[k])
        return self._loss_of("group", group, torch.stack([self.memory[k] for k in group.members]),
                             torch.stack([pixels[k] for k in group.members]), views)

    def _loss_of(self, kind: str, *args) -> tuple[Tensor, Tensor]:
        """The compiled loss when ``compile`` is on; eager if compiling is impossible here."""
        if self._compiled is not None:
            try:
                first = kind not in self._compiled_ok
                if first:  # the first call compiles: say so, or the run looks stuck
                    print(f"inverter.compile: compiling the {kind} inversion loss with "
                          "torch.compile (once; about a minute on a CPU)", file=sys.stderr,
                          flush=True)
                    started = time.perf_counter()
                result = self._compiled[kind](*args)
                if first:
                    print(f"inverter.compile: compiled in {time.perf_counter() - started:.0f} s",
                          file=sys.stderr, flush=True)
                self._compiled_ok.add(kind)
                return result
            except Exception as exc:  # e.g. no C++ compiler: keep the run going, eagerly
                if kind in self._compiled_ok:
                    raise
                warnings.warn(f"inverter.compile: torch.compile failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); running eagerly", stacklevel=2)
                self._compiled = None
        return (self._teacher_loss if kind == "teacher" else self._group_loss)(*args)

    def _group_loss(self, group: _Group, images: Tensor, pixels: Tensor, views: Sequence[Callable]
                    ) -> tuple[Tensor, Tensor]:
        """The summed loss of a batched group: :meth:`_teacher_loss` under
        ``vmap`` over the members' stacked tensors, memory and jitter. The
        terms see the group's first teacher as ``ctx.teacher``."""
        first = group.members[0]
        teacher, view, targets = self.teachers[first], views[first], self.targets[first]

        def one(state: dict[str, Tensor], images: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
            return self._teacher_loss(teacher, partial(view.call, state), images, pixels, targets,
                                      channels_last=False)

        losses, values = vmap(one)(group.state, images, pixels)
        return losses.sum(), values.sum(0)

    def _teacher_loss(self, teacher: Teacher, view: Callable, images: Tensor, pixels: Tensor,
                      targets: Tensor, channels_last: bool = True) -> tuple[Tensor, Tensor]:
        """One teacher's weighted loss and its detached per-term values.

        Jitter is a circular shift done by index tensors (the same result as
        ``torch.roll``) so that a compiled version never sees new constants.
        """
        inputs = images.flatten(2).index_select(2, pixels).view(images.shape)
        if self.options.channels_last and channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                    if self.options.precision == "bf16" else nullcontext())
        with autocast:
            logits, stats = view(inputs)
        return self.inversion(InversionContext(teacher, images, inputs, logits, targets, stats))

    def step(self, extra_loss: Tensor | None, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        """One Adam step of the memory on the summed loss (plus ``extra_loss``).

        Each group (one teacher, or a vmapped group of teachers) is
        differentiated right after its forward pass instead of once for the
        sum: the same gradient (teacher k's loss reaches only its own memory),
        but only one group's activations are alive at a time, which halves
        the peak memory of an SH step (docs/results.md).
        On a CPU the groups are spread over ``cpu_workers`` threads, one group
        alive per thread; the sums below keep the teachers' order.
        """
        pixels = self._pixels(draws)

        def differentiate(worker: int, group: _Group) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
            loss, values = self._group_losses(group, pixels, self.worker_views[worker])
            return torch.autograd.grad(loss, [self.memory[k] for k in group.members]), loss.detach(), values

        grads: list[Tensor] = [None] * len(self.memory)  # type: ignore[list-item]
        total = torch.zeros((), device=self.device)
        parts = torch.zeros(len(self.inversion.names), device=self.device)
        for group, (group_grads, loss, values) in zip(self.groups, self.pool.map(differentiate, self.groups)):
            for k, g in zip(group.members, group_grads):
                grads[k] = g
            total, parts = total + loss, parts + values
        if extra_loss is not None:
            for g, extra in zip(grads, torch.autograd.grad(extra_loss, self.memory, allow_unused=True)):
                if extra is not None:
                    g += extra
        for param, g in zip(self.memory, grads):
            param.grad = g
        self.optimizer.step()
        logged = dict(zip(self.inversion.names, parts.unbind()))
        logged["total"] = total
        if extra_loss is not None:
            logged["reversed"] = extra_loss.detach()
        return logged

    def prepare_cuda_graph(self) -> None:
        make_capturable(self.optimizer)

    def draw(self) -> dict[str, Tensor]:
        """The jitter of the next step: per teacher, the pixel order of a
        random circular shift as indices into the flattened ``H * W`` image
        (one gather instead of a row and a column one: half the cost, same
        result), all teachers' concatenated."""
        return {"pixels": jitter_pixels(self.drawn, self.options.jitter, self.generator)}

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

    def state_dict(self) -> dict:
        return {"memory": [m.detach() for m in self.memory], "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for param, saved in zip(self.memory, state["memory"]):
                param.copy_(saved)
        load_optimizer_state(self.optimizer, state["optimizer"])
